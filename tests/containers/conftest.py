"""Real containers: a Docker engine and the images `make test-containers` built, PostgreSQL, and
the MLflow image with basic auth. Without an engine these tests skip, except under CI=true,
where they fail: a missing engine must not pass for a green run."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

import tests.airflow_env  # noqa: F401  Airflow's private home, set before Airflow is imported
from tests.airflow_env import airflow_db, fresh_runtime_settings  # noqa: F401  fixtures
from tests.containers.stack import (
    MLFLOW_IMAGE,
    TASK_IMAGE,
    ContainerStack,
    engine_reachable,
    image_exists,
)


def unavailable(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (under CI this is a failure, not a skip)")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def engine() -> None:
    if not engine_reachable():
        unavailable("no Docker engine reachable; `make test-containers` starts one")
    missing = [image for image in (TASK_IMAGE, MLFLOW_IMAGE) if not image_exists(image)]
    if missing:
        unavailable(f"images not built: {missing}; `make test-containers` builds them")


@pytest.fixture(scope="session")
def stack(engine: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ContainerStack]:
    root = tmp_path_factory.mktemp("containers")
    running = ContainerStack(root)
    try:
        running.start()
        yield running
    finally:
        for name in running.containers:  # kept with pytest's temporary folders
            logs = subprocess.run(["docker", "logs", name], capture_output=True)
            Path(root, f"{name}.log").write_bytes(logs.stdout + logs.stderr)
        running.stop()
