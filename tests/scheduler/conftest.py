"""`airflow standalone` with its real scheduler and triggerer, as users run it (`make ui`).

The stack starts on a weak champion (one epoch, promoted by hand), so the first run's
candidate is better beyond doubt. Its logs go to `$LEPTON_TEST_ARTIFACTS/scheduler` (default:
pytest's temporary folder); the figures each test measured are kept there in `figures.json`.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.stack import Stack

SEED_EPOCHS = "1"
POLL_S = "3"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/scheduler" in str(item.path):
            item.add_marker(pytest.mark.scheduler)
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def scheduler_artifacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = os.environ.get("LEPTON_TEST_ARTIFACTS")
    folder = Path(root) / "scheduler" if root else tmp_path_factory.mktemp("scheduler-artifacts")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(scope="session")
def figures(scheduler_artifacts: Path) -> Iterator[dict[str, Any]]:
    """What the tests measured (seconds, notes), written out at the end: figures, not
    assertions."""
    measured: dict[str, Any] = {}
    yield measured
    (scheduler_artifacts / "figures.json").write_text(json.dumps(measured, indent=2))


@pytest.fixture(scope="module")
def scheduler_stack(
    tmp_path_factory: pytest.TempPathFactory, scheduler_artifacts: Path
) -> Iterator[Stack]:
    running = Stack(
        tmp_path_factory.mktemp("scheduler"),
        extra_env={
            "AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": "True",
            "LEPTON_LANDING_POLL_S": POLL_S,
        },
    )
    running.seed_champion(
        SEED_EPOCHS, "--force-promotion-reason", "a weak seed champion for the test"
    )
    # From here on the steps talk to the MLflow server, as in production (the seed could not:
    # the server was not up yet; it serves the same database).
    running.extra_env["MLFLOW_TRACKING_URI"] = running.mlflow_url
    try:
        running.start()
        running.wait_until_ready()
        yield running
    finally:
        running.stop()
        shutil.copytree(running.logs, scheduler_artifacts / "logs", dirs_exist_ok=True)
