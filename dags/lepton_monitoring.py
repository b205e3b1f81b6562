"""
### Lepton monitoring: production against the champion's training data

`monitor → drifted → alert, retrain`

* **When**: hourly (`LEPTON_MONITOR_SCHEDULE`).
* **Production**: the scoring runs of the champion's version in the last
  `LEPTON_DRIFT_WINDOW_HOURS`, plus the counters of the serving `/metrics` pages given
  (`LEPTON_SERVING_METRICS_URLS`), plus labelled feedback: landing-zone batches landed since the
  champion was registered, scored by it.
* **Checks** (each against its setting): the mean pixel's shift
  (`LEPTON_DRIFT_MAX_PIXEL_MEAN_SHIFT`), the population stability index of each image's mean
  pixel (`LEPTON_DRIFT_MAX_PSI`), predicted classes against training classes
  (`LEPTON_DRIFT_MAX_PREDICTION_KL`), feedback accuracy against `LEPTON_ACCURACY_FLOOR`.
* **Alert**: the run's note and MLflow (`<experiment>-production`, tag `lepton.alert`) say what
  crossed which threshold; the webhook of `lepton_alert_webhook` gets it. With
  *Retrain on alert* (`LEPTON_RETRAIN_ON_ALERT`), `lepton_training` is triggered: it retrains on
  whatever landed, feedback included.
"""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.sdk import CronTriggerTimetable, Param, dag

from lepton_airflow.monitoring import alert_task, drifted, retrain_if_wanted
from lepton_airflow.notifiers import failure_callbacks
from lepton_airflow.operator_factory import param_value, step_operator
from lepton_airflow.settings import runtime_settings

settings = runtime_settings()


@dag(
    schedule=CronTriggerTimetable(settings.monitor_schedule, timezone="UTC"),
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    dagrun_timeout=timedelta(hours=1),
    default_args={
        "owner": "lepton",
        "retries": 2,
        "retry_delay": timedelta(seconds=30),
        "execution_timeout": timedelta(minutes=45),
        "on_failure_callback": failure_callbacks(),
    },
    params={
        "model_name": Param(
            settings.model_name, type="string", minLength=1, title="Registered model"
        ),
        "metrics_urls": Param(
            settings.serving_metrics_urls,
            type="array",
            items={"type": "string"},
            title="Serving /metrics URLs",
            description="Their counters count as production, besides the scoring runs.",
        ),
        "retrain_on_alert": Param(
            settings.retrain_on_alert,
            type="boolean",
            title="Retrain on alert",
            description="An alert triggers lepton_training.",
        ),
    },
    doc_md=__doc__,
    tags=["lepton", "monitoring"],
)
def lepton_monitoring() -> None:
    monitor = step_operator(
        "monitor",
        model_name=param_value("model_name"),
        metrics_urls=param_value("metrics_urls"),
        run_dir=f"{settings.runs_root}/_monitoring/{{{{ run_id | replace(':', '') | replace('+', '') }}}}",
    )
    gate = drifted(monitor)
    gate >> [alert_task(monitor), retrain_if_wanted(monitor)]


lepton_monitoring()
