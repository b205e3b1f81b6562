"""DAG integrity: imports, structure, params, retries, schedule, and nothing touched at parse time."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
from pathlib import Path

import pytest
from airflow.dag_processing.dagbag import DagBag
from airflow.sdk import AssetOrTimeSchedule, CronTriggerTimetable
from airflow.sdk.definitions.param import ParamsDict

from tests.airflow_env import REPO, load_dag

CHAIN = [
    "pipeline_start",
    "ingest",
    "check_inputs",
    "anything_new",
    "validate",
    "train",
    "evaluate",
    "register",
    "pipeline_end",
]


def test_every_dag_imports_and_is_named_after_its_file() -> None:
    bag = DagBag(dag_folder=str(REPO / "dags"))
    assert bag.import_errors == {}
    assert bag.dags, "no DAG found"
    for dag_id, dag in bag.dags.items():
        assert Path(dag.fileloc).stem == dag_id
        assert dag.doc_md and dag.tags


def test_steps_are_chained_in_order(fresh_runtime_settings) -> None:
    dag = load_dag()
    assert sorted(dag.task_ids) == sorted(CHAIN)
    for upstream, downstream in itertools.pairwise(CHAIN):
        assert upstream in dag.get_task(downstream).upstream_task_ids, (upstream, downstream)
    end = dag.get_task("pipeline_end")
    assert end.is_teardown and dag.get_task("pipeline_start").is_setup
    leaves = {t.task_id for t in dag.tasks if not t.downstream_task_ids}
    assert leaves == {"pipeline_end"}


def test_every_step_input_is_an_argument_an_upstream_result_or_a_param(
    fresh_runtime_settings,
) -> None:
    """One contract: a step gets its inputs as options (XComs of upstream results, params);
    the run folder is only where it writes."""
    dag = load_dag()
    tasks = {t.task_id: t for t in dag.tasks}

    def source(task_id: str, option: str) -> tuple[str, str]:
        value = tasks[task_id].options[option]
        return value.operator.task_id, value.key

    assert source("check_inputs", "snapshot_id") == ("ingest", "snapshot_id")
    assert tasks["anything_new"].op_args[0].operator.task_id == "check_inputs"
    assert source("validate", "snapshot") == ("ingest", "snapshot_uri")
    assert source("train", "snapshot") == ("validate", "snapshot_uri")
    assert source("evaluate", "training") == ("train", "result_uri")
    assert source("register", "evaluation") == ("evaluate", "result_uri")
    assert source("register", "validation") == ("validate", "result_uri")
    steps = ("ingest", "check_inputs", "validate", "train", "evaluate", "register")
    for task_id in (*steps, "pipeline_end"):
        assert source(task_id, "run_dir") == ("pipeline_start", "run_dir")
    assert tasks["train"].options["epochs"].name == "epochs"  # the param's value, None kept
    assert (
        tasks["pipeline_end"].options["steps"]
        == "ingest,check-inputs,validate,train,evaluate,register"
    )
    # A run reads the batches landed by its logical date: a backfill sees each night's data.
    assert "dag_run.logical_date" in tasks["ingest"].options["as_of"]
    assert all(tasks[t].multiple_outputs for t in (*steps, "pipeline_start", "pipeline_end"))


def test_retries_backoff_and_timeouts(fresh_runtime_settings) -> None:
    dag = load_dag()
    assert dag.max_active_runs == 1 and dag.catchup is False
    assert dag.dagrun_timeout is not None
    for task in dag.tasks:
        assert task.retries >= 2, task.task_id
        assert task.retry_exponential_backoff
        assert task.execution_timeout is not None


def test_schedule_is_nightly_cron_or_landing_zone_asset(fresh_runtime_settings) -> None:
    dag = load_dag()
    assert isinstance(dag.timetable, AssetOrTimeSchedule)
    assert isinstance(dag.timetable.timetable, CronTriggerTimetable)
    assert dag.timetable.timetable.expression == "0 2 * * *"
    assert "lepton_landing_zone" in repr(dag.timetable.asset_condition)


def test_the_landing_zone_is_watched_by_the_triggerer(
    fresh_runtime_settings, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Before (issue 13): nothing ever updated the asset, so a landed batch waited for 02:00."""
    from lepton_airflow.landing_watch import LandingZoneTrigger

    monkeypatch.setenv("LEPTON_LANDING_URI", str(tmp_path / "zone"))
    monkeypatch.setenv("LEPTON_LANDING_POLL_S", "5")
    (asset,) = load_dag().timetable.asset_condition.objects
    (watcher,) = asset.watchers
    assert isinstance(watcher.trigger, LandingZoneTrigger)
    classpath, kwargs = watcher.trigger.serialize()
    assert classpath == "lepton_airflow.landing_watch.LandingZoneTrigger"
    assert kwargs == {"zone": str(tmp_path / "zone"), "poll_s": 5.0}


def test_schedule_comes_from_configuration(
    fresh_runtime_settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LEPTON_SCHEDULE", "30 4 * * 1")
    assert load_dag().timetable.timetable.expression == "30 4 * * 1"


def test_params_default_to_the_configuration(
    fresh_runtime_settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before (issue 13): the Params hard-coded their defaults, so LEPTON_MODEL_NAME and
    LEPTON_MIN_IMPROVEMENT were ignored by DAG runs."""
    monkeypatch.setenv("LEPTON_MODEL_NAME", "fashion")
    monkeypatch.setenv("LEPTON_MIN_IMPROVEMENT", "0.01")
    params = load_dag().params
    assert params["model_name"] == "fashion" and params["min_improvement"] == 0.01


def test_params_form_schema(fresh_runtime_settings) -> None:
    params = load_dag().params
    expected = {
        "source",
        "format",
        "architecture",
        "model_name",
        "epochs",
        "batch_size",
        "augment",
        "learning_rate",
        "min_improvement",
        "force_retrain",
        "force_promotion",
        "force_reason",
    }
    assert set(params.keys()) == expected
    schema = {key: params.get_param(key).schema for key in expected}
    assert schema["epochs"]["type"] == ["null", "integer"] and schema["epochs"]["minimum"] == 1
    assert schema["format"]["enum"][0] == "auto"
    assert schema["learning_rate"]["type"] == ["null", "number"]
    assert schema["force_promotion"]["type"] == "boolean"
    params.validate()  # the defaults are valid
    # The trigger form marks every param whose type excludes null as required and counts an empty
    # string as missing: such a default would keep the Trigger button disabled.
    for key in expected:
        types = schema[key].get("type", [])
        if "null" not in (types if isinstance(types, list) else [types]):
            assert params[key] not in ("", None), f"{key}: empty default blocks the trigger form"
    bad = ParamsDict({**{k: params.get_param(k) for k in expected}})
    bad["epochs"] = 1
    with pytest.raises(Exception, match="epochs|minimum|0"):
        bad["epochs"] = 0


def test_parsing_touches_no_database_or_network(tmp_path: Path) -> None:
    """Parse the DAG folder with a metadata DB that cannot exist and sockets that fail."""
    code = (
        "import socket\n"
        "def refuse(*a, **k): raise RuntimeError('network access at parse time')\n"
        "socket.socket.connect = refuse\n"
        "from airflow.dag_processing.dagbag import DagBag\n"
        f"bag = DagBag(dag_folder={str(REPO / 'dags')!r})\n"
        "assert not bag.import_errors, bag.import_errors\n"
        "print(sorted(bag.dag_ids))\n"
    )
    env = {
        **os.environ,
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{tmp_path}/missing/dir/airflow.db",
        "MLFLOW_TRACKING_URI": "http://127.0.0.1:9",
    }
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "lepton_training" in done.stdout
    assert not (tmp_path / "missing").exists()


def test_backfill_plans_one_run_per_night(airflow_db: Path) -> None:
    airflow = str(Path(sys.executable).with_name("airflow"))
    subprocess.run([airflow, "dags", "reserialize"], check=True, capture_output=True)
    done = subprocess.run(
        [
            airflow,
            "backfill",
            "create",
            "--dag-id",
            "lepton_training",
            "--from-date",
            "2026-01-01",
            "--to-date",
            "2026-01-04",
            "--dry-run",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    planned = [line for line in done.stdout.splitlines() if "02:00:00+00:00" in line]
    assert len(planned) == 3  # Jan 1, 2 and 3 at 02:00 UTC, the cron's nights in the range
