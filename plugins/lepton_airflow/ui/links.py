"""Extra links from step tasks to MLflow: each step's run, and register's model version.

Airflow 3 computes a link in the worker when the task ends and keeps it as an XCom, so these
read the step's own result fields (pushed one XCom per field) and never call MLflow.
"""

from __future__ import annotations

from typing import Any

from airflow.sdk import BaseOperatorLink
from airflow.sdk.execution_time.xcom import XCom

from lepton_airflow.settings import runtime_settings

PIPELINE_TASK = "pipeline_start"
# Steps whose result names an MLflow run of their own; the others link to the pipeline run.
# Looking up a key a step's result never has would log "XCom not found" in every task log.
OWN_RUN_STEPS = frozenset({"pipeline-start", "train", "evaluate", "score", "monitor"})

# The training pipeline's steps: the others have no pipeline run to link to.
PIPELINE_STEPS = frozenset(
    {"ingest", "check-inputs", "validate", "register", "pipeline-end", *OWN_RUN_STEPS}
)


def _value(ti_key: Any, key: str, task_id: str | None = None) -> Any:
    if task_id is None:
        return XCom.get_value(ti_key=ti_key, key=key)
    return XCom.get_one(key=key, dag_id=ti_key.dag_id, task_id=task_id, run_id=ti_key.run_id)


def mlflow_run_url(experiment_id: str, run_id: str) -> str:
    return f"{runtime_settings().mlflow_ui_url.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"


def mlflow_model_version_url(model_name: str, version: str) -> str:
    return (
        f"{runtime_settings().mlflow_ui_url.rstrip('/')}/#/models/{model_name}/versions/{version}"
    )


class MlflowRunLink(BaseOperatorLink):
    """The step's own MLflow run (train, evaluate), else the pipeline run it belongs to."""

    name = "MLflow run"

    def get_link(self, operator: Any, *, ti_key: Any) -> str:
        run_id = experiment_id = None
        if getattr(operator, "step", None) in OWN_RUN_STEPS:
            run_id = _value(ti_key, "mlflow_run_id")
            experiment_id = _value(ti_key, "mlflow_experiment_id")
        elif getattr(operator, "step", None) not in PIPELINE_STEPS:
            return ""  # a DAG without a pipeline run (scoring, monitoring)
        if not run_id:
            run_id = _value(ti_key, "mlflow_run_id", PIPELINE_TASK)
            experiment_id = _value(ti_key, "mlflow_experiment_id", PIPELINE_TASK)
        return mlflow_run_url(experiment_id, run_id) if run_id and experiment_id else ""


class MlflowModelVersionLink(BaseOperatorLink):
    """The registered model version (register only)."""

    name = "MLflow model version"

    def get_link(self, operator: Any, *, ti_key: Any) -> str:
        if getattr(operator, "step", None) != "register":
            return ""
        name, version = _value(ti_key, "model_name"), _value(ti_key, "version")
        return mlflow_model_version_url(name, version) if name and version else ""


STEP_LINKS = (MlflowRunLink(), MlflowModelVersionLink())
