"""The real DAG through Airflow's task runner (`dag.test()`), local runtime, bundled digits.

Four nights in a row: nothing has landed, so the night is skipped; the first batch makes a
champion; a second batch grows the data and the gate decides; a corrupt batch stops the run at
validate and leaves the champion alone.
"""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from urllib.parse import quote

import mlflow
import pytest
from mlflow import MlflowClient

from lepton_tasks.landing_simulator import simulate_landing
from lepton_tasks.pipeline_run import run_dir_for
from tests.airflow_env import load_dag
from tests.dags.helpers import AlertSink, night, run_note, task_states, xcom

pytestmark = pytest.mark.slow
STEPS = ["pipeline_start", "ingest", "validate", "train", "evaluate", "register", "pipeline_end"]
SKIPPED_WHEN_UNCHANGED = ("validate", "train", "evaluate", "register")


def step_result(dag_run, step: str) -> dict:
    run_dir = Path(run_dir_for(dag_run.dag_id, dag_run.run_id))
    return json.loads((run_dir / step / "result.json").read_text())


def test_three_nights_champion_growth_gate_and_corrupt_batch(
    tmp_path: Path,
    lepton_env: Path,
    airflow_db: Path,
    fresh_runtime_settings,
    capfd,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    alerts = AlertSink()
    monkeypatch.setenv("AIRFLOW_CONN_LEPTON_ALERT_WEBHOOK", alerts.connection)
    monkeypatch.setenv("LEPTON_MLFLOW_UI_URL", "http://mlflow.example:5000")
    landing = lepton_env / "landing"
    dag = load_dag()
    conf = {"source": str(landing), "epochs": 8}
    client = MlflowClient()

    # Night 0: nothing has landed yet. The night is skipped, not failed: no alert, no model.
    empty = dag.test(logical_date=night(1), run_conf=conf)
    states = task_states(empty)
    assert empty.state == "success", states
    assert states["ingest"] == "skipped"
    assert {states[s] for s in ("validate", "train", "evaluate", "register")} == {"skipped"}
    assert states["pipeline_end"] == "success"
    ended = step_result(empty, "pipeline-end")
    assert (
        ended["status"] == "SKIPPED" and "no batch had landed by 2026-01-01T02:00" in ended["error"]
    )
    skipped_run = mlflow.get_run(ended["mlflow_run_id"])
    assert skipped_run.info.status == "FINISHED"
    assert skipped_run.data.tags["lepton.outcome"] == "SKIPPED"
    assert client.search_registered_models() == [] and alerts.received == []

    # Night 1: first batch, first champion, lineage back to this DAG run.
    simulate_landing("sklearn:digits", str(landing), str(tmp_path / "sim"), batches=3, take=1)
    first = dag.test(logical_date=night(2), run_conf=conf)
    assert first.state == "success", task_states(first)
    assert set(task_states(first).values()) == {"success"}
    ingested = step_result(first, "ingest")
    champion = client.get_model_version_by_alias("lepton-digits", "champion")
    assert champion.tags["lepton.snapshot_id"] == ingested["snapshot_id"]
    pipeline = mlflow.get_run(champion.tags["lepton.pipeline_run_id"])
    assert pipeline.data.tags["lepton.dag_id"] == "lepton_training"
    assert pipeline.data.tags["lepton.dag_run_id"] == first.run_id
    assert pipeline.data.tags["lepton.logical_date"].startswith("2026-01-02")
    assert pipeline.data.tags["lepton.dag_version"]
    assert pipeline.info.status == "FINISHED" and pipeline.data.params["epochs"] == "8"
    train_run = mlflow.get_run(champion.tags["lepton.train_run_id"])
    assert train_run.data.tags["mlflow.parentRunId"] == pipeline.info.run_id
    assert "pipeline/manifest.json" in {
        a.path for a in client.list_artifacts(pipeline.info.run_id, "pipeline")
    }
    # extra links: each step to its MLflow run, register to the model version
    train_link = xcom(first, "train", "_link_MlflowRunLink")
    assert train_link == (
        f"http://mlflow.example:5000/#/experiments/{train_run.info.experiment_id}/runs/"
        f"{train_run.info.run_id}"
    )
    assert xcom(first, "ingest", "_link_MlflowRunLink").endswith(f"/runs/{pipeline.info.run_id}")
    assert xcom(first, "register", "_link_MlflowModelVersionLink") == (
        f"http://mlflow.example:5000/#/models/lepton-digits/versions/{champion.version}"
    )
    assert alerts.received == []

    # Night 2: a second batch lands; more data, and champion moves only if the gate says so.
    simulate_landing("sklearn:digits", str(landing), str(tmp_path / "sim"), batches=3, take=2)
    second = dag.test(logical_date=night(3), run_conf=conf)
    assert second.state == "success", task_states(second)
    assert step_result(second, "ingest")["count"] > ingested["count"]
    decision = step_result(second, "evaluate")["decision"]
    registered = step_result(second, "register")
    expected = registered["version"] if decision["promote"] else champion.version
    now = client.get_model_version_by_alias("lepton-digits", "champion")
    assert str(now.version) == str(expected)
    assert registered["promoted"] == decision["promote"]

    # The same data again (nothing new landed): the same inputs as the second night, so the
    # steps after check-inputs are skipped and nothing is registered; the run's note says so.
    same = dag.test(logical_date=night(3) + timedelta(hours=6), run_conf=conf)
    states = task_states(same)
    assert same.state == "success", states
    assert {states[s] for s in SKIPPED_WHEN_UNCHANGED} == {"skipped"}, states
    assert states["check_inputs"] == states["anything_new"] == states["pipeline_end"] == "success"
    checked = step_result(same, "check-inputs")
    assert checked["unchanged_since"] == registered["version"]
    assert checked["unchanged_since_run"] == second.run_id
    ended = step_result(same, "pipeline-end")
    assert ended["status"] == "UNCHANGED"
    assert ended["summary"].startswith(f"Unchanged since v{registered['version']}: ")
    assert run_note(same) == ended["summary"]
    same_pipeline = mlflow.get_run(ended["mlflow_run_id"])
    assert same_pipeline.data.tags["lepton.unchanged_since"] == f"v{registered['version']}"
    assert same_pipeline.info.status == "FINISHED"
    assert str(client.get_model_version_by_alias("lepton-digits", "champion").version) == str(
        expected
    )
    assert len(client.search_model_versions("name='lepton-digits'")) == int(registered["version"])
    # The second night's note: what it registered and the gate's interval.
    assert run_note(second).startswith(f"Registered lepton-digits v{registered['version']}; ")
    assert "interval [" in run_note(second)

    # Only the gate's margin changes: the steps run, but training is the same content, so it
    # is reused (the step's own cache) and register finds the version it made already.
    stricter = dag.test(
        logical_date=night(3) + timedelta(hours=7), run_conf={**conf, "min_improvement": 0.5}
    )
    assert stricter.state == "success", task_states(stricter)
    reused = step_result(stricter, "train")
    assert reused["reused_from_run"] == step_result(second, "train")["run_dir"]
    again = step_result(stricter, "register")
    assert again["already_registered"] and again["version"] == registered["version"]
    assert not again["promoted"]
    assert run_note(stricter).startswith(f"Unchanged since v{registered['version']}: ")

    # Night 3: a corrupt (one-class) batch: validate fails, nothing after it runs.
    simulate_landing(
        "sklearn:digits", str(landing), str(tmp_path / "sim"), batches=3, take=2, corrupt="skewed"
    )
    capfd.readouterr()
    third = dag.test(logical_date=night(4), run_conf=conf)
    states = task_states(third)
    assert third.state == "failed"
    assert states["validate"] == "failed"
    assert {states[s] for s in ("train", "evaluate", "register")} == {"upstream_failed"}
    assert states["pipeline_end"] == "success"  # the teardown closes the MLflow run
    log = capfd.readouterr().out
    assert "DataValidationError" in log and "class '" in log
    assert str(client.get_model_version_by_alias("lepton-digits", "champion").version) == str(
        now.version
    )
    assert [p.name for p in landing.iterdir() if "skewed" in p.name] == []
    assert any("skewed" in p.name for p in (landing / "_quarantine").iterdir())
    ended = step_result(third, "pipeline-end")
    assert ended["status"] == "FAILED" and ended["failed_step"] == "validate"
    (alert,) = alerts.received  # no retries for bad data, so exactly one alert
    text = alert["text"]  # the Slack provider's notifier: one message
    assert f"lepton_training step validate failed (run {third.run_id}, try 1): " in text
    assert "lepton-tasks validate: DataValidationError" in text
    # Where to look: the task's log in Airflow and this run's pipeline run in MLflow.
    assert f"/dags/lepton_training/runs/{quote(third.run_id)}/tasks/validate?try_number=1" in text
    assert (
        f"MLflow: http://mlflow.example:5000/#/experiments/{pipeline.info.experiment_id}/runs/"
        f"{ended['mlflow_run_id']}"
    ) in text
