"""Headless Chromium (Debian's, with its own ChromeDriver) against the stack users start.

Screenshots go to `$LEPTON_TEST_ARTIFACTS/browser` (default: pytest's temporary folder, kept for
the last three sessions); the stack's logs are copied there too. The folder is printed at the end
of the session.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.stack import ADMIN_PASSWORD, ADMIN_USER, Stack

CHROMIUM = Path(os.environ.get("LEPTON_CHROMIUM", "/usr/bin/chromium"))
CHROMEDRIVER = Path(os.environ.get("LEPTON_CHROMEDRIVER", "/usr/bin/chromedriver"))
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


def _require_browser() -> None:
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    if not missing:
        return
    message = f"{', '.join(missing)} not installed (`make browser` installs Debian's packages)"
    if os.environ.get("CI"):
        pytest.fail(message)  # CI must run these: a skip would hide a missing install step
    pytest.skip(message)


@pytest.fixture(scope="session")
def stack(
    tmp_path_factory: pytest.TempPathFactory, artifacts: Path, pytestconfig: pytest.Config
) -> Iterator[Stack]:
    """A champion v1 trained by the CLI, then airflow standalone + mlflow server on it."""
    _require_browser()
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
    _require_browser()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    profile = tempfile.mkdtemp(prefix="lepton-chromium-")
    for argument in (
        "--headless=new",
        "--no-sandbox",  # tests run as root in CI containers
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1440,1000",
        # No calls home: this machine's network is closed, and each refused call costs time.
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-quic",
        "--no-first-run",
        f"--user-data-dir={profile}",
    ):
        options.add_argument(argument)
    driver = webdriver.Chrome(
        options=options,
        service=Service(str(CHROMEDRIVER), log_output=str(artifacts / "chromedriver.log")),
    )
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        if request.node.stash.get(FAILED, False):
            driver.save_screenshot(str(artifacts / f"FAILED-{request.node.name}.png"))
            (artifacts / f"FAILED-{request.node.name}.html").write_text(driver.page_source)
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture
def admin() -> tuple[str, str]:
    return ADMIN_USER, ADMIN_PASSWORD
