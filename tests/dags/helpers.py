"""What the DAG tests read back from Airflow, and a webhook receiver for alerts."""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, HTTPServer

from airflow.models import TaskInstance
from airflow.utils.session import create_session


def task_states(dag_run) -> dict[str, str]:
    with create_session() as session:
        rows = session.query(TaskInstance).filter(
            TaskInstance.dag_id == dag_run.dag_id, TaskInstance.run_id == dag_run.run_id
        )
        return {ti.task_id: str(ti.state) for ti in rows}


def run_note(dag_run) -> str | None:
    """The DAG run's note, as the UI shows it."""
    from airflow.models import DagRun

    with create_session() as session:
        row = (
            session.query(DagRun)
            .filter(DagRun.dag_id == dag_run.dag_id, DagRun.run_id == dag_run.run_id)
            .one()
        )
        return row.note


def xcom(dag_run, task_id: str, key: str):
    from airflow.models.xcom import XComModel

    with create_session() as session:
        row = (
            session.query(XComModel)
            .filter(
                XComModel.dag_id == dag_run.dag_id,
                XComModel.run_id == dag_run.run_id,
                XComModel.task_id == task_id,
                XComModel.key == key,
            )
            .one_or_none()
        )
        return None if row is None else XComModel.deserialize_value(row)


class AlertSink:
    """A Slack-style incoming webhook on loopback that keeps what it is sent."""

    def __init__(self) -> None:
        received = self.received = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                self.send_response(200)  # what Slack answers
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args) -> None:
                pass

        self.server = HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/alerts"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def connection(self) -> str:
        """The `lepton_alert_webhook` Connection (AIRFLOW_CONN_...) that posts here."""
        return json.dumps({"conn_type": "slackwebhook", "password": self.url})


def night(day: int) -> datetime:
    return datetime(2026, 1, day, 2, 0, tzinfo=UTC)


def task_tries(dag_run) -> dict[str, int]:
    """How many times each task ran: bad data must fail on the first try, never be retried."""
    with create_session() as session:
        rows = session.query(TaskInstance).filter(
            TaskInstance.dag_id == dag_run.dag_id, TaskInstance.run_id == dag_run.run_id
        )
        return {ti.task_id: ti.try_number for ti in rows}
