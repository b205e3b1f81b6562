"""Failure alerts: the failing step, its one-line reason, and where to look.

The URL comes from the Airflow Connection `lepton_alert_webhook` (so a secrets backend can hold
it), else `LEPTON_ALERT_WEBHOOK_URL`; it is looked up when a step fails, never at parse time.
It gets a JSON POST (Slack incoming webhooks accept it too: the `text` field is the message).
Without either, nothing is sent. Email or Slack providers' own notifiers can be added to
`on_failure_callback` the same way.
"""

from __future__ import annotations

import json
import logging
import re
import urllib.request
from typing import Any

from airflow.sdk import BaseNotifier

from lepton_airflow.connections import alert_webhook_url
from lepton_airflow.settings import runtime_settings
from lepton_airflow.ui.links import PIPELINE_TASK, mlflow_run_url

log = logging.getLogger(__name__)


def failure_reason(exception: BaseException | None) -> str:
    """The step's own one-line message, without the exit code suffix."""
    if exception is None:
        return "unknown failure"
    text = (
        str(exception).strip().splitlines()[0]
        if str(exception).strip()
        else type(exception).__name__
    )
    return re.sub(r"\s*\[exit \d+\]$", "", text)


def pipeline_run_url(ti: Any) -> str:
    """This DAG run's MLflow pipeline run, else MLflow's front page (pipeline_start may be the
    step that failed)."""
    try:
        run_id = ti.xcom_pull(task_ids=PIPELINE_TASK, key="mlflow_run_id")
        experiment_id = ti.xcom_pull(task_ids=PIPELINE_TASK, key="mlflow_experiment_id")
    except Exception:  # an alert must go out even when XCom cannot be read
        log.warning("could not read the pipeline run for the alert", exc_info=True)
        run_id = experiment_id = None
    if run_id and experiment_id:
        return mlflow_run_url(experiment_id, run_id)
    return runtime_settings().mlflow_ui_url


class WebhookFailureNotifier(BaseNotifier):
    """Posts the failure to `url`, or to the URL configured when the failure happens."""

    def __init__(self, url: str | None = None, timeout: float = 10.0) -> None:
        super().__init__()
        self.url = url
        self.timeout = timeout

    def target(self) -> str | None:
        return self.url or alert_webhook_url(runtime_settings().alert_webhook_url)

    def payload(self, context: Any) -> dict[str, Any]:
        ti = context["ti"]
        reason = failure_reason(context.get("exception"))
        links = {"airflow_log": ti.log_url, "mlflow_run": pipeline_run_url(ti)}
        return {
            "text": (
                f"Lepton: {ti.dag_id} step {ti.task_id} failed: {reason}\n"
                f"Log: {links['airflow_log']}\nMLflow: {links['mlflow_run']}"
            ),
            "dag_id": ti.dag_id,
            "run_id": ti.run_id,
            "step": ti.task_id,
            "try_number": ti.try_number,
            "reason": reason,
            "links": links,
        }

    def notify(self, context: Any) -> None:
        url = self.target()
        if not url:
            return
        body = json.dumps(self.payload(context)).encode()
        request = urllib.request.Request(
            url, data=body, headers={"Content-Type": "application/json"}, method="POST"
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout):
                pass
        except OSError as exc:  # an alert must never turn into a second failure
            # the URL itself is a secret (a Slack webhook URL is its own credential)
            log.warning("could not deliver the failure alert: %s", type(exc).__name__)


def failure_callbacks() -> list[BaseNotifier]:
    """Always attached; whether and where to post is decided when a step fails."""
    return [WebhookFailureNotifier()]
