"""The Lepton page in Airflow: versions, aliases, lineage, and a recorded champion rollback."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from mlflow import MlflowClient

from lepton_airflow.ui.model_page import app
from lepton_tasks import tracking
from lepton_tasks.registry import promotion_history


@pytest.fixture
def registry(lepton_env: Path) -> MlflowClient:
    """A real registry with two versions carrying Lepton's lineage tags; v1 is champion."""
    import mlflow

    experiment_id = tracking.setup()  # artifacts beside the test's store, not in ./mlruns
    client = MlflowClient()
    client.create_registered_model("lepton-digits")
    for number, accuracy in ((1, 0.97), (2, 0.98)):
        with mlflow.start_run(experiment_id=experiment_id) as run:
            mlflow.log_dict({"v": number}, "model/info.json")
        client.create_model_version(
            "lepton-digits",
            f"runs:/{run.info.run_id}/model",
            run_id=run.info.run_id,
            tags={
                "lepton.metric.accuracy": str(accuracy),
                "lepton.snapshot_id": f"snap{number}",
                "lepton.snapshot_count": "1797",
                "lepton.dag_id": "lepton_training",
                "lepton.dag_run_id": f"scheduled__2026-01-0{number}",
                "lepton.decision": "first model" if number == 1 else "not better",
            },
        )
    client.set_registered_model_alias("lepton-digits", "champion", "1")
    client.set_registered_model_alias("lepton-digits", "challenger", "2")
    return client


@pytest.fixture
def signed_in():
    from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser
    from airflow.api_fastapi.core_api.security import get_user

    app.dependency_overrides[get_user] = lambda: SimpleAuthManagerUser(username="ana", role="admin")
    yield TestClient(app)
    app.dependency_overrides.clear()


def test_the_page_needs_an_airflow_login(registry: MlflowClient) -> None:
    client = TestClient(app)
    assert client.get("/").status_code == 401
    assert client.post("/rollback", data={"version": "2", "reason": "x"}).status_code == 401


def test_the_page_shows_versions_champion_and_lineage(registry: MlflowClient, signed_in) -> None:
    page = signed_in.get("/")
    assert page.status_code == 200
    assert '<strong id="champion">v1</strong>' in page.text
    # In Airflow's iframe, DAG runs open in Airflow's UI itself and MLflow in a new tab.
    assert 'data-open="top" href="/dags/lepton_training/runs/scheduled__2026-01-02"' in page.text
    assert 'data-open="new" target="_blank"' in page.text and "window.top.document" in page.text
    assert "accuracy 0.9800" in page.text and "snap2 (1797 examples)" in page.text
    # The rollback form offers the other versions, not the champion itself.
    assert '<option value="2">v2: accuracy 0.9800</option>' in page.text
    assert '<option value="1">' not in page.text
    data = signed_in.get("/api/model").json()
    assert [v["version"] for v in data["versions"]] == ["2", "1"]
    assert data["versions"][1]["aliases"] == ["champion"]


def test_rollback_moves_the_champion_and_records_who_and_why(
    registry: MlflowClient, signed_in
) -> None:
    done = signed_in.post(
        "/rollback", data={"version": "2", "reason": "v1 misreads 7s"}, follow_redirects=False
    )
    assert done.status_code == 303
    assert done.headers["location"].startswith("/lepton/?model_name=lepton-digits")
    assert (
        'id="notice">Champion is now v2 (was v1).'
        in signed_in.get(done.headers["location"].removeprefix("/lepton")).text
    )
    assert str(registry.get_model_version_by_alias("lepton-digits", "champion").version) == "2"
    history = promotion_history(registry.get_registered_model("lepton-digits").tags)
    assert history[-1]["by"] == "ana" and history[-1]["reason"] == "rollback: v1 misreads 7s"
    page = signed_in.get("/").text
    assert '<strong id="champion">v2</strong>' in page
    assert "(was v1) by ana: rollback: v1 misreads 7s" in page
    bad = signed_in.post("/rollback", data={"version": "9", "reason": "typo"})
    assert bad.status_code == 400 and "no version 9" in bad.json()["detail"]
