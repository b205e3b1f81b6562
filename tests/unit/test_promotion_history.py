"""The promotion history: one tag per event, in order, and never a record without its move."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pytest
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from lepton_tasks import tracking
from lepton_tasks.registry import (
    MAX_REASON_CHARS,
    describe_model,
    move_champion,
    promotion_history,
    rollback,
)


@pytest.fixture
def two_versions(lepton_env: Path) -> MlflowClient:
    experiment_id = tracking.setup()
    client = MlflowClient()
    client.create_registered_model("m")
    for number in (1, 2):
        with mlflow.start_run(experiment_id=experiment_id) as run:
            mlflow.log_dict({"v": number}, "model/info.json")
        client.create_model_version("m", f"runs:/{run.info.run_id}/model", run.info.run_id)
    return client


def test_history_keeps_every_event_in_order(two_versions: MlflowClient, tmp_path: Path) -> None:
    for i in range(30):
        rollback("m", "2" if i % 2 == 0 else "1", f"drill {i}", "ops", str(tmp_path))
    history = describe_model("m").promotion_history
    assert [h["reason"] for h in history] == [f"rollback: drill {i}" for i in range(30)]
    assert [h["previous"] for h in history[1:]] == [h["version"] for h in history[:-1]]
    tags = two_versions.get_registered_model("m").tags
    assert all(len(value) < 5000 for value in tags.values())  # MLflow's column size


def test_a_long_reason_is_cut_to_fit_a_tag(two_versions: MlflowClient, tmp_path: Path) -> None:
    rollback("m", "2", "x" * 20_000, "ops", str(tmp_path))
    (entry,) = describe_model("m").promotion_history
    assert len(entry["reason"]) == MAX_REASON_CHARS and entry["reason"].endswith("…")


def test_a_refused_move_leaves_no_record(two_versions: MlflowClient) -> None:
    with pytest.raises(MlflowException):
        move_champion(two_versions, "m", "99", {"by": "x", "reason": "y"}, expected=None)
    assert describe_model("m").promotion_history == []
    assert "champion" not in two_versions.get_registered_model("m").aliases


def test_the_history_of_earlier_releases_is_still_read() -> None:
    legacy = '[{"version": "1", "previous": null, "by": "pipeline", "reason": "first"}]'
    tags = {
        "lepton.promotion_history": legacy,
        "lepton.promotion.20260102T000000000000Z-aa": '{"version": "2", "previous": "1"}',
    }
    assert [h["version"] for h in promotion_history(tags)] == ["1", "2"]
