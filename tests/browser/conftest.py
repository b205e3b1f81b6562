"""Headless Chromium (Debian's, with its own ChromeDriver) against the stack users start.

Screenshots go to `$LEPTON_TEST_ARTIFACTS/browser` (default: pytest's temporary folder, kept for
the last three sessions); the stack's logs are copied there too. The folder is printed at the end
of the session.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.chromium import chromium, require_browser
from tests.stack import ADMIN_PASSWORD, ADMIN_USER, Stack

SEED_EPOCHS = "8"

FAILED = pytest.StashKey[bool]()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/browser" in str(item.path):
            item.add_marker(pytest.mark.browser)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    report = yield
    if report.when == "call":
        item.stash[FAILED] = report.failed
    return report


@pytest.fixture(scope="session")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = os.environ.get("LEPTON_TEST_ARTIFACTS")
    folder = Path(root) / "browser" if root else tmp_path_factory.mktemp("browser-artifacts")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    folder = getattr(config, "_lepton_browser_artifacts", None)
    if folder:
        terminalreporter.write_line(f"browser test screenshots and stack logs: {folder}")


@pytest.fixture(scope="session")
def stack(
    tmp_path_factory: pytest.TempPathFactory, artifacts: Path, pytestconfig: pytest.Config
) -> Iterator[Stack]:
    """A champion v1 trained by the CLI, then airflow standalone + mlflow server on it."""
    require_browser()
    pytestconfig._lepton_browser_artifacts = artifacts  # type: ignore[attr-defined]
    running = Stack(tmp_path_factory.mktemp("stack"))
    running.seed_champion(SEED_EPOCHS)
    try:
        running.start()
        running.wait_until_ready()
        yield running
    finally:
        running.stop()
        shutil.copytree(running.logs, artifacts / "logs", dirs_exist_ok=True)


@pytest.fixture
def browser(request: pytest.FixtureRequest, artifacts: Path) -> Iterator[object]:
    with chromium(artifacts) as driver:
        yield driver
        if request.node.stash.get(FAILED, False):
            driver.save_screenshot(str(artifacts / f"FAILED-{request.node.name}.png"))
            (artifacts / f"FAILED-{request.node.name}.html").write_text(driver.page_source)


@pytest.fixture
def admin() -> tuple[str, str]:
    return ADMIN_USER, ADMIN_PASSWORD
