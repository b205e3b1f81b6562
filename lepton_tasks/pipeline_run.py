"""The pipeline run: one MLflow parent run per orchestrator run, the steps' runs nested under it.

`start` opens (or, on a retry, finds) the parent run and fixes the run folder; `end` closes it
with the outcome of the steps it is given, read from their result and error files in the run
folder, so it works the same for processes, containers and pods, and needs no access to the
orchestrator's database.
"""

from __future__ import annotations

import logging
from typing import Any

from lepton_tasks import storage, tracking
from lepton_tasks.errors import NothingToIngestError, UsageError
from lepton_tasks.results import (
    IngestResult,
    PipelineEndResult,
    PipelineStartResult,
    records_result,
)
from lepton_tasks.run_folder import RunFolder
from lepton_tasks.settings import get_settings

log = logging.getLogger(__name__)


def run_dir_for(dag_id: str, run_id: str) -> str:
    """The run folder of an orchestrator run, under LEPTON_ARTIFACT_ROOT."""
    return RunFolder.for_orchestrator_run(get_settings().runs_root, dag_id, run_id).uri


@records_result
def start(
    dag_id: str,
    run_id: str,
    logical_date: str | None = None,
    dag_version: str | None = None,
    params: dict[str, Any] | None = None,
    run_dir: str | None = None,
) -> PipelineStartResult:
    """Open the pipeline's MLflow run for an orchestrator run, or find it on a retry.

    Args:
        dag_id, run_id, logical_date, dag_version: the orchestrator run, tagged on the run.
        params: the run's params, logged as the run's params.
        run_dir: the run folder [default: `run_dir_for(dag_id, run_id)`].

    Returns:
        The run folder every step of this run writes into, and the MLflow run to nest under.

    Raises:
        UsageError: force_promotion without a force_reason.
        TrackingUnavailableError: MLflow cannot be reached.
    """
    params = params or {}
    if "model" in params:  # renamed: an old trigger conf would silently train the default
        raise UsageError("the param 'model' is now 'architecture' (e.g. {\"architecture\": ...})")
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
        parent_id, experiment_id = _find_or_create_run(experiment_id, tags, params)
    return PipelineStartResult(
        run_dir=run_dir,
        mlflow_run_id=parent_id,
        mlflow_experiment_id=experiment_id,
        dag_id=dag_id,
        dag_run_id=run_id,
    )


def _find_or_create_run(
    experiment_id: str, tags: dict[str, str], params: dict[str, Any]
) -> tuple[str, str]:
    """The pipeline run of this orchestrator run (a retry finds it): (run id, experiment id)."""
    import mlflow

    dag_id, run_id = tags["lepton.dag_id"], tags["lepton.dag_run_id"]
    existing = mlflow.search_runs(
        experiment_ids=[experiment_id],
        filter_string=f"tags.`lepton.dag_run_id` = '{run_id}' and tags.`lepton.dag_id` = '{dag_id}'",
        output_format="list",
        max_results=1,
    )
    if existing:
        log.info("pipeline run %s exists (a retry); reusing it", existing[0].info.run_id)
        return existing[0].info.run_id, existing[0].info.experiment_id
    client = mlflow.MlflowClient()
    run = client.create_run(experiment_id, tags=tags, run_name=f"{dag_id} {run_id}")
    for key, value in sorted(params.items()):
        client.log_param(run.info.run_id, key, str(value)[:500])
    return run.info.run_id, experiment_id


@records_result
def end(run_dir: str, parent_run_id: str, steps: list[str]) -> PipelineEndResult:
    """Close the pipeline run with the outcome of `steps`, in order.

    FINISHED when each left a result; SKIPPED (an MLflow FINISHED, tagged) when ingest found
    nothing to train on; FAILED with the first failed (or not run) step and its message. The
    snapshot manifest, the validation summary and the Data Docs are attached to the run.
    """
    import mlflow

    folder = RunFolder(run_dir)
    outcome = _outcome(folder, steps)
    tracking.setup()
    client = mlflow.MlflowClient()
    with tracking.tracking_errors("closing the pipeline run"):
        _attach_reports(client, parent_run_id, folder)
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


def _outcome(folder: RunFolder, steps: list[str]) -> dict[str, Any]:
    failure = folder.first_failure(steps)
    if failure is None:
        return {"status": "FINISHED", "failed_step": None, "error": None}
    step, error = failure
    if error is None:
        return {"status": "FAILED", "failed_step": step, "error": "did not run"}
    if error.get("error") == NothingToIngestError.__name__:
        return {"status": "SKIPPED", "failed_step": None, "error": error.get("message")}
    return {"status": "FAILED", "failed_step": step, "error": error.get("message")}


def _attach_reports(client: Any, parent_run_id: str, folder: RunFolder) -> None:
    """The data reports a reader of the pipeline run wants first (local run folders only)."""
    ingested = folder.saved_result("ingest", IngestResult)
    manifest = storage.join(ingested.snapshot_uri, "manifest.json") if ingested else None
    for uri in (manifest, folder.validation_summary_uri):
        if uri and storage.is_local(uri) and storage.exists(uri):
            client.log_artifact(parent_run_id, uri, artifact_path="pipeline")
    docs = folder.data_docs_uri
    if storage.is_local(docs) and storage.exists(docs):
        client.log_artifacts(parent_run_id, docs, artifact_path="data_docs")
