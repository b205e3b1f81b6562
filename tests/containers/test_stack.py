"""The whole stack as a user runs it: `docker compose up -d --wait`, then Airflow's REST API
(the official client), the Airflow UI in a browser, MLflow's client, the serving endpoint and
Prometheus' API. Every step runs as a `lepton/task` container that the scheduler (later the
Celery worker) starts through the Docker socket, on the compose network, writing to the
`lepton-data` volume.

One stack for the module; the tests run in order, each building on what the one before left
(a champion, a quarantined batch, a restart), as a user's stack does.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.containers.airflow_api import AirflowApi
from tests.containers.compose import ComposeStack, ContainerWatcher
from tests.containers.mlflow_client import mlflow_as

pytestmark = [pytest.mark.containers, pytest.mark.slow]
MODEL = "lepton-digits"
LANDING = "/opt/lepton/landing"
INBOX = "/opt/lepton/inbox"
TRAINING = "lepton_training"
SCORING = "lepton_scoring"
# What the trigger form would send: the DAG's own defaults, stated. A run the landing watcher
# starts has the same params, so whichever comes first trains and the other is unchanged.
CONF = {"source": LANDING, "model_name": MODEL}


@pytest.fixture(scope="module")
def batches(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Dated batches of the real digits, and a skewed (one-class) one, made by the CLI."""
    folder = tmp_path_factory.mktemp("batches")
    subprocess.run(
        [sys.executable, "-m", "lepton_tasks", "simulate-landing", "--landing", str(folder),
         "--batches", "3", "--take", "2", "--corrupt", "skewed"],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    return {path.stem: path for path in folder.glob("*.npz")}


def land(stack: ComposeStack, batch: Path, zone: str) -> None:
    """By the landing protocol: copied in under a dot name, renamed when whole."""
    hidden = f"{zone}/.{batch.name}"
    stack.cp_in(batch, "airflow-scheduler", hidden)
    stack.exec("airflow-scheduler", "mv", hidden, f"{zone}/{batch.name}")


def listing(stack: ComposeStack, folder: str) -> list[str]:
    return stack.exec("airflow-scheduler", "ls", "-A", folder).split()


def trained_in(api: AirflowApi, run_id: str) -> bool:
    return api.states(TRAINING, run_id).get("train") == "success"


def prometheus(stack: ComposeStack, query: str) -> list[dict[str, Any]]:
    url = f"{stack.url('PROMETHEUS_PORT')}/api/v1/query?" + urllib.parse.urlencode({"query": query})
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.load(response)["data"]["result"]


def wait_for(check: Any, timeout: float, what: str, pause: float = 2) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if found := check():
            return found
        time.sleep(pause)
    raise TimeoutError(what)


# --- the stack itself ---------------------------------------------------------------------------


def test_every_service_is_up_on_the_compose_network(stack: ComposeStack) -> None:
    services = stack.services()
    once = {"lepton-data-init", "mlflow-init", "airflow-init"}
    for name, row in services.items():
        if name in once:
            assert (row["State"], row["ExitCode"]) == ("exited", 0), (name, row)
        else:
            assert row["State"] == "running" and row["Health"] == "healthy", (name, row)
    assert set(services) >= {"postgres", "mlflow", "serving", "prometheus", "statsd-exporter"}
    for name in set(services) - {"lepton-data-init"}:
        info = stack.container(name)
        assert set(info["NetworkSettings"]["Networks"]) == {"lepton"}, name
        for bindings in (info["HostConfig"]["PortBindings"] or {}).values():
            assert {b["HostIp"] for b in bindings} == {"127.0.0.1"}, name
        sockets = [m for m in info["Mounts"] if m["Destination"] == "/var/run/docker.sock"]
        assert bool(sockets) == (name in ("airflow-scheduler", "airflow-worker")), name


def test_prometheus_configuration_and_rules_pass_promtool(stack: ComposeStack) -> None:
    config = stack.exec(
        "prometheus", "promtool", "check", "config", "/etc/prometheus/prometheus.yml"
    )
    assert "SUCCESS" in config
    rules = stack.exec("prometheus", "promtool", "check", "rules", "/etc/prometheus/rules.yml")
    assert re.search(r"SUCCESS: \d+ rules found", rules), rules


def test_the_airflow_ui_logs_in_in_a_real_browser(stack: ComposeStack, artifacts: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as shown
    from selenium.webdriver.support.ui import WebDriverWait

    from tests.chromium import chromium

    env = stack.env
    # the address the stack announces (AIRFLOW__API__BASE_URL): its login redirects there
    ui = f"http://localhost:{stack.ports['AIRFLOW_PORT']}"
    with chromium(artifacts) as browser:
        browser.get(ui + "/")
        WebDriverWait(browser, 60).until(shown.presence_of_element_located((By.ID, "username")))
        browser.find_element(By.ID, "username").send_keys(env["AIRFLOW_ADMIN_USER"])
        password = browser.find_element(By.ID, "password")
        password.send_keys(env["AIRFLOW_ADMIN_PASSWORD"])
        password.submit()
        WebDriverWait(browser, 60).until(
            lambda b: "/auth/login" not in b.current_url and "Dags" in b.page_source
        )
        browser.get(f"{ui}/dags/{TRAINING}")
        WebDriverWait(browser, 60).until(lambda b: TRAINING in b.page_source)
        browser.save_screenshot(str(artifacts / "01-airflow-ui-signed-in.png"))
    assert (artifacts / "01-airflow-ui-signed-in.png").stat().st_size > 10_000


# --- training through the REST API ------------------------------------------------------------


def test_unpausing_runs_the_missed_night_which_skips_an_empty_landing_zone(
    api: AirflowApi,
) -> None:
    api.unpause(TRAINING)
    scheduled = wait_for(
        lambda: [r for r in api.run_ids(TRAINING) if r.startswith("scheduled__")],
        120,
        "no scheduled run after unpausing",
    )
    run = api.wait(TRAINING, scheduled[0])
    states = api.states(TRAINING, scheduled[0])
    assert run.state.value == "success", states
    assert states["ingest"] == "skipped" and states["register"] == "skipped", states
    api.wait_for_idle(TRAINING)


def test_a_landed_batch_and_a_triggered_run_make_champion_v1_in_task_containers(
    stack: ComposeStack,
    api: AirflowApi,
    batches: dict[str, Path],
    steps_user: dict[str, str],
) -> None:
    land(stack, batches["batch-2026-01-01"], LANDING)
    with ContainerWatcher() as watcher:
        triggered = api.trigger(TRAINING, CONF)
        assert api.wait(TRAINING, triggered).state.value == "success", api.states(
            TRAINING, triggered
        )
        api.wait_for_idle(TRAINING)  # the run the landing watcher started, too

    with mlflow_as(steps_user) as client:
        versions = client.search_model_versions(f"name = '{MODEL}'")
        champion = client.get_model_version_by_alias(MODEL, "champion")
        lineage = champion.tags
        pipeline = client.get_run(lineage["lepton.pipeline_run_id"])
        train_run = client.get_run(lineage["lepton.train_run_id"])
    assert [v.version for v in versions] == ["1"] and str(champion.version) == "1"
    # one run trained (the triggered one, or the landing watcher's if it came first); the
    # other found the same data, params and code
    trainer = lineage["lepton.dag_run_id"]
    assert trained_in(api, trainer)
    others = [r for r in api.run_ids(TRAINING) if r != trainer and not r.startswith("scheduled")]
    assert others, "the landing watcher started no run"
    for other in others:
        note = api.run(TRAINING, other).note or ""
        assert note.startswith("Unchanged since v1"), (other, note)
    assert pipeline.info.status == "FINISHED"
    assert pipeline.data.tags["lepton.dag_run_id"] == trainer
    assert train_run.data.tags["mlflow.user"] == "lepton"  # the plain user, not the admin

    # every step of that run was a task container the scheduler started, on the compose
    # network, hardened, writing only to its volumes
    scheduler = stack.container("airflow-scheduler")["Config"]["Hostname"]
    tasks = api.tasks(TRAINING, trainer)
    assert {ti.hostname for ti in tasks.values() if ti.state.value == "success"} == {scheduler}
    assert {"pipeline-start", "ingest", "validate", "train", "evaluate", "register"} <= (
        watcher.steps()
    )
    for info in watcher.seen.values():
        assert_step_container_is_confined(info)
    # ...and what they wrote is on the shared volume, seen from the scheduler
    assert {"ingest", "validate", "train"} <= set(listing(stack, lineage["lepton.run_dir"]))
    assert_log_reads_like_the_local_one(api.log(TRAINING, trainer, "train"))

    # the Lepton page, served by the stack's api-server from the Airflow image
    page = api.page("/lepton/")
    assert '<strong id="champion">v1</strong>' in page, page[:2000]


def assert_step_container_is_confined(info: dict[str, Any]) -> None:
    step = info["Config"]["Cmd"][0]
    assert info["Config"]["User"] == "10001:10001", step  # the task image's user
    host = info["HostConfig"]
    assert host["ReadonlyRootfs"] is True, step
    assert host["CapDrop"] == ["ALL"] and "no-new-privileges" in host["SecurityOpt"], step
    assert set(info["NetworkSettings"]["Networks"]) == {"lepton"}, step
    targets = {m["Destination"]: (m["Type"], m.get("Name")) for m in info["Mounts"]}
    assert targets["/opt/lepton"] == ("volume", "lepton-data"), step
    assert set(targets) == {"/opt/lepton", "/tmp", "/run/lepton"}, step
    assert [line for line in info["Diff"] if line.strip()] == [], (step, info["Diff"])
    env = dict(item.split("=", 1) for item in info["Config"]["Env"])
    assert env["MLFLOW_TRACKING_USERNAME"] == "lepton", step
    assert env["MLFLOW_TRACKING_URI"] == "http://mlflow:5000", step


def assert_log_reads_like_the_local_one(log: str) -> None:
    """One line per epoch, no library start-up noise, whatever the CPU."""
    epochs = re.findall(r"INFO lepton_tasks\.steps\.train: epoch (\d+)/\d+ ", log)
    assert epochs and epochs == [str(n) for n in range(1, len(epochs) + 1)], log[-2000:]
    for noise in ("oneDNN", "absl", "cuda", "git executable", "━", "pip version"):
        assert noise not in log, noise


# --- the champion at work -------------------------------------------------------------------


def test_serving_answers_with_the_new_champion_and_prometheus_scrapes_it(
    stack: ComposeStack, admin_user: dict[str, str], steps_user: dict[str, str]
) -> None:
    from mlflow.pyfunc.scoring_server.client import ScoringServerClient

    from lepton_tasks.serving.metrics import parse_exposition
    from tests.conftest import digits

    base = stack.url("SERVING_PORT")

    def served_version() -> float | None:
        with urllib.request.urlopen(f"{base}/metrics", timeout=10) as response:
            samples = parse_exposition(response.read().decode())
        return next((v for _, v in samples["lepton_serving_model_version"] if v), None)

    # serving follows the alias (polled every LEPTON_SERVE_POLL_S = 10 s)
    assert wait_for(served_version, 90, "serving never loaded the champion") == 1.0
    client = ScoringServerClient("127.0.0.1", stack.ports["SERVING_PORT"])
    images = digits()[0][:5]
    predictions = client.invoke(images).get_predictions()
    assert predictions.shape == (5, 10)

    # Prometheus scraped serving, MLflow (as its admin) and Airflow's statsd metrics
    def targets_up() -> dict[str, str] | None:
        found = {r["metric"]["job"]: r["value"][1] for r in prometheus(stack, "up")}
        wanted = {"lepton-serving", "mlflow", "airflow"}
        return found if wanted <= set(found) and {found[j] for j in wanted} == {"1"} else None

    wait_for(targets_up, 90, "Prometheus targets not all up")
    wait_for(
        lambda: prometheus(stack, 'airflow_ti_finish{dag_id="lepton_training",task_id="train"}'),
        90,
        "Airflow's statsd metrics never reached Prometheus",
    )
    assert metrics_status(stack, admin_user) == 200
    assert metrics_status(stack, steps_user) == 403  # MLflow's /metrics: admins only


def metrics_status(stack: ComposeStack, user: dict[str, str]) -> int:
    import base64
    import urllib.error

    secret = f"{user['MLFLOW_TRACKING_USERNAME']}:{user['MLFLOW_TRACKING_PASSWORD']}"
    request = urllib.request.Request(
        f"{stack.url('MLFLOW_PORT')}/metrics",
        headers={"Authorization": f"Basic {base64.b64encode(secret.encode()).decode()}"},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            assert "mlflow_http_request_total" in response.read().decode()
            return response.status
    except urllib.error.HTTPError as refused:
        return refused.code


def test_a_batch_in_the_scoring_inbox_is_scored_by_the_champion(
    stack: ComposeStack, api: AirflowApi, batches: dict[str, Path], tmp_path: Path
) -> None:
    import pandas as pd

    land(stack, batches["batch-2026-01-02"], INBOX)
    api.unpause(SCORING)  # its inbox watcher starts the run
    started = wait_for(lambda: api.run_ids(SCORING), 120, "the inbox watcher started no run")
    run = api.wait(SCORING, started[0])
    assert run.state.value == "success", api.states(SCORING, started[0])
    moved = stack.exec("airflow-scheduler", "find", f"{INBOX}/_scored", "-type", "f").split()
    assert [Path(p).name for p in moved] == ["batch-2026-01-02.npz"], moved
    found = stack.exec(
        "airflow-scheduler", "find", f"/opt/lepton/runs/_predictions/{MODEL}", "-name", "*.parquet"
    ).split()
    assert len(found) == 1, found
    stack.cp_out("airflow-scheduler", found[0], tmp_path / "scored.parquet")
    scored = pd.read_parquet(tmp_path / "scored.parquet")
    assert len(scored) == 599 and set(scored["model_version"].astype(str)) == {"1"}
    assert scored["label"].notna().all()
    api.wait_for_idle(SCORING)


def test_a_corrupt_batch_is_quarantined_and_the_champion_stays(
    stack: ComposeStack,
    api: AirflowApi,
    batches: dict[str, Path],
    steps_user: dict[str, str],
) -> None:
    land(stack, batches["batch-2026-01-03-skewed"], LANDING)
    bad = api.trigger(TRAINING, CONF)
    api.wait(TRAINING, bad)
    api.wait_for_idle(TRAINING)
    failed = [r for r in api.run_ids(TRAINING) if api.run(TRAINING, r).state.value == "failed"]
    assert failed, "no run failed on the skewed batch"
    states = api.states(TRAINING, failed[0])
    assert states["validate"] == "failed" and states["pipeline_end"] == "success", states
    assert api.tasks(TRAINING, failed[0])["validate"].try_number == 1  # bad data: no retry
    assert "batch-2026-01-03-skewed.npz" not in listing(stack, LANDING)
    assert any("skewed" in name for name in listing(stack, f"{LANDING}/_quarantine"))
    with mlflow_as(steps_user) as client:
        assert str(client.get_model_version_by_alias(MODEL, "champion").version) == "1"


# --- restart, Celery, a fault -----------------------------------------------------------------


def test_down_and_up_on_celery_keeps_everything_and_the_same_data_is_unchanged(
    stack: ComposeStack, api: AirflowApi, steps_user: dict[str, str]
) -> None:
    """`docker compose down` (volumes kept), then up again with the Celery executor and Redis:
    runs, champion, promotion history, landing zone and quarantine are still there."""
    from lepton_tasks.registry import describe_model

    runs_before = set(api.run_ids(TRAINING))
    with mlflow_as(steps_user):
        history_before = describe_model(MODEL).promotion_history
    stack.down()
    # as the README says: the executor and the profile in .env, then up again
    stack.set_env(AIRFLOW_EXECUTOR="CeleryExecutor", COMPOSE_PROFILES="celery")
    stack.up()
    api.connect()
    worker_info = stack.container("airflow-worker")
    assert any(m["Destination"] == "/var/run/docker.sock" for m in worker_info["Mounts"])

    assert runs_before <= set(api.run_ids(TRAINING))
    with mlflow_as(steps_user) as client:
        assert str(client.get_model_version_by_alias(MODEL, "champion").version) == "1"
        assert describe_model(MODEL).promotion_history == history_before
    assert "batch-2026-01-01.npz" in listing(stack, LANDING)
    assert any("skewed" in name for name in listing(stack, f"{LANDING}/_quarantine"))

    again = api.trigger(TRAINING, CONF)
    run = api.wait(TRAINING, again)
    assert run.state.value == "success"
    assert run.note.startswith("Unchanged since v1"), run.note
    worker = worker_info["Config"]["Hostname"]
    ran = [ti for ti in api.tasks(TRAINING, again).values() if ti.state.value == "success"]
    assert ran and {ti.hostname for ti in ran} == {worker}  # the Celery worker ran them
    api.wait_for_idle(TRAINING)


def test_mlflow_restarted_while_train_runs_the_run_still_succeeds_with_nothing_half_registered(
    stack: ComposeStack,
    api: AirflowApi,
    batches: dict[str, Path],
    steps_user: dict[str, str],
) -> None:
    land(stack, batches["batch-2026-01-02"], LANDING)  # new data: the next run trains
    api.trigger(TRAINING, CONF)  # or the run the landing watcher starts: whichever is first
    training = wait_for(lambda: api.run_with_task_in(TRAINING, "train", "running"), 600,
                        "no run reached train", pause=1)  # fmt: skip
    stack.restart("mlflow")
    back = stack.container("mlflow")["State"]["StartedAt"]
    run = api.wait(TRAINING, training, timeout=1200)
    states = api.states(TRAINING, training)
    assert run.state.value == "success", states
    assert states["train"] == "success" and states["register"] == "success", states
    train = api.tasks(TRAINING, training)["train"]
    # train was at work across the restart: it ended after MLflow was back
    assert train.end_date.isoformat() > back[:26], (train.end_date, back)
    print(f"train ended after try {train.try_number} (MLflow back at {back})")
    api.wait_for_idle(TRAINING)

    with mlflow_as(steps_user) as client:
        versions = client.search_model_versions(f"name = '{MODEL}'")
        champion = client.get_model_version_by_alias(MODEL, "champion")
    assert sorted(int(v.version) for v in versions) == [1, 2]
    for version in versions:  # each version whole: ready, with its lineage
        assert version.status == "READY", version
        assert {"lepton.dag_run_id", "lepton.train_run_id", "lepton.snapshot_id"} <= set(
            version.tags
        ), version.tags
    assert str(champion.version) in {"1", "2"}
