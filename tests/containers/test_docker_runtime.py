"""`lepton_training` with LEPTON_RUNTIME=docker through Airflow's task runner (`dag.test()`):
every step a container of `lepton/task`, signed in to the MLflow image (basic auth, PostgreSQL
backend) as the steps' plain user, taken from an Airflow Connection.

Three nights: nothing landed (skipped, no alert); a batch (a champion with its lineage); a
corrupt batch (validate fails on its first try, the batch is quarantined, the champion stays,
one alert with the step's reason). Then 40 promotions and rollbacks on PostgreSQL.
"""

from __future__ import annotations

import itertools
import json
import re
from pathlib import Path
from typing import Any

import pytest

from lepton_tasks.settings import get_settings
from tests.airflow_env import load_dag
from tests.containers.stack import MLFLOW_IMAGE, TASK_IMAGE, ContainerStack, ContainerWatcher
from tests.dags.helpers import AlertSink, night, task_states, task_tries, xcom

pytestmark = [pytest.mark.containers, pytest.mark.slow]
LANDING = "/opt/lepton/landing"
CONF = {"epochs": 5}


def use_mlflow(monkeypatch: pytest.MonkeyPatch, credentials: dict[str, str]) -> None:
    """This process's MLflow client, as the given user (MLflow reads these variables)."""
    import mlflow

    for key, value in credentials.items():
        monkeypatch.setenv(key, value)
    mlflow.set_tracking_uri(credentials["MLFLOW_TRACKING_URI"])
    get_settings.cache_clear()


@pytest.fixture
def docker_runtime(
    stack: ContainerStack, monkeypatch: pytest.MonkeyPatch, fresh_runtime_settings
) -> AlertSink:
    """The DAG's configuration for the docker runtime; MLflow and the alert webhook only as
    Airflow Connections, so nothing reaches the steps but through them."""
    import os

    for key in list(os.environ):
        if key.startswith(("LEPTON_", "MLFLOW_", "AIRFLOW_CONN_")):
            monkeypatch.delenv(key)
    docker_host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    alerts = AlertSink()
    steps_user = stack.steps_user
    monkeypatch.setenv(
        "AIRFLOW_CONN_LEPTON_MLFLOW",
        json.dumps(
            {
                "conn_type": "http",
                "host": "127.0.0.1",
                "port": stack.mlflow_port,
                "login": steps_user["MLFLOW_TRACKING_USERNAME"],
                "password": steps_user["MLFLOW_TRACKING_PASSWORD"],
            }
        ),
    )
    monkeypatch.setenv("AIRFLOW_CONN_LEPTON_ALERT_WEBHOOK", alerts.connection)
    for key, value in {
        "RUNTIME": "docker",
        "DOCKER_URL": docker_host,
        "DOCKER_NETWORK": "host",
        "DOCKER_VOLUME": stack.data_volume,
        "DOCKER_DATA_PATH": "/opt/lepton",
        "TRAIN_GPUS": "0",
        "LANDING_URI": LANDING,
        "MLFLOW_UI_URL": stack.mlflow_url,
    }.items():
        monkeypatch.setenv(f"LEPTON_{key}", value)
    return alerts


def test_three_nights_as_containers_against_mlflow_on_postgres(
    stack: ContainerStack,
    docker_runtime: AlertSink,
    airflow_db: Path,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
) -> None:
    alerts = docker_runtime
    dag = load_dag()
    # parsed with no MLflow variables at all: the steps get MLflow from the Connection alone
    train = dag.get_task("train")
    assert not any(k.startswith("MLFLOW_") for k in train.environment)
    assert not any(k.startswith("MLFLOW_") for k in train._private_environment)

    # Night 0: a fresh volume, nothing landed. Skipped, not failed; nothing registered.
    empty = dag.test(logical_date=night(1), run_conf=CONF)
    states = task_states(empty)
    assert empty.state == "success", states
    assert states["ingest"] == "skipped" and states["register"] == "skipped", states
    assert states["pipeline_end"] == "success"
    assert alerts.received == []

    # Night 1: a batch lands (written by the task image's user, as `docker compose cp` would).
    stack.task("simulate-landing", "--landing", LANDING, "--batches", "3", "--take", "1")
    capfd.readouterr()
    with ContainerWatcher(TASK_IMAGE) as watcher:
        first = dag.test(logical_date=night(2), run_conf=CONF)
    assert first.state == "success", task_states(first)
    assert set(task_states(first).values()) == {"success"}
    assert_step_containers_are_confined(watcher.seen)
    assert_task_log_reads_like_the_local_one(capfd.readouterr())

    from mlflow import MlflowClient
    from mlflow.server.auth.client import AuthServiceClient

    use_mlflow(monkeypatch, stack.admin)
    client = MlflowClient()
    champion = client.get_model_version_by_alias("lepton-digits", "champion")
    assert str(champion.version) == "1"
    tags = champion.tags
    assert tags["lepton.dag_run_id"] == first.run_id
    assert tags["lepton.snapshot_id"] == xcom(first, "ingest", "snapshot_id")
    assert tags["lepton.train_run_id"] == xcom(first, "train", "mlflow_run_id")
    pipeline = client.get_run(tags["lepton.pipeline_run_id"])
    assert pipeline.info.status == "FINISHED"
    assert pipeline.data.tags["lepton.dag_run_id"] == first.run_id
    assert client.get_run(tags["lepton.train_run_id"]).data.params["epochs"] == "5"
    # the steps signed in as the plain user: it created (so manages) the model and experiment
    auth = AuthServiceClient(stack.mlflow_url)
    user = stack.steps_user["MLFLOW_TRACKING_USERNAME"]
    assert not auth.get_user(user).is_admin
    owned = auth.get_user_permission(user, "registered_model", "lepton-digits")
    assert owned.permission == "MANAGE"
    # results came from the result file: XCom holds the step's JSON, whatever the log said
    assert str(xcom(first, "register", "version")) == "1"
    assert alerts.received == []

    # Night 2: a corrupt (one-class) batch. Validate fails once, no retry; quarantined.
    stack.task(
        "simulate-landing", "--landing", LANDING, "--batches", "3", "--take", "1",
        "--corrupt", "skewed",
    )  # fmt: skip
    bad = dag.test(logical_date=night(3), run_conf=CONF)
    states = task_states(bad)
    assert bad.state == "failed"
    assert states["validate"] == "failed" and task_tries(bad)["validate"] == 1
    assert {states[s] for s in ("train", "evaluate", "register")} == {"upstream_failed"}
    assert states["pipeline_end"] == "success"
    assert str(client.get_model_version_by_alias("lepton-digits", "champion").version) == "1"
    landed = stack.shell(f"ls {LANDING}; echo ---; ls {LANDING}/_quarantine").split("---")
    assert "skewed" not in landed[0] and "skewed" in landed[1]
    (alert,) = alerts.received
    assert f"step validate failed (run {bad.run_id}, try 1): " in alert["text"]
    reason = alert["text"].split(", try 1): ", 1)[1].splitlines()[0]
    assert reason.startswith("lepton-tasks validate: DataValidationError: ")
    assert "container" not in reason.lower()

    mlflow_container = ContainerWatcher(MLFLOW_IMAGE)
    mlflow_container.poll_once()
    assert_mlflow_server_is_confined(mlflow_container.seen, stack)


def assert_step_containers_are_confined(seen: dict[str, dict[str, Any]]) -> None:
    """Non-root, read-only root, no capabilities, only its volumes, no Docker socket, nothing
    written outside them, the steps' MLflow user in its environment and never the admin."""
    steps = {info["Config"]["Cmd"][0] for info in seen.values()}
    assert {"train", "evaluate", "register"} <= steps, steps
    for info in seen.values():
        step = info["Config"]["Cmd"][0]
        assert info["Config"]["User"] not in ("", "root", "0"), step
        host = info["HostConfig"]
        assert host["ReadonlyRootfs"] is True, step
        assert host["CapDrop"] == ["ALL"] and "no-new-privileges" in host["SecurityOpt"], step
        targets = {m["Destination"]: m["Type"] for m in info["Mounts"]}
        assert targets == {"/opt/lepton": "volume", "/tmp": "tmpfs", "/run/lepton": "volume"}
        assert not any("docker.sock" in str(m.get("Source")) for m in info["Mounts"])
        assert [line for line in info["Diff"] if line.strip()] == [], (step, info["Diff"])
        env = dict(item.split("=", 1) for item in info["Config"]["Env"])
        assert env["MLFLOW_TRACKING_USERNAME"] != "admin", step
        assert env["LEPTON_LOG_TIMESTAMPS"] == "0"


def assert_task_log_reads_like_the_local_one(captured: Any) -> None:
    """One timestamp per line (Airflow's), one line per epoch, no library start-up noise."""
    log = captured.out + captured.err
    epochs = re.findall(r"\] INFO lepton_tasks\.steps\.train: epoch (\d+)/5 ", log)
    assert epochs == ["1", "2", "3", "4", "5"], epochs
    assert not re.search(r"\]\s+(INFO|WARNING)?\s*\d{4}[-/]\d\d[-/]\d\d", log)  # a 2nd stamp
    for noise in ("oneDNN", "cuda", "absl", "git executable", "matplotlib", "━", "pip version"):
        assert noise not in log, noise


def assert_mlflow_server_is_confined(seen: dict[str, dict[str, Any]], stack: ContainerStack):
    (info,) = seen.values()
    assert info["Config"]["User"] not in ("", "root", "0")
    assert info["HostConfig"]["ReadonlyRootfs"] is True
    assert [line for line in info["Diff"] if line.strip()] == [], info["Diff"]
    arguments = " ".join(info["Args"])
    for secret in ("MLFLOW_DB_PASSWORD", "MLFLOW_ADMIN_PASSWORD"):
        assert stack.env[secret] not in arguments, f"{secret} on the command line"


def test_forty_promotions_and_rollbacks_on_postgres(
    stack: ContainerStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    """MLflow keeps tag values in VARCHAR(5000), which PostgreSQL enforces: the history must
    hold any number of events, and a failed alias move must leave no record behind."""
    import mlflow
    from fastapi.testclient import TestClient
    from mlflow import MlflowClient

    from lepton_tasks.registry import describe_model, move_champion, rollback

    use_mlflow(monkeypatch, stack.steps_user)
    client = MlflowClient()
    name = "lepton-history-drill"
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
    app.dependency_overrides[get_user] = lambda: SimpleAuthManagerUser(username="ana", role="admin")
    try:
        page = TestClient(app).get("/").text
    finally:
        app.dependency_overrides.clear()
    assert '<strong id="champion">v1</strong>' in page
    assert page.count("by ops-") == 40


def test_the_serving_service_answers_with_the_champion_and_mlflow_exposes_metrics(
    stack: ContainerStack,
) -> None:
    """The compose `serving` service (task image, read-only root) against the MLflow container:
    it finds the champion the three nights left, answers MLflow's protocol and counts it. And
    MLflow's own /metrics (`--expose-prometheus`) answers its admin, as Prometheus signs in."""
    import base64
    import socket
    import urllib.error
    import urllib.request

    import numpy as np

    from lepton_tasks.serving.metrics import parse_exposition
    from tests.conftest import digits
    from tests.containers.stack import Service, docker, wait_for_http

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    serving = stack.localize_service(Service.load("serving", stack.env))
    serving.spec["command"] = [
        a.replace("--port=5001", f"--port={port}") for a in serving.spec["command"]
    ]
    name = f"lepton-test-serving-{stack.suffix}"
    serving.run(stack.volumes, {}, "-d", "--name", name)
    stack.containers.append(name)
    base = f"http://127.0.0.1:{port}"
    wait_for_http(f"{base}/ping", 180, name)  # 200 only once a champion is loaded
    images = digits()[0][:5]
    request = urllib.request.Request(
        f"{base}/invocations",
        json.dumps({"inputs": images.tolist()}).encode(),
        {"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        assert response.headers["X-Lepton-Model"] == "lepton-digits/1"
        assert np.asarray(json.load(response)["predictions"]).shape == (5, 10)
    with urllib.request.urlopen(f"{base}/metrics", timeout=10) as response:
        samples = parse_exposition(response.read().decode())
    assert [v for _, v in samples["lepton_serving_model_version"]] == [1.0]
    assert sum(v for _, v in samples["lepton_serving_images_total"]) == 5
    info = json.loads(docker("inspect", name))[0]
    assert info["HostConfig"]["ReadonlyRootfs"] is True
    assert info["Config"]["User"] not in ("", "root", "0")

    def metrics_as(user: dict[str, str]) -> int:
        secret = f"{user['MLFLOW_TRACKING_USERNAME']}:{user['MLFLOW_TRACKING_PASSWORD']}"
        request = urllib.request.Request(
            f"{stack.mlflow_url}/metrics",
            headers={"Authorization": f"Basic {base64.b64encode(secret.encode()).decode()}"},
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                assert "mlflow_http_request_total" in response.read().decode()
                return response.status
        except urllib.error.HTTPError as refused:
            return refused.code

    # MLflow's basic-auth app answers /metrics to admins only: Prometheus signs in as admin
    assert metrics_as(stack.admin) == 200
    assert metrics_as(stack.steps_user) == 403
