"""check-inputs: a run whose data, params, code and champion are an earlier successful run's
has nothing to do; any change of them, or forcing, runs the steps (issue 13)."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pytest
from mlflow import MlflowClient

from lepton_tasks import tracking
from lepton_tasks.results import RegisterResult
from lepton_tasks.run_folder import RunFolder
from lepton_tasks.unchanged import check_inputs, remember

PARAMS = {
    "architecture": "lepton_cnn",
    "epochs": 8,
    "batch_size": 64,
    "learning_rate": None,
    "min_improvement": 0.0,
    "model_name": "lepton-digits",
    "force_retrain": False,
    "force_promotion": False,
}


def champion_at(client: MlflowClient, version: str) -> None:
    """lepton-digits with versions up to `version`, `champion` on it."""
    if not client.search_registered_models("name = 'lepton-digits'"):
        client.create_registered_model("lepton-digits")
    with mlflow.start_run(experiment_id=tracking.setup()) as run:
        mlflow.log_dict({}, "model/info.json")
    while len(client.search_model_versions("name='lepton-digits'")) < int(version):
        client.create_model_version("lepton-digits", f"runs:/{run.info.run_id}/model")
    client.set_registered_model_alias("lepton-digits", "champion", version)


def finished_run(tmp_path: Path, name: str, params: dict, left_champion: str) -> RunFolder:
    """A run that checked its inputs, registered v`left_champion` and left it champion."""
    folder = RunFolder(str(tmp_path / name))
    check_inputs("snap1", folder.uri, params)
    folder_result = folder.result_uri("register")
    Path(folder_result).parent.mkdir(parents=True, exist_ok=True)
    Path(folder_result).write_text(
        RegisterResult(
            run_dir=folder.uri,
            model_name="lepton-digits",
            version=left_champion,
            aliases=["champion"],
            promoted=True,
            champion_version=left_champion,
        ).model_dump_json()
    )
    assert remember(folder, f"dag-run-{name}") == left_champion
    return folder


@pytest.fixture
def client(lepton_env: Path) -> MlflowClient:
    tracking.setup()
    return MlflowClient()


def test_the_same_inputs_after_a_promotion_are_unchanged(client, tmp_path: Path) -> None:
    champion_at(client, "1")
    finished_run(tmp_path, "first", PARAMS, left_champion="2")
    champion_at(client, "2")  # what that run left

    again = check_inputs("snap1", str(tmp_path / "again"), PARAMS)
    assert again.unchanged_since == "2" and again.unchanged_since_run == "dag-run-first"


CHANGES = [
    ({"snapshot_id": "snap2"}, "new data"),
    ({"epochs": 9}, "another training param"),
    ({"min_improvement": 0.01}, "another gate margin"),
    ({"model_name": "fashion"}, "another model"),
    ({"force_retrain": True}, "forced"),
    ({"force_promotion": True}, "forced"),
]


def test_any_change_of_the_inputs_runs_the_steps(client, tmp_path: Path) -> None:
    champion_at(client, "1")
    finished_run(tmp_path, "first", PARAMS, left_champion="1")
    assert check_inputs("snap1", str(tmp_path / "same"), PARAMS).unchanged_since == "1"
    for change, why in CHANGES:
        change = dict(change)
        snapshot = change.pop("snapshot_id", "snap1")
        checked = check_inputs(snapshot, str(tmp_path / "next"), {**PARAMS, **change})
        assert checked.unchanged_since is None, why


def test_a_moved_champion_runs_the_steps(client, tmp_path: Path) -> None:
    """The champion is an input of the gate: after a rollback the candidate is compared anew."""
    champion_at(client, "2")
    finished_run(tmp_path, "first", PARAMS, left_champion="2")
    client.set_registered_model_alias("lepton-digits", "champion", "1")
    assert check_inputs("snap1", str(tmp_path / "next"), PARAMS).unchanged_since is None


def test_another_code_version_runs_the_steps(
    client, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    champion_at(client, "1")
    monkeypatch.setenv("LEPTON_CODE_VERSION", "abc")
    tracking.code_version.cache_clear()
    finished_run(tmp_path, "first", PARAMS, left_champion="1")
    monkeypatch.setenv("LEPTON_CODE_VERSION", "def")
    tracking.code_version.cache_clear()
    try:
        assert check_inputs("snap1", str(tmp_path / "next"), PARAMS).unchanged_since is None
    finally:
        tracking.code_version.cache_clear()
