"""What a user does in the browser: trigger lepton_training, read MLflow, roll the champion back.

One journey, in order, against `airflow standalone` and `mlflow server` (see conftest.py), each
screen kept as a numbered screenshot.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from selenium.common.exceptions import (
    ElementClickInterceptedException,
    StaleElementReferenceException,
    WebDriverException,
)
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import WebDriverWait

from tests.stack import Stack

pytestmark = [pytest.mark.browser, pytest.mark.slow]

DAG_ID = "lepton_training"
EPOCHS = "12"  # not the default (empty: sized to the data)
FORCE_REASON = "browser test: promote from the trigger form"
ROLLBACK_REASON = "browser test: back to the CLI-trained model"
RUN_TIMEOUT = 900  # one run of the DAG takes about 100 s on two cores
LEPTON_FRAME = "iframe[src*='/lepton/']"


class Journey:
    """The browser plus the habits of a careful user: wait for what you expect, then look.

    Airflow's and MLflow's pages are React apps that re-render while they poll, so an element
    found a moment ago may be gone: every read and action goes by locator and is retried until
    it lands, instead of holding on to elements.
    """

    def __init__(self, driver: WebDriver, stack: Stack, shots: Path) -> None:
        self.driver = driver
        self.stack = stack
        self.shots = shots
        self.count = 0

    def wait(
        self, condition: Callable[[WebDriver], Any], timeout: float = 30, what: str = ""
    ) -> Any:
        return WebDriverWait(
            self.driver,
            timeout,
            ignored_exceptions=(StaleElementReferenceException, ElementClickInterceptedException),
        ).until(condition, message=what)

    def find(self, by: str, value: str, timeout: float = 30) -> WebElement:
        return self.wait(ec.visibility_of_element_located((by, value)), timeout, f"{by}={value}")

    def text(self, by: str, value: str, timeout: float = 30) -> str:
        return self.wait(lambda d: d.find_element(by, value).text or False, timeout, value)

    def attribute(self, by: str, value: str, name: str, timeout: float = 30) -> str:
        return self.wait(lambda d: d.find_element(by, value).get_attribute(name), timeout, value)

    def click(self, by: str, value: str, timeout: float = 30) -> None:
        def attempt(driver: WebDriver) -> bool:
            element = driver.find_element(by, value)
            if not (element.is_displayed() and element.is_enabled()):
                return False
            driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", element)
            element.click()
            return True

        self.wait(attempt, timeout, f"click {value}")

    def type_into(self, by: str, value: str, text: str) -> None:
        """Replace a React-controlled input's value the way a user does: select all, type."""

        def attempt(driver: WebDriver) -> bool:
            element = driver.find_element(by, value)
            driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", element)
            element.send_keys(Keys.CONTROL, "a")
            element.send_keys(Keys.DELETE)
            element.send_keys(text)
            return element.get_attribute("value") == text

        self.wait(attempt, 20, f"type {text!r} into {value}")

    def body_text(self) -> str:
        return self.driver.find_element(By.TAG_NAME, "body").text

    def shot(self, name: str) -> Path:
        self.count += 1
        path = self.shots / f"{self.count:02d}-{name}.png"
        self.driver.save_screenshot(str(path))
        return path


@pytest.fixture
def journey(browser: WebDriver, stack: Stack, artifacts: Path) -> Journey:
    return Journey(browser, stack, artifacts)


def test_trigger_follow_to_mlflow_and_roll_back(journey: Journey, admin: tuple[str, str]) -> None:
    log_in(journey, *admin)
    open_dag(journey)
    run_id = trigger_with_params(journey)
    wait_for_success(journey, run_id)
    check_task_log(journey, run_id)
    follow_link_to_mlflow(journey, run_id)
    roll_back_on_lepton_page(journey, run_id)


def log_in(j: Journey, user: str, password: str) -> None:
    j.driver.get(j.stack.airflow_url + "/")
    j.wait(ec.url_contains("/auth/login"), what="redirect to the login page")
    j.type_into(By.NAME, "username", user)
    j.type_into(By.NAME, "password", password)
    j.shot("login")
    j.click(By.CSS_SELECTOR, "button[type=submit]")
    j.wait(lambda d: "/auth/login" not in d.current_url, what="leave the login page")
    j.find(By.XPATH, "//h1[normalize-space()='Welcome'] | //h2[normalize-space()='Welcome']")
    j.shot("home")


def open_dag(j: Journey) -> None:
    """The DAG list shows lepton_training once the dag-processor has parsed it."""
    deadline = time.monotonic() + 180
    while True:
        j.driver.get(j.stack.airflow_url + "/dags")
        try:
            j.find(By.LINK_TEXT, DAG_ID, timeout=15)
            break
        except WebDriverException:
            if time.monotonic() > deadline:
                raise
    j.shot("dag-list")
    j.click(By.LINK_TEXT, DAG_ID)
    j.wait(ec.url_to_be(f"{j.stack.airflow_url}/dags/{DAG_ID}"), what="the DAG page")
    j.find(By.CSS_SELECTOR, "button[aria-label='Trigger Dag']")
    j.shot("dag-page")


def trigger_with_params(j: Journey) -> str:
    j.click(By.CSS_SELECTOR, "button[aria-label='Trigger Dag']")
    # The form is built from the DAG's Params: one field per param, with its title and default.
    default_source = j.attribute(By.ID, "element_source", "value")
    assert default_source.endswith("/landing"), "default source: the landing zone"
    j.type_into(By.ID, "element_source", "sklearn:digits")
    j.type_into(By.NAME, "element_epochs", EPOCHS)
    switch = (By.ID, "switch:element_force_promotion")
    j.click(*switch)
    j.wait(
        lambda d: d.find_element(*switch).get_attribute("data-state") == "checked",
        10,
        "force promotion on",
    )
    j.type_into(By.ID, "element_force_reason", FORCE_REASON)
    trigger = (
        By.XPATH,
        "//*[contains(@class, 'chakra-dialog__content')]//button[normalize-space()='Trigger']",
    )
    j.wait(lambda d: d.find_element(*trigger).is_enabled(), 10, "the form is valid")
    j.driver.execute_script(
        "arguments[0].scrollIntoView({block: 'center'})", j.driver.find_element(*trigger)
    )
    j.shot("trigger-form")
    j.click(*trigger)
    j.wait(ec.url_contains(f"/dags/{DAG_ID}/runs/manual__"), what="the new run's page")
    run_id = j.driver.current_url.rsplit("/runs/", 1)[1].split("/")[0]
    j.shot("run-queued")
    return run_id


def run_state(j: Journey) -> str:
    return j.text(By.CSS_SELECTOR, "[data-testid=state-badge]").strip().lower()


def wait_for_success(j: Journey, run_id: str) -> None:
    deadline = time.monotonic() + RUN_TIMEOUT
    state = ""
    while time.monotonic() < deadline:
        state = run_state(j)
        if state in {"success", "failed"}:
            break
        time.sleep(5)
        j.driver.refresh()
    j.shot(f"run-{state or 'timeout'}")
    assert state == "success", (
        f"run {run_id} ended {state or 'not in time'}; api-server and scheduler log:\n"
        + j.stack.log_tail("airflow", 6000)
    )
    tasks = j.body_text()
    for task in ("pipeline_start", "ingest", "validate", "train", "evaluate", "register"):
        assert task in tasks


def open_task(j: Journey, run_id: str, task_id: str, tab: str = "") -> None:
    j.driver.get(f"{j.stack.airflow_url}/dags/{DAG_ID}/runs/{run_id}/tasks/{task_id}{tab}")
    j.find(By.XPATH, f"//h2[normalize-space()='{task_id}']")


def check_task_log(j: Journey, run_id: str) -> None:
    """The train task's log: the command, then one line per epoch, no progress bars."""
    open_task(j, run_id, "train")
    j.wait(lambda _: f"epoch {EPOCHS}/{EPOCHS}" in j.body_text(), 60, "the last epoch's log line")
    log = j.body_text()
    j.shot("train-log")
    assert "running: lepton-tasks train" in log
    epochs = re.findall(rf"epoch (\d+)/{EPOCHS} accuracy=", log)
    assert epochs == [str(n) for n in range(1, int(EPOCHS) + 1)], epochs
    assert "━" not in log and "\r" not in log


def follow_link_to_mlflow(j: Journey, run_id: str) -> None:
    """Details tab -> "MLflow run" (a new tab) -> the train run's metrics and params."""
    open_task(j, run_id, "train", "/details")
    href = j.attribute(By.LINK_TEXT, "MLflow run", "href")
    assert href.startswith(j.stack.mlflow_url + "/#/experiments/"), href
    j.shot("train-details-extra-link")
    airflow_tab = j.driver.current_window_handle
    j.click(By.LINK_TEXT, "MLflow run")
    j.wait(lambda d: len(d.window_handles) == 2, 10, "MLflow opens in a new tab")
    j.driver.switch_to.window(next(h for h in j.driver.window_handles if h != airflow_tab))
    j.wait(lambda _: "val_accuracy" in j.body_text(), 90, "the run's metrics in MLflow")
    page = j.body_text()
    metrics = (By.XPATH, "(//*[starts-with(normalize-space(text()), 'Metrics (')])[last()]")
    j.wait(
        lambda d: d.execute_script(
            "arguments[0].scrollIntoView({block: 'start'}); return true", d.find_element(*metrics)
        ),
        what="scroll to the metrics",
    )
    j.shot("mlflow-train-run")
    assert re.search(r"Metrics \(\d+\)", page), page[:2000]
    for metric in ("accuracy", "loss", "val_loss", "best_val_accuracy", "images_per_second"):
        assert re.search(rf"^{metric}\n\d", page, re.MULTILINE), f"metric {metric} missing"
    # The param typed into the trigger form reached the training run.
    assert re.search(rf"^epochs\n{EPOCHS}$", page, re.MULTILINE), "epochs param"
    assert run_id in page  # "Parent run": the DAG run's pipeline run
    j.driver.close()
    j.driver.switch_to.window(airflow_tab)

    # register links to the model version it registered.
    open_task(j, run_id, "register", "/details")
    version_link = j.attribute(By.LINK_TEXT, "MLflow model version", "href")
    assert version_link == f"{j.stack.mlflow_url}/#/models/lepton-digits/versions/2"


def roll_back_on_lepton_page(j: Journey, run_id: str) -> None:
    """Browse -> Lepton models: the forced v2 is champion; roll back to v1, see it change."""
    j.driver.get(j.stack.airflow_url + "/")
    j.click(By.CSS_SELECTOR, "button[aria-label='Browse']")
    j.click(By.LINK_TEXT, "Lepton models")

    def enter_page() -> None:  # the page lives in an iframe of Airflow's UI
        j.driver.switch_to.default_content()
        j.driver.switch_to.frame(j.find(By.CSS_SELECTOR, LEPTON_FRAME))

    def shot(name: str) -> None:  # screenshots show the whole window, Airflow's menu included
        j.driver.switch_to.default_content()
        j.shot(name)
        enter_page()

    enter_page()
    j.wait(lambda d: d.find_element(By.ID, "champion").text == "v2", 30, "champion v2")
    row = j.text(By.ID, "version-2")
    assert run_id in row and "forced: " + FORCE_REASON in row, row
    assert "outside Airflow" in j.text(By.ID, "version-1")  # v1 came from the CLI
    shot("lepton-page-champion-v2")

    j.click(By.CSS_SELECTOR, "#rollback select[name=version] option[value='1']")
    j.type_into(By.CSS_SELECTOR, "#rollback input[name=reason]", ROLLBACK_REASON)
    shot("lepton-page-rollback-form")
    j.click(By.CSS_SELECTOR, "#rollback button[type=submit]")

    j.wait(lambda d: d.find_element(By.ID, "champion").text == "v1", 30, "champion v1")
    assert j.text(By.ID, "notice") == "Champion is now v1 (was v2)."
    history = j.text(By.ID, "history")
    assert history.splitlines()[0].endswith(f"v1 (was v2) by admin: rollback: {ROLLBACK_REASON}")
    shot("lepton-page-champion-v1")
    assert_registry_champion(j.stack, "1", ROLLBACK_REASON)

    # Links out of Airflow's sandboxed frame: MLflow's model version opens in a new tab...
    airflow_tab = j.driver.current_window_handle
    j.click(By.CSS_SELECTOR, "#version-2 a[data-open='new']")
    j.wait(lambda d: len(d.window_handles) == 2, 10, "MLflow opens in a new tab")
    j.driver.switch_to.window(next(h for h in j.driver.window_handles if h != airflow_tab))
    j.wait(ec.url_contains("/#/models/lepton-digits/versions/2"), what="the model version")
    j.wait(lambda _: "Version 2" in j.body_text(), 60, "MLflow's model version page")
    j.shot("mlflow-model-version-2")
    j.driver.close()
    j.driver.switch_to.window(airflow_tab)
    # ...and a version's DAG run opens in Airflow itself, not inside the frame.
    enter_page()
    href = j.attribute(By.CSS_SELECTOR, "#version-2 a[data-open='top']", "href")
    assert href.endswith(f"/dags/{DAG_ID}/runs/{run_id}"), href
    j.click(By.CSS_SELECTOR, "#version-2 a[data-open='top']")
    j.driver.switch_to.default_content()
    j.wait(ec.url_contains(f"/dags/{DAG_ID}/runs/{run_id}"), what="the DAG run in Airflow")
    assert not j.driver.find_elements(By.CSS_SELECTOR, LEPTON_FRAME)
    j.find(By.CSS_SELECTOR, "[data-testid=state-badge]")
    j.shot("dag-run-from-lepton-page")


def assert_registry_champion(stack: Stack, version: str, reason: str) -> None:
    """The page is not the source of truth: ask MLflow itself, from outside the stack."""
    code = (
        "import json, mlflow\n"
        "from lepton_tasks.registry import promotion_history\n"
        "c = mlflow.MlflowClient()\n"
        "m = c.get_registered_model('lepton-digits')\n"
        "print(json.dumps({'champion': m.aliases['champion'],"
        " 'history': promotion_history(m.tags)}))\n"
    )
    out = stack.run_cli("registry-check", [str(stack.python), "-c", code])
    registry = json.loads(out.strip().splitlines()[-1])
    assert str(registry["champion"]) == version
    last = registry["history"][-1]
    assert last["by"] == "admin" and last["reason"] == f"rollback: {reason}"
