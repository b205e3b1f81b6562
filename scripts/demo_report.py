"""Print the latest lepton_training run's tasks with their durations and share of the wall time."""

from __future__ import annotations

import sys
import time

from airflow.models import DagRun, TaskInstance
from airflow.utils.session import create_session


def main(started: float) -> None:
    wall = time.time() - started
    with create_session() as session:
        run = (
            session.query(DagRun)
            .filter(DagRun.dag_id == "lepton_training")
            .order_by(DagRun.id.desc())
            .first()
        )
        if run is None:
            print("no lepton_training run found")
            return
        tasks = (
            session.query(TaskInstance)
            .filter(TaskInstance.dag_id == run.dag_id, TaskInstance.run_id == run.run_id)
            .order_by(TaskInstance.start_date)
            .all()
        )
        print(f"\nDAG run {run.run_id}: {run.state}; demo wall time {wall:.0f} s")
        for ti in tasks:
            duration = ti.duration or 0.0
            print(f"  {ti.task_id:<15} {ti.state!s:<16} {duration:6.1f} s  {duration / wall:5.1%}")


if __name__ == "__main__":
    main(float(sys.argv[1]))
