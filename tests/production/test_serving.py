"""Online serving: MLflow's scoring protocol, the Open Inference Protocol, named 4xx for bad
input, Prometheus metrics, and a champion that moves under load without a failed request."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import threading
import time
import urllib.request
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from starlette.testclient import TestClient

from lepton_tasks.serving.app import ServingApp
from lepton_tasks.serving.metrics import parse_exposition
from lepton_tasks.serving.server import AliasFollower
from tests.conftest import CLI, run_cli
from tests.production.conftest import MODEL, Registry, champion_predictions


@pytest.fixture
def client(production_home: Registry) -> TestClient:
    app = ServingApp(MODEL, max_body_bytes=1 << 20)
    assert AliasFollower(app, poll_s=60).check()
    return TestClient(app)


def test_invocations_answer_with_the_champions_predictions(
    client: TestClient, production_home: Registry
) -> None:
    images = production_home.images[:16]
    response = client.post("/invocations", json={"inputs": images.tolist()})
    assert response.status_code == 200 and response.headers["x-lepton-model"] == f"{MODEL}/1"
    predicted = np.asarray(response.json()["predictions"]).argmax(axis=1)
    assert predicted.tolist() == champion_predictions("1", images).tolist()
    # the same through the Open Inference Protocol, and MLflow's own app for /version
    v2 = client.post(
        f"/v2/models/{MODEL}/infer",
        json={
            "inputs": [
                {
                    "name": "images",
                    "shape": [16, 8, 8, 1],
                    "datatype": "UINT8",
                    "data": images.reshape(-1).tolist(),
                }
            ]
        },
    ).json()
    assert v2["model_version"] == "1" and v2["outputs"][0]["shape"] == [16, 10]
    oip = np.asarray(v2["outputs"][0]["data"]).reshape(16, 10).argmax(axis=1)
    assert oip.tolist() == predicted.tolist()
    assert client.get(f"/v2/models/{MODEL}").json()["inputs"][0]["shape"] == [-1, 8, 8, 1]
    assert client.get("/version").status_code == 200 and client.get("/ping").status_code == 200
    assert client.get("/v2/health/live").status_code == 200
    assert client.get("/v2/health/ready").status_code == 200
    assert client.get(f"/v2/models/{MODEL}/ready").status_code == 200
    assert client.get("/v2").json()["name"] == "lepton"


BAD_REQUESTS = [
    (b"{not json", "the body is not JSON"),
    (
        b'{"dataframe_split": {"columns": ["a"], "data": [[1]]}}',
        "expected a JSON object with 'inputs'",
    ),
    (b'{"inputs": [[1, 2], [3]]}', "rectangular array of numbers"),
    (b'{"inputs": "eight"}', "rectangular array of numbers"),
    (
        json.dumps({"inputs": np.zeros((2, 28, 28)).tolist()}).encode(),
        "this model takes images of shape [8, 8, 1]",
    ),
    (
        json.dumps({"inputs": np.full((1, 8, 8), 300.0).tolist()}).encode(),
        "pixel values span [300, 300]",
    ),
    (json.dumps({"inputs": [[[-1.0] * 8] * 8]}).encode(), "pixel values span [-1, -1]"),
    (b'{"inputs": [[[NaN, 0, 0, 0, 0, 0, 0, 0]]]}', "this model takes images"),
    (json.dumps({"inputs": np.zeros((0, 8, 8, 1)).tolist()}).encode(), "this model takes images"),
]


@pytest.mark.parametrize(("body", "reason"), BAD_REQUESTS)
def test_bad_input_is_a_400_with_one_line_saying_why(
    client: TestClient, body: bytes, reason: str
) -> None:
    response = client.post(
        "/invocations", content=body, headers={"content-type": "application/json"}
    )
    assert response.status_code == 400, response.text
    message = response.json()["message"]
    assert reason in message and "\n" not in message and "Traceback" not in message


def test_other_refusals_never_a_500(client: TestClient, production_home: Registry) -> None:
    json_type = {"content-type": "application/json"}
    huge = b'{"inputs": [' + b"0," * (1 << 20) + b"0]}"
    assert client.post("/invocations", content=huge, headers=json_type).status_code == 413
    plain = client.post("/invocations", content=b"x", headers={"content-type": "text/plain"})
    assert plain.status_code == 415 and "\n" not in plain.json()["message"]
    csv = client.post("/invocations", content=b"a,b\n1,2", headers={"content-type": "text/csv"})
    assert csv.status_code == 415 and "JSON tensors" in csv.json()["message"]
    # a few bytes that used to reach Python's limits: nesting, a number too long, a shape
    # whose product overflows to the size sent
    deep = b'{"inputs": ' + b"[" * 5000 + b"]" * 5000 + b"}"
    long_number = b'{"inputs": [[' + b"9" * 5000 + b"]]}"
    for body in (deep, long_number):
        response = client.post("/invocations", content=body, headers=json_type)
        assert response.status_code == 400, response.text
    overflow = {
        "inputs": [{"name": "x", "shape": [4294967296, 4294967296], "datatype": "FP32", "data": []}]
    }
    assert client.post(f"/v2/models/{MODEL}/infer", json=overflow).status_code == 400
    assert client.post(f"/v2/models/{MODEL}/infer", json={"inputs": []}).status_code == 400
    assert client.post("/v2/models/other/infer", json={}).status_code == 404
    assert client.get("/docs").status_code == 404  # only what the server means to answer
    metrics = parse_exposition(client.get("/metrics").text)
    codes = {labels["code"] for labels, _ in metrics["lepton_serving_requests_total"]}
    assert "500" not in codes and {"413", "415", "400"} <= codes


def test_a_version_that_fails_to_load_leaves_the_old_one_serving(
    client: TestClient, production_home: Registry
) -> None:
    from mlflow import MlflowClient

    registry = MlflowClient()
    broken = registry.create_model_version(MODEL, "file:///nonexistent/model")
    registry.set_registered_model_alias(MODEL, "champion", broken.version)
    follower = AliasFollower(client.app, poll_s=60)
    assert not follower.check()
    response = client.post("/invocations", json={"inputs": production_home.images[:2].tolist()})
    assert response.status_code == 200 and response.headers["x-lepton-model"] == f"{MODEL}/1"
    samples = parse_exposition(client.get("/metrics").text)
    assert [v for _, v in samples["lepton_serving_model_load_failures_total"]] == [1.0]
    assert [v for _, v in samples["lepton_serving_model_version"]] == [1.0]
    assert client.get("/ping").status_code == 200


def test_metrics_count_requests_versions_classes_and_inputs(
    client: TestClient, production_home: Registry
) -> None:
    images = production_home.images[:40]
    client.post("/invocations", json={"inputs": images.tolist()})
    client.post("/invocations", content=b"[]", headers={"content-type": "application/json"})
    samples = parse_exposition(client.get("/metrics").text)

    def value(name: str, **labels: str) -> float:
        return sum(v for got, v in samples[name] if labels.items() <= got.items())

    assert value("lepton_serving_model_version", model=MODEL) == 1
    assert value("lepton_serving_images_total", version="1") == 40
    assert value("lepton_serving_requests_total", endpoint="invocations", code="200") == 1
    assert value("lepton_serving_rejected_requests_total", reason="no_inputs") == 1
    assert value("lepton_serving_predicted_class_total", version="1") == 40
    assert value("lepton_serving_input_pixel_mean_count") == 40
    means = images.reshape(40, -1).mean(axis=1)
    assert value("lepton_serving_input_pixel_mean_sum") == pytest.approx(means.sum(), rel=1e-6)
    assert value("lepton_serving_request_seconds_count", endpoint="invocations") == 2


def test_no_champion_yet_answers_503_until_one_is_promoted(production_home: Registry) -> None:
    app = ServingApp("not-trained-yet", max_body_bytes=1 << 20)
    assert not AliasFollower(app, poll_s=60).check()
    client = TestClient(app)
    assert client.get("/ping").status_code == 503
    response = client.post("/invocations", json={"inputs": [[0]]})
    assert response.status_code == 503 and "no champion" in response.json()["message"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Load:
    """Client threads posting batches of 8 images until stopped; every answer kept."""

    def __init__(self, url: str, images: np.ndarray, threads: int = 3) -> None:
        self.body = json.dumps({"inputs": images[:8].tolist()}).encode()
        self.url, self.answers, self.stop = url, [], threading.Event()
        self.threads = [threading.Thread(target=self.run) for _ in range(threads)]
        for thread in self.threads:
            thread.start()

    def run(self) -> None:
        while not self.stop.is_set():
            request = urllib.request.Request(
                self.url, self.body, {"Content-Type": "application/json"}
            )
            try:
                with urllib.request.urlopen(request, timeout=30) as response:
                    self.answers.append((response.status, response.headers["X-Lepton-Model"]))
            except Exception as exc:  # any failure is what this test counts
                self.answers.append((getattr(exc, "code", 0), repr(exc)))

    def wait_for(self, version: str, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(model == f"{MODEL}/{version}" for _, model in self.answers[-5:]):
                return
            time.sleep(0.2)
        raise AssertionError(f"v{version} never answered; last: {self.answers[-3:]}")

    def finish(self) -> list[tuple[int, str]]:
        self.stop.set()
        for thread in self.threads:
            thread.join(60)
        return self.answers


@pytest.mark.slow
def test_a_promotion_and_a_rollback_under_load_fail_no_request(
    production_home: Registry, tmp_path: Path
) -> None:
    env = {
        "LEPTON_HOME": str(production_home.home),
        "MLFLOW_TRACKING_URI": production_home.tracking_uri,
        "LEPTON_SERVE_POLL_S": "0.5",
    }
    port = free_port()
    with (tmp_path / "serve.log").open("w") as log:
        server = subprocess.Popen(
            [CLI, "serve", f"--port={port}"],
            env={**os.environ, **env},
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(f"{base}/ping", server, tmp_path / "serve.log")
        load = Load(f"{base}/invocations", production_home.images)
        load.wait_for("1")
        promoted = run_cli(
            "rollback",
            f"--run-dir={tmp_path}",
            "--version=2",
            "--reason=promote v2 under load",
            env=env,
        )
        assert promoted.code == 0, promoted.stderr[-1000:]
        load.wait_for("2")
        rolled_back = run_cli(
            "rollback", f"--run-dir={tmp_path}", "--version=1", "--reason=roll back", env=env
        )
        assert rolled_back.code == 0, rolled_back.stderr[-1000:]
        load.wait_for("1")
        answers = load.finish()
        metrics = urllib.request.urlopen(f"{base}/metrics", timeout=10).read().decode()
    finally:
        server.terminate()
        server.wait(30)
    statuses = Counter(status for status, _ in answers)
    served = [model for _, model in answers]
    print(
        f"{len(answers)} requests under load: {dict(statuses)}; by version {dict(Counter(served))}"
    )
    assert statuses == {200: len(answers)}, [a for a in answers if a[0] != 200][:3]
    switches = [m for i, m in enumerate(served) if i == 0 or served[i - 1] != m]
    assert f"{MODEL}/2" in switches and switches[-1] == f"{MODEL}/1"
    samples = parse_exposition(metrics)
    assert [v for _, v in samples["lepton_serving_model_swaps_total"]] == [3.0]  # load, 2, 1
    assert [v for _, v in samples["lepton_serving_model_version"]] == [1.0]
    by_version = {labels["version"]: v for labels, v in samples["lepton_serving_images_total"]}
    assert by_version["2"] > 0 and by_version["1"] > 0


def wait_until_up(url: str, server: subprocess.Popen, log: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise AssertionError(f"the server exited: {log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise AssertionError(f"the server never came up: {log.read_text()[-2000:]}")
