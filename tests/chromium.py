"""Headless Chromium (Debian's, with its own ChromeDriver) for the tests that use a browser."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = Path(os.environ.get("LEPTON_CHROMIUM", "/usr/bin/chromium"))
CHROMEDRIVER = Path(os.environ.get("LEPTON_CHROMEDRIVER", "/usr/bin/chromedriver"))


def require_browser() -> None:
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    if not missing:
        return
    message = f"{', '.join(missing)} not installed (`make browser` installs Debian's packages)"
    if os.environ.get("CI"):
        pytest.fail(message)  # CI must run these: a skip would hide a missing install step
    pytest.skip(message)


@contextmanager
def chromium(artifacts: Path) -> Iterator[Any]:
    """A Selenium driver for headless Chromium; ChromeDriver's log goes to `artifacts`."""
    require_browser()
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
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)
