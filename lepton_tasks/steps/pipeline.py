"""The pipeline run: one MLflow parent run per orchestrator run, the steps' runs nested under it.

`start` opens (or, on a retry, finds) the parent run and fixes the run folder; `end` closes it
with the outcome it reads from the run folder, so it works the same for processes, containers
and pods, and needs no access to the orchestrator's database.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from lepton_tasks import storage, tracking
from lepton_tasks.errors import NothingToIngestError, UsageError
from lepton_tasks.results import (
    PipelineEndResult,
    PipelineStartResult,
    records_result,
    result_uri,
)
from lepton_tasks.settings import get_settings

log = logging.getLogger(__name__)

STEPS = ("ingest", "validate", "train", "evaluate", "register")


def run_dir_for(dag_id: str, run_id: str) -> str:
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", run_id).strip("_")
    return storage.join(get_settings().runs_root, dag_id, safe)


@records_result
def start(
    dag_id: str,
    run_id: str,
    logical_date: str | None = None,
    dag_version: str | None = None,
    params: dict[str, Any] | None = None,
    run_dir: str | None = None,
) -> PipelineStartResult:
    import mlflow

    params = params or {}
    if params.get("force_promotion") and not str(params.get("force_reason") or "").strip():
        raise UsageError("force_promotion needs a force_reason: say why the gate is bypassed")
    run_dir = run_dir or run_dir_for(dag_id, run_id)
    experiment_id = tracking.setup()
    tags = {
        "lepton.pipeline": "true",
        "lepton.dag_id": dag_id,
        "lepton.dag_run_id": run_id,
        "lepton.logical_date": logical_date or "",
        "lepton.dag_version": dag_version or "",
        "lepton.run_dir": run_dir,
        "lepton.code_version": tracking.code_version(),
    }
    with tracking.tracking_errors("opening the pipeline run"):
        existing = mlflow.search_runs(
            experiment_ids=[experiment_id],
            filter_string=f"tags.`lepton.dag_run_id` = '{run_id}' and tags.`lepton.dag_id` = '{dag_id}'",
            output_format="list",
            max_results=1,
        )
        if existing:
            parent_id = existing[0].info.run_id
            experiment_id = existing[0].info.experiment_id
            log.info("pipeline run %s exists (a retry); reusing it", parent_id)
        else:
            client = mlflow.MlflowClient()
            run = client.create_run(experiment_id, tags=tags, run_name=f"{dag_id} {run_id}")
            parent_id = run.info.run_id
            for key, value in sorted(params.items()):
                client.log_param(parent_id, key, str(value)[:500])
    return PipelineStartResult(
        run_dir=run_dir,
        mlflow_run_id=parent_id,
        mlflow_experiment_id=experiment_id,
        dag_id=dag_id,
        dag_run_id=run_id,
    )


@records_result
def end(run_dir: str, parent_run_id: str) -> PipelineEndResult:
    """Close the pipeline run: FINISHED when register succeeded (tagged SKIPPED when nothing had
    landed), FAILED with the first error."""
    import mlflow

    outcome: dict[str, Any] = {"status": "FINISHED", "failed_step": None, "error": None}
    for step in STEPS:
        error_uri = storage.join(run_dir, step, "error.json")
        if storage.exists(error_uri):
            error = storage.read_json(error_uri)
            if error.get("error") == NothingToIngestError.__name__:
                outcome = {"status": "SKIPPED", "failed_step": None, "error": error.get("message")}
            else:
                outcome = {"status": "FAILED", "failed_step": step, "error": error.get("message")}
            break
        if not storage.exists(result_uri(run_dir, step)):
            outcome = {"status": "FAILED", "failed_step": step, "error": "did not run"}
            break
    tracking.setup()
    client = mlflow.MlflowClient()
    with tracking.tracking_errors("closing the pipeline run"):
        for relative in ("ingest/snapshot/manifest.json", "validate/summary.json"):
            uri = storage.join(run_dir, relative)
            if storage.is_local(uri) and storage.exists(uri):
                client.log_artifact(parent_run_id, uri, artifact_path="pipeline")
        docs = storage.join(run_dir, "validate", "data_docs")
        if storage.is_local(docs) and storage.exists(docs):
            client.log_artifacts(parent_run_id, docs, artifact_path="data_docs")
        client.set_tag(parent_run_id, "lepton.outcome", outcome["status"])
        if outcome["failed_step"]:
            client.set_tag(parent_run_id, "lepton.failed_step", outcome["failed_step"])
            client.set_tag(parent_run_id, "lepton.error", str(outcome["error"])[:500])
        if outcome["status"] == "SKIPPED":
            client.set_tag(parent_run_id, "lepton.skip_reason", str(outcome["error"]))
        # MLflow knows no "skipped": a night with nothing to train on finished as it should.
        mlflow_status = "FINISHED" if outcome["status"] == "SKIPPED" else outcome["status"]
        client.set_terminated(parent_run_id, status=mlflow_status)
    log.info("pipeline run %s: %s", parent_run_id, outcome)
    return PipelineEndResult(run_dir=run_dir, mlflow_run_id=parent_run_id, **outcome)
