"""The nightly loop through the real scheduler and triggerer (`airflow standalone`), not
`dag.test()`: a landed batch starts a run, an unchanged night skips its steps, the gate promotes
only a candidate better beyond noise, and a backfill rebuilds past nights from their own data.

Before (issue 13): nothing emitted the landing-zone asset, a run without a logical date (which
is what a landing starts) failed rendering its first task, every night retrained on the same
data, and a backfill retrained every night on today's data.
"""

from __future__ import annotations

import json
import time
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.error import HTTPError
from urllib.parse import quote

import pytest
from mlflow import MlflowClient

from tests.stack import BIN, Stack

DAG = "lepton_training"
MODEL = "lepton-digits"
RUN_TIMEOUT_S = 900
UNCHANGED_SKIPS = {"validate", "train", "evaluate", "register"}


def parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def runs(stack: Stack, **query: str) -> list[dict[str, Any]]:
    arguments = "&".join(f"{key}={quote(value)}" for key, value in query.items())
    return stack.api("GET", f"/api/v2/dags/{DAG}/dagRuns?{arguments}")["dag_runs"]


def wait_for(condition, timeout: float, what: str, stack: Stack) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(1)
    raise AssertionError(f"{what}: not after {timeout:.0f} s\n{stack.log_tail('airflow')}")


def finished(stack: Stack, run_id: str) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        run = stack.api("GET", f"/api/v2/dags/{DAG}/dagRuns/{quote(run_id)}")
        return run if run["state"] in ("success", "failed") else None

    return wait_for(done, RUN_TIMEOUT_S, f"run {run_id} finished", stack)


def states(stack: Stack, run_id: str) -> dict[str, str]:
    found = stack.api("GET", f"/api/v2/dags/{DAG}/dagRuns/{quote(run_id)}/taskInstances")
    return {ti["task_id"]: ti["state"] for ti in found["task_instances"]}


def result(stack: Stack, run_id: str, step: str) -> dict[str, Any]:
    entry = stack.api(
        "GET",
        f"/api/v2/dags/{DAG}/dagRuns/{quote(run_id)}/taskInstances/pipeline_start/"
        "xcomEntries/run_dir",
    )
    run_dir = entry["value"]
    run_dir = json.loads(run_dir) if run_dir.startswith('"') else run_dir
    return json.loads((Path(run_dir) / step / "result.json").read_text())


def duration(run: dict[str, Any]) -> float:
    return (parse_time(run["end_date"]) - parse_time(run["start_date"])).total_seconds()


def trigger(stack: Stack, conf: dict[str, Any] | None = None) -> str:
    run = stack.api(
        "POST", f"/api/v2/dags/{DAG}/dagRuns", {"logical_date": None, "conf": conf or {}}
    )
    return run["dag_run_id"]


def land(stack: Stack, zone: Path, batches: int, take: int, start_date: str) -> None:
    stack.run_cli(
        "simulate-landing",
        [
            str(BIN / "lepton-tasks"),
            "simulate-landing",
            "--landing",
            str(zone),
            "--batches",
            str(batches),
            "--take",
            str(take),
            "--start-date",
            start_date,
            "--run-dir",
            str(stack.root / "simulator"),
        ],
    )


@pytest.fixture(scope="module")
def registry(scheduler_stack: Stack) -> MlflowClient:
    return MlflowClient(tracking_uri=scheduler_stack.mlflow_url)


@pytest.fixture(scope="module")
def landed_run(scheduler_stack: Stack, figures: dict[str, float]) -> dict[str, Any]:
    """A batch lands in the watched zone; the run it starts, finished."""
    stack = scheduler_stack

    def parsed_and_unpaused() -> bool:
        try:
            return not stack.api("GET", f"/api/v2/dags/{DAG}")["is_paused"]
        except HTTPError:  # 404 until the dag processor has stored it
            return False

    wait_for(parsed_and_unpaused, 180, "the DAG parsed and unpaused", stack)
    # With catchup off the scheduler still runs the latest nightly tick when it first sees the
    # DAG. Nothing has landed: that night is skipped, not failed.
    (nightly,) = wait_for(lambda: runs(stack, run_type="scheduled"), 120, "first night", stack)
    nightly = finished(stack, nightly["dag_run_id"])
    assert nightly["state"] == "success" and nightly["note"].startswith("Skipped: no batch had")
    assert states(stack, nightly["dag_run_id"])["ingest"] == "skipped"
    landed = time.monotonic()
    land(stack, stack.lepton_home / "landing", batches=1, take=1, start_date="2026-01-01")
    (started,) = wait_for(
        lambda: runs(stack, run_type="asset_triggered"), 120, "a run started by the landing", stack
    )
    figures["landing_to_run_s"] = round(time.monotonic() - landed, 1)
    run = finished(stack, started["dag_run_id"])
    figures["full_run_s"] = round(duration(run), 1)
    return run


def test_a_landed_batch_starts_a_run_that_promotes_a_clearly_better_model(
    scheduler_stack: Stack, landed_run: dict[str, Any], registry: MlflowClient, figures
) -> None:
    stack, run_id = scheduler_stack, landed_run["dag_run_id"]
    assert landed_run["state"] == "success", states(stack, run_id)
    assert landed_run["run_type"] == "asset_triggered" and landed_run["logical_date"] is None
    registered = result(stack, run_id, "register")
    decision = result(stack, run_id, "evaluate")["decision"]
    assert registered["version"] == "2" and registered["promoted"]  # v1 is the weak seed
    low, high = decision["evidence"]["gain_interval"]
    assert 0 < low <= decision["evidence"]["gain"] <= high
    champion = registry.get_model_version_by_alias(MODEL, "champion")
    assert champion.version == "2"
    assert landed_run["note"].startswith(f"Registered {MODEL} v2; promoted to champion (gain +")
    assert f"interval [{low:+.4f}, {high:+.4f}]" in landed_run["note"]
    figures["landed_run"] = landed_run["note"]


def test_an_unchanged_night_skips_its_steps_and_registers_nothing(
    scheduler_stack: Stack, landed_run: dict[str, Any], registry: MlflowClient, figures
) -> None:
    stack = scheduler_stack
    run = finished(stack, trigger(stack))
    run_states = states(stack, run["dag_run_id"])
    assert run["state"] == "success", run_states
    assert {run_states[task] for task in UNCHANGED_SKIPS} == {"skipped"}
    assert run["note"].startswith("Unchanged since v2: the same data")
    assert (
        result(stack, run["dag_run_id"], "check-inputs")["unchanged_since_run"]
        == (landed_run["dag_run_id"])
    )
    assert [v.version for v in registry.search_model_versions(f"name='{MODEL}'")] == ["2", "1"]
    figures["unchanged_run_s"] = round(duration(run), 1)
    figures["unchanged_over_full"] = round(duration(run) / figures["full_run_s"], 3)


def test_a_backfill_over_three_nights_uses_each_nights_batches(
    scheduler_stack: Stack, landed_run: dict[str, Any], registry: MlflowClient, figures
) -> None:
    stack = scheduler_stack
    history = stack.root / "history"  # not the watched zone: no landing runs from it
    land(stack, history, batches=3, take=3, start_date="2026-01-01")
    conf = {"source": str(history), "model_name": "lepton-history"}
    started = time.monotonic()
    stack.run_cli(
        "backfill",
        [
            str(BIN / "airflow"),
            "backfill",
            "create",
            "--dag-id",
            DAG,
            "--from-date",
            "2026-01-01",
            "--to-date",
            "2026-01-03T23:59:59",
            "--max-active-runs",
            "1",
            "--dag-run-conf",
            json.dumps(conf),
        ],
    )
    backfilled = wait_for(
        lambda: (
            [run for run in runs(stack, run_type="backfill") if run["state"] == "success"]
            if len(runs(stack, run_type="backfill", state="success")) == 3
            else None
        ),
        3 * RUN_TIMEOUT_S,
        "three backfilled nights",
        stack,
    )
    figures["backfill_three_nights_s"] = round(time.monotonic() - started, 1)
    backfilled.sort(key=lambda run: run["logical_date"])
    versions = {v.version: v for v in registry.search_model_versions("name='lepton-history'")}
    assert sorted(versions) == ["1", "2", "3"]
    for night, run in enumerate(backfilled, start=1):
        ingested = result(stack, run["dag_run_id"], "ingest")
        assert run["logical_date"].startswith(f"2026-01-0{night}")
        # Each night read the batches landed by then, and its version says which.
        assert [b["name"] for b in ingested["batches"]] == [
            f"batch-2026-01-0{day}" for day in range(1, night + 1)
        ]
        registered = result(stack, run["dag_run_id"], "register")
        version = versions[registered["version"]]
        assert version.tags["lepton.snapshot_id"] == ingested["snapshot_id"]
        figures[f"backfill_night_{night}"] = run["note"]
    # The champion is the last version the gate promoted, night by night.
    promoted = [
        result(stack, run["dag_run_id"], "register")["version"]
        for run in backfilled
        if result(stack, run["dag_run_id"], "register")["promoted"]
    ]
    champion = registry.get_registered_model("lepton-history").aliases.get("champion")
    assert str(champion) == promoted[-1] if promoted else champion is None


def test_the_stack_logs_no_trigger_failure(scheduler_stack: Stack, landed_run) -> None:
    log = scheduler_stack.log_tail("airflow", chars=2_000_000)
    assert "Trigger failed" not in log and "failed to load code" not in log.lower()
