"""Monitoring: production (scoring runs, serving counters, labelled feedback) against the
champion's training data, with drift injected for real."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import numpy as np
from mlflow import MlflowClient
from starlette.testclient import TestClient

from lepton_tasks.serving.app import ServingApp
from lepton_tasks.serving.server import AliasFollower
from lepton_tasks.steps.monitor import monitor
from lepton_tasks.steps.score import score
from tests.conftest import write_npz
from tests.production.conftest import MODEL, Registry


def checks(result) -> dict[str, tuple[float, bool]]:
    return {c.name: (c.value, c.alert) for c in result.checks}


def test_nothing_scored_yet_is_no_verdict(production_home: Registry) -> None:
    result = monitor(MODEL)
    assert result.champion_version == "1" and result.checks == [] and not result.alert
    assert "not enough production data" in result.summary()


def test_data_like_training_passes_and_inverted_images_raise_the_alert(
    production_home: Registry, tmp_path: Path
) -> None:
    images = production_home.images
    write_npz(tmp_path / "normal.npz", images[:400], production_home.labels[:400])
    score(MODEL, str(tmp_path / "normal.npz"), str(tmp_path / "out" / "normal.parquet"))
    calm = monitor(MODEL)
    assert calm.production_examples == 400 and not calm.alert, calm.checks
    assert set(checks(calm)) == {
        "pixel_mean_shift",
        "pixel_psi",
        "prediction_kl",
        "feedback_accuracy",
    }

    np.savez(tmp_path / "inverted.npz", x=255 - images[400:1200])  # a camera gone negative
    score(MODEL, str(tmp_path / "inverted.npz"), str(tmp_path / "out" / "inverted.parquet"))
    drifted = monitor(MODEL)
    found = checks(drifted)
    assert drifted.alert and found["pixel_mean_shift"][1] and found["pixel_psi"][1]
    assert any("pixel_mean_shift" in reason for reason in drifted.reasons)
    run = MlflowClient().get_run(drifted.mlflow_run_id)
    assert run.data.tags["lepton.alert"] == "true" and run.data.metrics["pixel_psi"] > 0.25
    assert len([s for s in drifted.sources if s.startswith("runs:/")]) == 2


def test_labelled_feedback_below_the_floor_raises_the_alert(
    production_home: Registry, tmp_path: Path
) -> None:
    landing = production_home.home / "landing"
    landing.mkdir()
    wrong = (production_home.labels[:200] + 1) % 10  # what the world now calls each digit
    write_npz(landing / "feedback.npz", production_home.images[:200], wrong)
    result = monitor(MODEL)
    found = checks(result)
    assert set(found) == {"feedback_accuracy"} and found["feedback_accuracy"][1]
    assert result.alert and "labelled feedback" in result.reasons[0]
    assert str(landing / "feedback.npz") in result.sources


def test_a_servers_counters_count_as_production(production_home: Registry) -> None:
    app = ServingApp(MODEL, max_body_bytes=1 << 22)
    AliasFollower(app, poll_s=60).check()
    client = TestClient(app)
    shifted = np.clip(production_home.images[:300].astype(int) + 120, 0, 255)
    client.post("/invocations", json={"inputs": shifted.tolist()})
    page = client.get("/metrics").content

    class Metrics(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.end_headers()
            self.wfile.write(page)

        def log_message(self, *args) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Metrics)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}/metrics"
    try:
        result = monitor(MODEL, metrics_urls=[url])
    finally:
        server.shutdown()
    assert result.production_examples == 300 and url in result.sources
    assert result.alert and checks(result)["pixel_mean_shift"][0] > 50


def test_the_lepton_page_shows_the_last_check(production_home: Registry, tmp_path: Path) -> None:
    from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser
    from airflow.api_fastapi.core_api.security import get_user

    from lepton_airflow.ui.model_page import app

    app.dependency_overrides[get_user] = lambda: SimpleAuthManagerUser(username="ana", role="admin")
    try:
        page = TestClient(app).get("/")
        assert "Not monitored yet" in page.text
        np.savez(tmp_path / "inverted.npz", x=255 - production_home.images[:300])
        score(MODEL, str(tmp_path / "inverted.npz"), str(tmp_path / "out.parquet"))
        monitor(MODEL)
        page = TestClient(app).get("/")
    finally:
        app.dependency_overrides.clear()
    assert '<span id="drift-state">ALERT</span>' in page.text
    assert "<td>pixel_mean_shift</td>" in page.text and "300 production examples" in page.text


def test_a_metrics_url_must_be_http_and_its_content_is_never_echoed(
    production_home: Registry, tmp_path: Path
) -> None:
    import pytest

    from lepton_tasks.errors import InputDataError, UsageError

    secret = tmp_path / "secret.txt"
    secret.write_text("root:x:0:0:the-secret-line\n")
    with pytest.raises(UsageError, match="must be http"):
        monitor(MODEL, metrics_urls=[f"file://{secret}"])

    class NotMetrics(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"root:x:0:0:the-secret-line\n")

        def log_message(self, *args) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), NotMetrics)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with pytest.raises(InputDataError) as refused:
            monitor(MODEL, metrics_urls=[f"http://127.0.0.1:{server.server_port}/metrics"])
    finally:
        server.shutdown()
    assert "not a Prometheus metrics page" in str(refused.value)
    assert "the-secret-line" not in refused.value.one_line()


def test_feedback_of_another_image_size_is_left_out_not_judged(
    production_home: Registry,
) -> None:
    landing = production_home.home / "landing"
    landing.mkdir()
    write_npz(landing / "mnist-sized.npz", np.zeros((50, 28, 28), np.uint8), np.zeros(50, int))
    result = monitor(MODEL)
    assert result.checks == [] and not result.alert
    assert str(landing / "mnist-sized.npz") not in result.sources
