"""The monitoring DAG's tasks after `monitor`: the alert gate, the alert, the retrain trigger."""

from __future__ import annotations

import logging
from typing import Any

from lepton_airflow.notifiers import FailureAlert

log = logging.getLogger(__name__)
MONITOR_TASK = "monitor"
TRAINING_DAG = "lepton_training"


def _alerting(alert: bool, new_alert: bool, reasons: list[str] | None) -> bool:
    if alert and not new_alert:
        log.info("still drifting, alerted already: %s", "; ".join(reasons or []))
    elif alert:
        log.warning("drift alert: %s", "; ".join(reasons or []))
    else:
        log.info("no drift: nothing crossed its threshold")
    return bool(new_alert)


def drifted(monitor: Any) -> Any:
    """Everything after it runs only when the monitor raised a new alert: once per episode
    (until a check passes again, or the champion changes), not every hour it lasts."""
    from airflow.providers.standard.operators.python import ShortCircuitOperator

    return ShortCircuitOperator(
        task_id="drifted",
        python_callable=_alerting,
        op_args=[monitor.output["alert"], monitor.output["new_alert"], monitor.output["reasons"]],
    )


def drift_text(context: Any) -> str:
    ti = context["ti"]
    model = ti.xcom_pull(task_ids=MONITOR_TASK, key="model_name")
    version = ti.xcom_pull(task_ids=MONITOR_TASK, key="champion_version")
    reasons = ti.xcom_pull(task_ids=MONITOR_TASK, key="reasons") or []
    return (
        f"Lepton: drift alert for {model} v{version} (run {ti.run_id}): {'; '.join(reasons)}"
        f"\nLog: {ti.log_url}"
    )


class DriftAlert(FailureAlert):
    """The failure alert's webhook and delivery rules, with the monitor's reasons."""

    def message(self, context: Any) -> str:
        return drift_text(context)


def _send_alert(**context: Any) -> None:
    text = drift_text(context)
    log.warning("%s", text)
    DriftAlert().notify(context)


def alert_task(monitor: Any) -> Any:
    from airflow.providers.standard.operators.python import PythonOperator

    return PythonOperator(task_id="alert", python_callable=_send_alert, retries=0)


def _wanted(**context: Any) -> bool:
    wanted = bool(context["params"]["retrain_on_alert"])
    log.info("retrain on alert: %s", "yes" if wanted else "no (the form's Retrain on alert)")
    return wanted


def retrain_if_wanted(monitor: Any) -> Any:
    """`retrain_wanted >> retrain`: trigger lepton_training for the model, when the run asks."""
    from airflow.providers.standard.operators.python import ShortCircuitOperator
    from airflow.providers.standard.operators.trigger_dagrun import TriggerDagRunOperator

    wanted = ShortCircuitOperator(task_id="retrain_wanted", python_callable=_wanted)
    retrain = TriggerDagRunOperator(
        task_id="retrain",
        trigger_dag_id=TRAINING_DAG,
        conf={"model_name": "{{ params.model_name }}"},
        wait_for_completion=False,
    )
    wanted >> retrain
    return wanted
