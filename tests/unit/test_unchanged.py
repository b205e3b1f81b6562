"""check-inputs: a run whose data, params, code and champion are an earlier successful run's
has nothing to do; any change of them, or forcing, runs the steps (issue 13)."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pytest
from mlflow import MlflowClient

from lepton_tasks import tracking
from lepton_tasks.results import (
    ChampionScore,
    EvaluateResult,
    PromotionDecision,
    RegisterResult,
)
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


def save(folder: RunFolder, step: str, result) -> None:
    path = Path(folder.result_uri(step))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(result.model_dump_json())


def finished_run(
    tmp_path: Path,
    name: str,
    params: dict,
    registered: str,
    compared: str | None,
    promoted: bool,
    champion_after: str,
) -> str | None:
    """A run that checked its inputs, compared v`registered` with v`compared` and ended with
    v`champion_after` as champion; what pipeline-end remembered."""
    folder = RunFolder(str(tmp_path / name))
    check_inputs("snap1", folder.uri, params)
    decision = PromotionDecision(
        promote=promoted, reason="test", metric="accuracy", candidate_value=0.9
    )
    save(
        folder,
        "evaluate",
        EvaluateResult(
            run_dir=folder.uri,
            snapshot_uri="unused",
            model_uri="unused",
            mlflow_model_uri="unused",
            mlflow_run_id="r",
            mlflow_experiment_id="0",
            train_run_id="t",
            architecture="lepton_cnn",
            model_name="lepton-digits",
            metrics={"accuracy": 0.9},
            champion=ChampionScore(version=compared, metrics={}) if compared else None,
            decision=decision,
            confusion_matrix_uri="unused",
        ),
    )
    save(
        folder,
        "register",
        RegisterResult(
            run_dir=folder.uri,
            model_name="lepton-digits",
            version=registered,
            aliases=["champion"] if promoted else ["challenger"],
            promoted=promoted,
            champion_version=champion_after,
            previous_champion_version=compared if promoted else None,
        ),
    )
    return remember(folder, f"dag-run-{name}")


@pytest.fixture
def client(lepton_env: Path) -> MlflowClient:
    tracking.setup()
    return MlflowClient()


def test_the_same_inputs_after_a_promotion_are_unchanged(client, tmp_path: Path) -> None:
    champion_at(client, "1")
    assert finished_run(tmp_path, "first", PARAMS, "2", "1", True, champion_after="2") == "2"
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
    finished_run(tmp_path, "first", PARAMS, "2", "1", False, champion_after="1")
    assert check_inputs("snap1", str(tmp_path / "same"), PARAMS).unchanged_since == "2"
    for change, why in CHANGES:
        change = dict(change)
        snapshot = change.pop("snapshot_id", "snap1")
        checked = check_inputs(snapshot, str(tmp_path / "next"), {**PARAMS, **change})
        assert checked.unchanged_since is None, why


def test_a_moved_champion_runs_the_steps(client, tmp_path: Path) -> None:
    """The champion is an input of the gate: after a rollback the candidate is compared anew."""
    champion_at(client, "2")
    finished_run(tmp_path, "first", PARAMS, "3", "2", False, champion_after="2")
    client.set_registered_model_alias("lepton-digits", "champion", "1")
    assert check_inputs("snap1", str(tmp_path / "next"), PARAMS).unchanged_since is None


def test_another_code_version_runs_the_steps(
    client, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    champion_at(client, "1")
    monkeypatch.setenv("LEPTON_CODE_VERSION", "abc")
    tracking.code_version.cache_clear()
    finished_run(tmp_path, "first", PARAMS, "2", "1", False, champion_after="1")
    monkeypatch.setenv("LEPTON_CODE_VERSION", "def")
    tracking.code_version.cache_clear()
    try:
        assert check_inputs("snap1", str(tmp_path / "next"), PARAMS).unchanged_since is None
    finally:
        tracking.code_version.cache_clear()


def test_a_champion_moved_during_the_run_is_not_remembered(client, tmp_path: Path) -> None:
    """The gate compared with v2, then someone rolled back to v1 before register: the
    candidate was never compared with v1, so the next night must run the gate."""
    champion_at(client, "2")
    assert finished_run(tmp_path, "first", PARAMS, "3", "2", False, champion_after="1") is None
    client.set_registered_model_alias("lepton-digits", "champion", "1")
    assert check_inputs("snap1", str(tmp_path / "next"), PARAMS).unchanged_since is None


def test_another_seed_runs_the_steps(
    client, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    champion_at(client, "1")
    finished_run(tmp_path, "first", PARAMS, "2", "1", False, champion_after="1")
    monkeypatch.setenv("LEPTON_SEED", "7")
    assert check_inputs("snap1", str(tmp_path / "next"), PARAMS).unchanged_since is None


def test_a_backfill_of_the_live_model_is_refused(lepton_env: Path, tmp_path: Path) -> None:
    """Past nights compared with today's champion could move it: a backfill needs its own."""
    from lepton_tasks.errors import UsageError
    from lepton_tasks.pipeline_run import start

    with pytest.raises(UsageError, match="a backfill registers past nights' models"):
        start("lepton_training", "backfill__2026-01-01", params={}, run_type="backfill")
    with pytest.raises(UsageError, match="lepton-digits-backfill"):
        start(
            "lepton_training",
            "backfill__2026-01-01",
            params={"model_name": "lepton-digits"},
            run_type="backfill",
        )
