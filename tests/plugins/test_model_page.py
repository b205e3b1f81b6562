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
    client.create_registered_model("lepton-digits", tags={"lepton.managed": "true"})
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
                **({"lepton.class_names": '["cat", "dog"]'} if number == 2 else {}),
            },
        )
    client.set_registered_model_alias("lepton-digits", "champion", "1")
    client.set_registered_model_alias("lepton-digits", "challenger", "2")
    return client


def signed_in_as(role: str, name: str = "ana") -> TestClient:
    from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser
    from airflow.api_fastapi.core_api.security import get_user

    app.dependency_overrides[get_user] = lambda: SimpleAuthManagerUser(username=name, role=role)
    return TestClient(app)


@pytest.fixture
def signed_in():
    yield signed_in_as("admin")
    app.dependency_overrides.clear()


@pytest.fixture
def viewer():
    yield signed_in_as("viewer", "vic")
    app.dependency_overrides.clear()


SAME_ORIGIN = {"Origin": "http://testserver"}  # what a browser sends from the page itself


def roll_back(client: TestClient, version: str, reason: str, expected: str = "1", **headers):
    return client.post(
        "/rollback",
        data={"version": version, "reason": reason, "expected_champion": expected},
        headers={**SAME_ORIGIN, **headers},
        follow_redirects=False,
    )


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
    assert "<td>cat, dog</td>" in page.text  # what v2's outputs mean; v1 predates the tag
    assert "<td>?</td>" in page.text
    # The rollback form offers the other versions, not the champion itself.
    assert '<option value="2">v2: accuracy 0.9800</option>' in page.text
    assert '<option value="1">' not in page.text
    data = signed_in.get("/api/model").json()
    assert [v["version"] for v in data["versions"]] == ["2", "1"]
    assert data["versions"][1]["aliases"] == ["champion"]


def test_rollback_moves_the_champion_and_records_who_and_why(
    registry: MlflowClient, signed_in
) -> None:
    done = roll_back(signed_in, "2", "v1 misreads 7s")
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
    bad = roll_back(signed_in, "9", "typo", expected="2")
    assert bad.status_code == 400 and "no version 9" in bad.json()["detail"]


def test_a_viewer_may_read_but_not_roll_back(registry: MlflowClient, viewer) -> None:
    """Before (issue 12): any logged-in user could move the champion."""
    assert viewer.get("/").status_code == 200
    refused = roll_back(viewer, "2", "I am only a viewer")
    assert refused.status_code == 403 and "may not edit lepton_training" in refused.text
    assert str(registry.get_model_version_by_alias("lepton-digits", "champion").version) == "1"


def test_a_cross_site_post_is_refused(registry: MlflowClient, signed_in) -> None:
    """Before: the session cookie alone authorized the POST (CSRF)."""
    for headers in ({"Origin": "https://evil.example"}, {"Origin": ""}, {"Referer": "x"}):
        client_headers = {k: v for k, v in headers.items()}
        done = signed_in.post(
            "/rollback",
            data={"version": "2", "reason": "forged", "expected_champion": "1"},
            headers=client_headers,
            follow_redirects=False,
        )
        assert done.status_code == 403, headers
    assert str(registry.get_model_version_by_alias("lepton-digits", "champion").version) == "1"


def test_only_models_lepton_registered_are_listed_shown_or_moved(
    registry: MlflowClient, signed_in
) -> None:
    """Before: `model_name` let a user move `champion` on any registered model; then (issue
    12) only LEPTON_MODEL_NAME was shown, so models trained with another name were invisible."""
    registry.create_registered_model("someone-elses")
    registry.create_registered_model("fashion", tags={"lepton.managed": "true"})
    page = signed_in.get("/")
    assert '<nav id="models">Models: <a href="/lepton/?model_name=fashion">fashion</a>' in page.text
    assert "<strong>lepton-digits</strong>" in page.text and "someone-elses" not in page.text
    assert "Registered model fashion" in signed_in.get("/?model_name=fashion").text
    assert signed_in.get("/", params={"model_name": "someone-elses"}).status_code == 403
    done = signed_in.post(
        "/rollback",
        data={
            "version": "1",
            "reason": "x",
            "expected_champion": "",
            "model_name": "someone-elses",
        },
        headers=SAME_ORIGIN,
        follow_redirects=False,
    )
    assert done.status_code == 403


def test_a_stale_page_does_not_override_a_newer_move(registry: MlflowClient, signed_in) -> None:
    assert roll_back(signed_in, "2", "first").status_code == 303
    stale = roll_back(signed_in, "2", "from a page that still shows v1", expected="1")
    assert stale.status_code == 409 and "ChampionMovedError" in stale.text


def test_behind_a_proxy_the_configured_base_url_is_this_server(
    registry: MlflowClient, signed_in, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AIRFLOW__API__BASE_URL", "https://airflow.example.com")
    forged = roll_back(signed_in, "2", "forged", Origin="https://evil.example")
    assert forged.status_code == 403
    done = roll_back(signed_in, "2", "via the proxy", Origin="https://airflow.example.com")
    assert done.status_code == 303
