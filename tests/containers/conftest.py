"""The full stack: `docker-compose.yml` up on a real Docker engine with Compose v2, shared by
every test here (one `up` for the session). `make test-stack` (part of `make test`) prepares the
engine, Compose and the images; without them these tests skip, except under CI=true, where they
fail: a missing engine must not pass for a green run.

Screenshots and every service's log go to `$LEPTON_TEST_ARTIFACTS/stack` (default: pytest's
temporary folder), printed at the end of the session.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

import tests.airflow_env  # noqa: F401  Airflow's private home, set before Airflow is imported
from tests.containers.airflow_api import AirflowApi
from tests.containers.compose import (
    ComposeStack,
    engine_reachable,
    foreign_stack,
    missing_images,
)

LEPTON_IMAGES = ["lepton/task:0.2.0", "lepton/mlflow:0.2.0", "lepton/airflow:0.2.0"]


def unavailable(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (under CI this is a failure, not a skip)")
    pytest.skip(reason)


def standin_images() -> dict[str, str]:
    """`LEPTON_STANDIN_IMAGES`, as scripts/containers/test.sh sets it: `VAR=image,...`."""
    raw = os.environ.get("LEPTON_STANDIN_IMAGES", "")
    return dict(item.split("=", 1) for item in raw.split(",") if "=" in item)


@pytest.fixture(scope="session")
def artifacts(tmp_path_factory: pytest.TempPathFactory, pytestconfig: pytest.Config) -> Path:
    root = os.environ.get("LEPTON_TEST_ARTIFACTS")
    folder = Path(root) / "stack" if root else tmp_path_factory.mktemp("stack-artifacts")
    folder.mkdir(parents=True, exist_ok=True)
    pytestconfig._lepton_stack_artifacts = folder  # type: ignore[attr-defined]
    return folder


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    folder = getattr(config, "_lepton_stack_artifacts", None)
    if folder:
        terminalreporter.write_line(f"stack screenshots and service logs: {folder}")


@pytest.fixture(scope="session")
def engine() -> None:
    if not engine_reachable():
        unavailable("no Docker engine with Compose v2 reachable; `make test-stack` prepares both")


@pytest.fixture(scope="session")
def stack(
    engine: None, tmp_path_factory: pytest.TempPathFactory, artifacts: Path
) -> Iterator[ComposeStack]:
    standins = standin_images()
    missing = missing_images([*LEPTON_IMAGES, *standins.values()])
    if missing:
        unavailable(f"images not built: {missing}; `make test-stack` builds them")
    if found := foreign_stack():
        pytest.fail(
            f"this engine already holds a Lepton stack ({', '.join(found)}): the test would "
            "share and then delete its volume. Stop it (`make down`), or point DOCKER_HOST at "
            "another engine (`make test-stack` starts one of its own when none is reachable)."
        )
    running = ComposeStack(tmp_path_factory.mktemp("compose"), settings=standins)
    running.write_env()
    try:
        running.up()
        yield running
    finally:
        try:
            running.save_logs(artifacts / "logs")
        finally:
            running.down(volumes=True)


@pytest.fixture(scope="session")
def api(stack: ComposeStack) -> AirflowApi:
    env = stack.env
    return AirflowApi(
        stack.url("AIRFLOW_PORT"), env["AIRFLOW_ADMIN_USER"], env["AIRFLOW_ADMIN_PASSWORD"]
    )


@pytest.fixture(scope="session")
def steps_user(stack: ComposeStack) -> dict[str, str]:
    """MLflow as the steps' plain user (`mlflow-init` created it), through the published port."""
    return stack.mlflow_user("lepton", "MLFLOW_LEPTON_PASSWORD")


@pytest.fixture(scope="session")
def admin_user(stack: ComposeStack) -> dict[str, str]:
    return stack.mlflow_user("admin", "MLFLOW_ADMIN_PASSWORD")
