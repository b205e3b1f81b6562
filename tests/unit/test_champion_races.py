"""Champion moves are compare-and-set under one lock: register and rollback never override
each other silently. Each test failed before (issue 12): register and rollback moved the alias
whatever had happened since the decision."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pytest
from mlflow import MlflowClient

from lepton_tasks import tracking
from lepton_tasks.errors import ChampionMovedError, RegistryError
from lepton_tasks.registry import LOCK_SUFFIX, describe_model, rollback
from lepton_tasks.results import ChampionScore, EvaluateResult, PromotionDecision
from lepton_tasks.settings import get_settings
from lepton_tasks.steps.ingest import ingest
from lepton_tasks.steps.register import register


def logged_model(experiment_id: str) -> str:
    with mlflow.start_run(experiment_id=experiment_id) as run:
        mlflow.log_dict({"stand-in": True}, "model/info.json")
    return run.info.run_id


@pytest.fixture
def registry(lepton_env: Path) -> MlflowClient:
    """Model 'm' with v1 and v2, v1 champion."""
    experiment_id = tracking.setup()
    client = MlflowClient()
    client.create_registered_model("m")
    for _ in (1, 2):
        run_id = logged_model(experiment_id)
        client.create_model_version("m", f"runs:/{run_id}/model", run_id)
    client.set_registered_model_alias("m", "champion", "1")
    return client


def champion(client: MlflowClient) -> str:
    return str(client.get_model_version_by_alias("m", "champion").version)


def candidate(tmp_path: Path) -> EvaluateResult:
    """A candidate evaluate found better than champion v1."""
    snapshot = ingest("sklearn:digits", str(tmp_path / "run")).snapshot_uri
    run_id = logged_model(tracking.setup())
    return EvaluateResult(
        run_dir=str(tmp_path / "run"),
        snapshot_uri=snapshot,
        model_uri="unused",
        mlflow_model_uri=f"runs:/{run_id}/model",
        mlflow_run_id=run_id,
        mlflow_experiment_id="0",
        train_run_id=run_id,
        architecture="seed_cnn",
        model_name="m",
        metrics={"accuracy": 0.99},
        champion=ChampionScore(version="1", metrics={"accuracy": 0.95}),
        decision=PromotionDecision(
            promote=True, reason="better", metric="accuracy", candidate_value=0.99
        ),
        confusion_matrix_uri="unused",
    )


def test_register_refuses_to_promote_over_a_rollback_made_since_evaluate(
    registry: MlflowClient, tmp_path: Path
) -> None:
    evaluated = candidate(tmp_path)
    rollback("m", "2", "v1 misbehaves", "ops", str(tmp_path))  # after evaluate, before register
    with pytest.raises(ChampionMovedError, match="is v2, not v1"):
        register(evaluated, str(tmp_path / "run"))
    assert champion(registry) == "2"  # the rollback stands
    assert [h["version"] for h in describe_model("m").promotion_history] == ["2"]
    # registered all the same, as challenger: a new decision can promote it
    assert str(registry.get_model_version_by_alias("m", "challenger").version) == "3"


def test_a_register_retry_does_not_undo_a_rollback_made_after_its_first_try(
    registry: MlflowClient, tmp_path: Path
) -> None:
    evaluated = candidate(tmp_path)
    with mlflow.start_run(experiment_id=tracking.setup()) as pipeline:
        pass
    first = register(evaluated, str(tmp_path / "run"), parent_run_id=pipeline.info.run_id)
    assert first.promoted and champion(registry) == "3"
    rollback("m", "1", "v3 misbehaves", "ops", str(tmp_path))  # then the first try failed late
    retry = register(evaluated, str(tmp_path / "run"), parent_run_id=pipeline.info.run_id)
    assert retry.version == "3" and retry.already_registered
    assert champion(registry) == "1"  # the rollback stands


def test_the_next_night_does_not_promote_a_version_a_person_rolled_back_from(
    registry: MlflowClient, tmp_path: Path
) -> None:
    """The same training (reused from the content cache) is the same version: after a
    rollback, a later run whose gate passes again must not undo the person's decision."""
    evaluated = candidate(tmp_path)
    assert register(evaluated, str(tmp_path / "run")).promoted and champion(registry) == "3"
    rollback("m", "1", "v3 misbehaves", "ops", str(tmp_path))
    with mlflow.start_run(experiment_id=tracking.setup()) as next_night:
        pass
    again = register(evaluated, str(tmp_path / "next"), parent_run_id=next_night.info.run_id)
    assert again.version == "3" and again.already_registered and not again.promoted
    assert champion(registry) == "1"
    # Rolling back to it by hand is still possible, and then the gate may keep it.
    rollback("m", "3", "fixed upstream", "ops", str(tmp_path))
    assert champion(registry) == "3"


def test_a_forced_promotion_may_bring_back_a_version_rolled_back_from(
    registry: MlflowClient, tmp_path: Path
) -> None:
    evaluated = candidate(tmp_path)
    register(evaluated, str(tmp_path / "run"))
    rollback("m", "1", "v3 misbehaves", "ops", str(tmp_path))
    forced = evaluated.model_copy(
        update={
            "decision": PromotionDecision(
                promote=True,
                forced=True,
                reason="forced: fixed upstream",
                metric="accuracy",
                candidate_value=0.99,
            )
        }
    )
    assert register(forced, str(tmp_path / "next")).promoted and champion(registry) == "3"


def test_rollback_refuses_when_the_champion_moved_since_the_page_was_shown(
    registry: MlflowClient, tmp_path: Path
) -> None:
    rollback("m", "2", "first", "ana", str(tmp_path), expected_champion="1")
    with pytest.raises(ChampionMovedError, match="is v2, not v1"):
        rollback("m", "1", "stale page", "bob", str(tmp_path), expected_champion="1")
    assert champion(registry) == "2"


def test_a_held_lock_makes_movers_wait_then_fail_and_a_stale_one_is_broken(
    registry: MlflowClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LEPTON_REGISTRY_LOCK_TIMEOUT_S", "1")
    get_settings.cache_clear()
    registry.create_registered_model(
        f"m{LOCK_SUFFIX}",
        tags={"lepton.lock_holder": "register of run 7", "lepton.lock_since": "9999999999"},
    )
    with pytest.raises(RegistryError, match="locked by register of run 7"):
        rollback("m", "2", "drill", "ops", str(tmp_path))
    assert champion(registry) == "1"
    registry.set_registered_model_tag(f"m{LOCK_SUFFIX}", "lepton.lock_since", "0")  # long dead
    rollback("m", "2", "drill", "ops", str(tmp_path))
    assert champion(registry) == "2"
    assert not registry.search_registered_models(filter_string=f"name = 'm{LOCK_SUFFIX}'")
