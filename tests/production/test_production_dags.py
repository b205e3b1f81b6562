"""The scoring and monitoring DAGs: wired as promised, and run for real with `dag.test()`: drift
injected into a scored batch raises the alert and triggers a training run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from airflow.sdk import Asset

from tests.airflow_env import load_dag
from tests.dags.helpers import AlertSink, task_states
from tests.production.conftest import MODEL, Registry


def test_scoring_is_started_by_the_inbox_and_publishes_predictions(fresh_runtime_settings) -> None:
    from lepton_airflow.landing_watch import LandingZoneTrigger

    dag = load_dag("lepton_scoring")
    assert dag.task_ids == ["score"]
    (inbox,) = dag.timetable.asset_condition.objects
    (watcher,) = inbox.watchers
    assert isinstance(watcher.trigger, LandingZoneTrigger) and watcher.trigger.unlabelled
    (published,) = dag.get_task("score").outlets
    assert isinstance(published, Asset) and published.name == "lepton_predictions"
    assert dag.default_args["retries"] >= 1 and dag.params["model_name"] == MODEL


def test_monitoring_alerts_then_retrains_only_when_asked(fresh_runtime_settings) -> None:
    dag = load_dag("lepton_monitoring")
    assert dag.get_task("drifted").upstream_task_ids == {"monitor"}
    assert dag.get_task("alert").upstream_task_ids == {"drifted"}
    assert dag.get_task("retrain_wanted").upstream_task_ids == {"drifted"}
    assert dag.get_task("retrain").trigger_dag_id == "lepton_training"
    assert dag.params["retrain_on_alert"] is False and dag.params["metrics_urls"] == []


@pytest.mark.slow
def test_drift_in_a_scored_batch_alerts_and_triggers_training(
    production_home: Registry,
    airflow_db: Path,
    fresh_runtime_settings,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from airflow.models import DagRun
    from airflow.models.asset import AssetEvent
    from airflow.utils.session import create_session

    alerts = AlertSink()
    monkeypatch.setenv("AIRFLOW_CONN_LEPTON_ALERT_WEBHOOK", alerts.connection)
    inbox = production_home.home / "inbox"
    inbox.mkdir()
    np.savez(inbox / "night-camera.npz", x=255 - production_home.images[:600])  # inverted

    scoring = load_dag("lepton_scoring").test()
    assert scoring.state == "success", task_states(scoring)
    predictions = list((production_home.home / "runs" / "_predictions" / MODEL).glob("*/*.parquet"))
    assert [p.name for p in predictions] == ["night-camera.parquet"]
    with create_session() as session:
        events = session.query(AssetEvent).filter(AssetEvent.source_run_id == scoring.run_id)
        assert [e.asset.name for e in events] == ["lepton_predictions"]

    def training_runs() -> dict[str, dict]:
        """lepton_training's runs by id (the Airflow database is the session's: other tests
        leave runs of their own)."""
        with create_session() as session:
            query = session.query(DagRun).filter(DagRun.dag_id == "lepton_training")
            return {run.run_id: run.conf for run in query}

    before = training_runs()
    monitoring = load_dag("lepton_monitoring").test(run_conf={"retrain_on_alert": True})
    states = task_states(monitoring)
    assert monitoring.state == "success", states
    assert {states[t] for t in ("drifted", "alert", "retrain_wanted", "retrain")} == {"success"}
    assert any("drift alert for lepton-digits v1" in a["text"] for a in alerts.received)
    triggered = {k: conf for k, conf in training_runs().items() if k not in before}
    assert list(triggered.values()) == [{"model_name": MODEL}]

    # An hour later the drift is still there: no second alert, no second retrain.
    again = load_dag("lepton_monitoring").test(run_conf={"retrain_on_alert": True})
    states = task_states(again)
    assert again.state == "success" and states["monitor"] == "success", states
    assert {states[t] for t in ("alert", "retrain_wanted", "retrain")} == {"skipped"}
    assert training_runs().keys() - before.keys() == triggered.keys()
    assert len([a for a in alerts.received if "drift alert" in a["text"]]) == 1
