"""The DAG run's note says what the run did ("Registered v4; promoted ...", "Unchanged since
v3 ..."), from pipeline-end's `summary`.

A task cannot write its run's note (the task SDK has no call for it), so this listener does,
in the scheduler, when the run finishes. A note someone already wrote is left alone.
"""

from __future__ import annotations

import logging
from typing import Any

from airflow.listeners import hookimpl

log = logging.getLogger(__name__)

SUMMARY_TASK = "pipeline_end"
NOTE_LIMIT = 1000  # the note column's size


def run_summary(dag_run: Any, session: Any) -> str | None:
    """pipeline-end's one-line summary for this run, if the DAG has one."""
    from airflow.models.xcom import XComModel

    query = XComModel.get_many(
        run_id=dag_run.run_id, dag_ids=dag_run.dag_id, task_ids=SUMMARY_TASK, key="summary"
    ).limit(1)
    row = session.scalars(query).first()
    value = XComModel.deserialize_value(row) if row is not None else None
    return str(value) if value else None


def write_note(dag_run: Any) -> None:
    """In the scheduler the run is bound to its session (whose commit writes the note);
    `dag.test()` hands a detached one, so the note is written through a session of its own."""
    from sqlalchemy.orm import object_session

    session = object_session(dag_run)
    if session is not None:
        _note_once(dag_run, session)
        return
    from airflow.models import DagRun
    from airflow.utils.session import create_session

    with create_session() as own:
        row = own.get(DagRun, dag_run.id)
        if row is not None:
            _note_once(row, own)


def _note_once(dag_run: Any, session: Any) -> None:
    if dag_run.note:
        return
    summary = run_summary(dag_run, session)
    if summary:
        dag_run.note = summary[:NOTE_LIMIT]


@hookimpl
def on_dag_run_success(dag_run: Any, msg: str) -> None:
    try:
        write_note(dag_run)
    except Exception:  # a note is never worth failing the scheduler's loop for
        log.exception("could not write the note of %s", dag_run.run_id)


@hookimpl
def on_dag_run_failed(dag_run: Any, msg: str) -> None:
    on_dag_run_success(dag_run, msg)
