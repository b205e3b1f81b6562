"""The five commands chained through the real CLI on the bundled digits, as a container runs them."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow import MlflowClient

from lepton_tasks.registry import promotion_history
from tests.conftest import run_cli

pytestmark = pytest.mark.slow


def chain(run_dir: Path, *train_args: str) -> list[dict]:
    results = []
    for step, extra in [
        ("ingest", ["--source", "sklearn:digits"]),
        ("validate", []),
        ("train", list(train_args)),
        ("evaluate", []),
        ("register", []),
    ]:
        done = run_cli(step, "--run-dir", str(run_dir), *extra)
        assert done.code == 0, f"{step} failed: {done.stderr[-2000:]}"
        # Not a terminal: one log line per epoch, no progress bars or carriage returns.
        assert "\r" not in done.stderr and "━" not in done.stderr, done.stderr[-2000:]
        results.append(done.result)
        saved = run_dir / step / "result.json"
        assert saved.is_file(), f"{step} left no result.json"
    return results


def test_chain_registers_a_champion_then_a_weaker_model_leaves_it(
    tmp_path: Path, lepton_env: Path
) -> None:
    first = chain(tmp_path / "run1", "--epochs", "8")
    ingested, validated, trained, evaluated, registered = first
    assert validated["success"] and trained["epochs_run"] >= 1
    assert evaluated["decision"]["promote"] and evaluated["metrics"]["accuracy"] > 0.9
    assert registered["aliases"] == ["challenger", "champion"]

    client = MlflowClient()
    champion = client.get_model_version_by_alias("lepton-digits", "champion")
    assert str(champion.version) == registered["version"] == "1"
    assert champion.tags["lepton.snapshot_id"] == ingested["snapshot_id"]
    assert champion.tags["lepton.snapshot_sha256"] == ingested["sha256"]
    assert champion.tags["lepton.train_run_id"] == trained["mlflow_run_id"]
    assert champion.tags["lepton.evaluate_run_id"] == evaluated["mlflow_run_id"]
    assert '"success": true' in champion.tags["lepton.validation"]
    assert champion.tags["lepton.code_version"]
    assert float(champion.tags["lepton.metric.accuracy"]) == evaluated["metrics"]["accuracy"]

    second = chain(tmp_path / "run2", "--architecture", "seed_cnn", "--epochs", "1")
    _, _, _, weak_eval, weak_reg = second
    assert not weak_eval["decision"]["promote"]
    assert weak_eval["champion"]["version"] == "1"
    assert weak_reg["version"] == "2" and weak_reg["aliases"] == ["challenger"]
    assert not weak_reg["promoted"] and weak_reg["champion_version"] == "1"
    assert str(client.get_model_version_by_alias("lepton-digits", "champion").version) == "1"

    again = run_cli("register", "--run-dir", str(tmp_path / "run2"))
    assert again.code == 0 and again.result["version"] == "2" and again.result["already_registered"]
    versions = client.search_model_versions("name='lepton-digits'")
    assert len(versions) == 2  # registering the same run twice gave one version

    rolled = run_cli(
        "rollback",
        "--run-dir",
        str(tmp_path / "ops"),
        "--version",
        "2",
        "--reason",
        "drill",
        "--who",
        "tester",
    )
    assert rolled.code == 0, rolled.stderr
    assert str(client.get_model_version_by_alias("lepton-digits", "champion").version) == "2"
    history = promotion_history(client.get_registered_model("lepton-digits").tags)
    assert history[-1]["by"] == "tester" and history[-1]["reason"] == "rollback: drill"
