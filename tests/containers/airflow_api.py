"""Airflow's REST API (v2) through its official client, `apache-airflow-client`, as a user of the
stack drives it: a token from `POST /auth/token`, then DAGs, runs, task instances and logs."""

from __future__ import annotations

import json
import time
import urllib.request
from dataclasses import dataclass
from typing import Any

import airflow_client.client as airflow
from airflow_client.client.api.asset_api import AssetApi
from airflow_client.client.api.dag_api import DAGApi
from airflow_client.client.api.dag_run_api import DagRunApi
from airflow_client.client.api.task_instance_api import TaskInstanceApi

FINISHED = {"success", "failed"}


def access_token(base_url: str, username: str, password: str) -> str:
    """The API's bearer token for a user of the auth manager (FAB's, in the stack)."""
    request = urllib.request.Request(
        f"{base_url}/auth/token",
        json.dumps({"username": username, "password": password}).encode(),
        {"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.load(response)["access_token"]


@dataclass
class AirflowApi:
    base_url: str
    username: str
    password: str

    def __post_init__(self) -> None:
        self.connect()

    def connect(self) -> None:
        """A fresh token (after a restart of the stack, too)."""
        token = access_token(self.base_url, self.username, self.password)
        self.token = token
        client = airflow.ApiClient(airflow.Configuration(host=self.base_url, access_token=token))
        self.assets = AssetApi(client)
        self.dags = DAGApi(client)
        self.runs = DagRunApi(client)
        self.task_instances = TaskInstanceApi(client)

    def unpause(self, dag_id: str) -> None:
        self.dags.patch_dag(dag_id, airflow.DAGPatchBody(is_paused=False))

    def trigger(self, dag_id: str, conf: dict[str, Any], note: str | None = None) -> str:
        body = airflow.TriggerDAGRunPostBody(conf=conf, logical_date=None, note=note)
        return self.runs.trigger_dag_run(dag_id, body).dag_run_id

    def run(self, dag_id: str, run_id: str) -> Any:
        return self.runs.get_dag_run(dag_id, run_id)

    def run_ids(self, dag_id: str) -> list[str]:
        return [run.dag_run_id for run in self.runs.get_dag_runs(dag_id, limit=100).dag_runs]

    def wait(self, dag_id: str, run_id: str, timeout: float = 900) -> Any:
        """The run once it has finished, successful or not; a timeout names the tasks' states."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            run = self.run(dag_id, run_id)
            if run.state.value in FINISHED:
                return run
            time.sleep(3)
        raise TimeoutError(f"{dag_id} {run_id} still running: {self.states(dag_id, run_id)}")

    def busy(self, dag_id: str) -> bool:
        """A run queued or running, or an asset event waiting to become one (the scheduler
        holds those back while the DAG is at max_active_runs)."""
        if self.runs.get_dag_runs(dag_id, state=["queued", "running"]).dag_runs:
            return True
        return bool(self.assets.get_dag_asset_queued_events(dag_id).queued_events)

    def wait_for_idle(self, dag_id: str, timeout: float = 900) -> None:
        """Until the DAG has nothing in progress or pending (runs the stack started too)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.busy(dag_id):
                time.sleep(5)  # an event the triggerer is just handing over
                if not self.busy(dag_id):
                    return
            time.sleep(3)
        raise TimeoutError(f"{dag_id} still has runs in progress")

    def tasks(self, dag_id: str, run_id: str) -> dict[str, Any]:
        found = self.task_instances.get_task_instances(dag_id, run_id, limit=100)
        return {ti.task_id: ti for ti in found.task_instances}

    def states(self, dag_id: str, run_id: str) -> dict[str, str | None]:
        return {
            task: ti.state.value if ti.state else None
            for task, ti in self.tasks(dag_id, run_id).items()
        }

    def run_with_task_in(self, dag_id: str, task_id: str, state: str) -> str | None:
        """The run in progress whose task is in that state, if any."""
        for run in self.runs.get_dag_runs(dag_id, state=["running"]).dag_runs:
            if self.states(dag_id, run.dag_run_id).get(task_id) == state:
                return run.dag_run_id
        return None

    def log(self, dag_id: str, run_id: str, task_id: str, try_number: int = 1) -> str:
        """The task's log as the UI shows it: its events' text, one a line."""
        response = self.task_instances.get_log(
            dag_id, run_id, task_id, try_number, full_content=True
        )
        content = getattr(response.content, "actual_instance", response.content)
        return "\n".join(getattr(item, "event", None) or str(item) for item in content)

    def page(self, path: str) -> str:
        """A page of a plugin (the Lepton page), with the same token."""
        request = urllib.request.Request(
            self.base_url + path, headers={"Authorization": f"Bearer {self.token}"}
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.read().decode()
