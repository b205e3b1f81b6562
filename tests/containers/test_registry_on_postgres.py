"""The registry on the stack's MLflow server (PostgreSQL backend, basic auth), as the steps'
plain user, and the Lepton page on top of it."""

from __future__ import annotations

import itertools

import pytest

from tests.containers.compose import ComposeStack
from tests.containers.mlflow_client import mlflow_as

pytestmark = [pytest.mark.containers, pytest.mark.slow]


def test_forty_promotions_and_rollbacks_on_postgres(
    stack: ComposeStack, steps_user: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """MLflow keeps tag values in VARCHAR(5000), which PostgreSQL enforces: the history must
    hold any number of events, and a failed alias move must leave no record behind."""
    import mlflow
    from fastapi.testclient import TestClient

    from lepton_tasks.registry import describe_model, move_champion, rollback

    name = "lepton-history-drill"
    with mlflow_as(steps_user) as client:
        client.create_registered_model(name)
        mlflow.set_experiment("lepton-history-drill")
        for number in (1, 2):
            with mlflow.start_run() as run:
                mlflow.log_dict({"v": number}, "model/info.json")
            client.create_model_version(name, f"runs:/{run.info.run_id}/model", run.info.run_id)

        reason = "drill: " + "the champion misreads sevens as ones on the night batch; " * 6
        for i in range(40):
            rollback(name, "2" if i % 2 == 0 else "1", reason, f"ops-{i}", "/tmp/unused")

        history = describe_model(name).promotion_history
        assert len(history) == 40
        assert [h["by"] for h in history] == [f"ops-{i}" for i in range(40)]
        assert history[0]["previous"] is None
        for before, after in itertools.pairwise(history):
            assert after["previous"] == before["version"]
            assert after["reason"] == f"rollback: {reason}"  # whole, never truncated JSON
        assert str(client.get_model_version_by_alias(name, "champion").version) == "1"

        # a move the registry refuses (no version 99) leaves neither the alias nor a record
        with pytest.raises(Exception, match="99"):
            move_champion(client, name, "99", {"by": "x", "reason": "bad"}, expected="1")
        assert len(describe_model(name).promotion_history) == 40
        assert str(client.get_model_version_by_alias(name, "champion").version) == "1"
        # every move took the champion lock (a registered model) and released it
        assert not client.search_registered_models(filter_string=f"name = '{name}.lepton-lock'")

        # the Lepton page reads the same registry (as the steps' user, like the api-server)
        from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser
        from airflow.api_fastapi.core_api.security import get_user

        from lepton_airflow.ui.model_page import app
        from lepton_tasks.settings import get_settings

        monkeypatch.setenv("LEPTON_MODEL_NAME", name)  # the page shows the configured model only
        get_settings.cache_clear()
        app.dependency_overrides[get_user] = lambda: SimpleAuthManagerUser(
            username="ana", role="admin"
        )
        try:
            page = TestClient(app).get("/").text
        finally:
            app.dependency_overrides.clear()
    assert '<strong id="champion">v1</strong>' in page
    assert page.count("by ops-") == 40
