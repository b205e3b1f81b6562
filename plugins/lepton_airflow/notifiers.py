"""Failure alerts: the failing step, its one-line reason, and where to look.

Sent by the Slack provider's `SlackWebhookNotifier` through the Airflow Connection
`lepton_alert_webhook` (type `slackwebhook`, the webhook URL as its password), so a secrets
backend can hold the URL, which is a credential itself. The Connection is looked up when a
step fails, never at parse time; without it, nothing is sent.
"""

from __future__ import annotations

import logging
import os
import re
from typing import Any

from airflow.providers.slack.notifications.slack_webhook import SlackWebhookNotifier

from lepton_airflow.connections import ALERT_CONN_ID, connection, connection_url
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


def alert_text(context: Any) -> str:
    """The message: DAG, step, run and try, the step's one-line reason, and where to look."""
    ti = context["ti"]
    reason = failure_reason(context.get("exception"))
    return (
        f"Lepton: {ti.dag_id} step {ti.task_id} failed (run {ti.run_id}, try {ti.try_number}): "
        f"{reason}\nLog: {ti.log_url}\nMLflow: {pipeline_run_url(ti)}"
    )


class FailureAlert(SlackWebhookNotifier):
    """The provider's Slack webhook notifier, with Lepton's message, sent only when the
    `lepton_alert_webhook` Connection exists; a delivery failure never fails anything else."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(slack_webhook_conn_id=ALERT_CONN_ID, text="", timeout=10, **kwargs)

    def message(self, context: Any) -> str:
        return alert_text(context)

    def notify(self, context: Any) -> None:
        legacy_url = _legacy_url()
        if legacy_url is None and connection(ALERT_CONN_ID) is None:
            return
        self.text = self.message(context)
        try:
            if legacy_url:
                from slack_sdk import WebhookClient  # the client the provider's hook wraps

                WebhookClient(legacy_url, timeout=10).send(text=self.text)
            else:
                super().notify(context)
        except Exception as exc:  # an alert must never turn into a second failure
            # the URL itself is a secret (a Slack webhook URL is its own credential)
            log.warning("could not deliver the alert: %s", type(exc).__name__)


def _legacy_url() -> str | None:
    """The webhook URL of an earlier release's configuration, still honoured with a warning:
    a `lepton_alert_webhook` Connection with the URL as its host or `extra.url` (no password),
    or LEPTON_ALERT_WEBHOOK_URL without any Connection."""
    conn = connection(ALERT_CONN_ID)
    if conn is not None:
        if (conn.password or "").strip():
            return None
        log.warning(
            "Connection %s holds the webhook URL outside its password: make it type "
            "slackwebhook with the URL as password",
            ALERT_CONN_ID,
        )
        return conn.extra_dejson.get("url") or connection_url(conn)
    url = os.environ.get("LEPTON_ALERT_WEBHOOK_URL")
    if url:
        log.warning(
            "LEPTON_ALERT_WEBHOOK_URL is deprecated: define the Connection %s", ALERT_CONN_ID
        )
    return url or None


def failure_callbacks() -> list[Any]:
    """Always attached; whether and where to post is decided when a step fails."""
    return [FailureAlert()]
