"""The pipeline run: one MLflow parent run per orchestrator run, the steps' runs nested under it.

`start` opens (or, on a retry, finds) the parent run and fixes the run folder; `end` closes it
with the outcome of the steps it is given, read from their result and error files in the run
folder, so it works the same for processes, containers and pods, and needs no access to the
orchestrator's database.
"""

from __future__ import annotations

import logging
from typing import Any

from lepton_tasks import storage, tracking, unchanged
from lepton_tasks.errors import NothingToIngestError, UsageError
from lepton_tasks.results import (
    EvaluateResult,
    IngestResult,
    InputCheckResult,
    PipelineEndResult,
    PipelineStartResult,
    RegisterResult,
    records_result,
)
from lepton_tasks.run_folder import RunFolder
from lepton_tasks.settings import get_settings

log = logging.getLogger(__name__)
CHECK_STEP = "check-inputs"


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
    run_type: str | None = None,
) -> PipelineStartResult:
    """Open the pipeline's MLflow run for an orchestrator run, or find it on a retry.

    Args:
        dag_id, run_id, logical_date, dag_version: the orchestrator run, tagged on the run.
        params: the run's params, logged as the run's params.
        run_dir: the run folder [default: `run_dir_for(dag_id, run_id)`].
        run_type: the orchestrator's kind of run; a backfill must not train the live model.

    Returns:
        The run folder every step of this run writes into, and the MLflow run to nest under.

    Raises:
        UsageError: force_promotion without a force_reason; a backfill of the live model.
        TrackingUnavailableError: MLflow cannot be reached.
    """
    params = params or {}
    if "model" in params:  # renamed: an old trigger conf would silently train the default
        raise UsageError("the param 'model' is now 'architecture' (e.g. {\"architecture\": ...})")
    if params.get("force_promotion") and not str(params.get("force_reason") or "").strip():
        raise UsageError("force_promotion needs a force_reason: say why the gate is bypassed")
    _check_backfill(run_type, params)
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


def _check_backfill(run_type: str | None, params: dict[str, Any]) -> None:
    """Past nights compared with today's champion could move it: a backfill rebuilds history
    in a model of its own."""
    live = get_settings().model_name
    if run_type == "backfill" and (params.get("model_name") or live) == live:
        raise UsageError(
            f"a backfill registers past nights' models: give it a model of its own, not the "
            f"live '{live}' (airflow backfill create ... --dag-run-conf "
            f'\'{{"model_name": "{live}-backfill"}}\')'
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
    from mlflow.entities import Param

    client = mlflow.MlflowClient()
    run = client.create_run(experiment_id, tags=tags, run_name=f"{dag_id} {run_id}")
    logged = [Param(key, str(value)[:500]) for key, value in sorted(params.items())]
    client.log_batch(run.info.run_id, params=logged)
    return run.info.run_id, experiment_id


@records_result
def end(run_dir: str, parent_run_id: str, steps: list[str]) -> PipelineEndResult:
    """Close the pipeline run with the outcome of `steps`, in order.

    FINISHED when each left a result; UNCHANGED when check-inputs found an earlier run with
    the same inputs (the steps after it were skipped); SKIPPED (an MLflow FINISHED, tagged)
    when ingest found nothing to train on; FAILED with the first failed (or not run) step and
    its message. A FINISHED run's inputs are remembered for the next one. The snapshot
    manifest, the validation summary and the Data Docs are attached to the run.
    """
    import mlflow

    folder = RunFolder(run_dir)
    checked = folder.saved_result(CHECK_STEP, InputCheckResult)
    outcome = _outcome(folder, steps, checked)
    summary = _summary(folder, outcome, checked)
    tracking.setup()
    client = mlflow.MlflowClient()
    with tracking.tracking_errors("closing the pipeline run"):
        _attach_reports(client, parent_run_id, folder)
        _tag_outcome(client, parent_run_id, outcome, summary)
        if outcome["status"] == "UNCHANGED" and checked is not None:
            client.set_tag(parent_run_id, "lepton.unchanged_since", f"v{checked.unchanged_since}")
        # MLflow knows no "skipped": a night with nothing to do finished as it should.
        finished = outcome["status"] in ("SKIPPED", "UNCHANGED")
        client.set_terminated(parent_run_id, status="FINISHED" if finished else outcome["status"])
    if outcome["status"] == "FINISHED":
        started = folder.saved_result("pipeline-start", PipelineStartResult)
        unchanged.remember(folder, started.dag_run_id if started else None)
    log.info("pipeline run %s: %s", parent_run_id, summary)
    return PipelineEndResult(
        run_dir=run_dir, mlflow_run_id=parent_run_id, summary=summary, **outcome
    )


def _tag_outcome(client: Any, parent_run_id: str, outcome: dict[str, Any], summary: str) -> None:
    client.set_tag(parent_run_id, "lepton.outcome", outcome["status"])
    client.set_tag(parent_run_id, "mlflow.note.content", summary)
    if outcome["failed_step"]:
        client.set_tag(parent_run_id, "lepton.failed_step", outcome["failed_step"])
        client.set_tag(parent_run_id, "lepton.error", str(outcome["error"])[:500])
    if outcome["status"] == "SKIPPED":
        client.set_tag(parent_run_id, "lepton.skip_reason", str(outcome["error"]))


def _outcome(
    folder: RunFolder, steps: list[str], checked: InputCheckResult | None
) -> dict[str, Any]:
    repeat = checked is not None and checked.unchanged_since is not None and CHECK_STEP in steps
    ran = steps[: steps.index(CHECK_STEP) + 1] if repeat else steps
    failure = folder.first_failure(ran)
    if failure is None:
        status = "UNCHANGED" if repeat else "FINISHED"
        return {"status": status, "failed_step": None, "error": None}
    step, error = failure
    if error is None:
        return {"status": "FAILED", "failed_step": step, "error": "did not run"}
    if error.get("error") == NothingToIngestError.__name__:
        return {"status": "SKIPPED", "failed_step": None, "error": error.get("message")}
    return {"status": "FAILED", "failed_step": step, "error": error.get("message")}


def _summary(folder: RunFolder, outcome: dict[str, Any], checked: InputCheckResult | None) -> str:
    """One line on what the run did: the DAG run's note and the MLflow run's description."""
    status = outcome["status"]
    if status == "FAILED":
        return f"Failed at {outcome['failed_step']}: {outcome['error']}"
    if status == "SKIPPED":
        return f"Skipped: {outcome['error']}"
    if status == "UNCHANGED" and checked is not None:
        return (
            f"Unchanged since v{checked.unchanged_since}: the same data (snapshot "
            f"{checked.snapshot_id[:12]}), params, code and champion as DAG run "
            f"{checked.unchanged_since_run}; nothing trained, evaluated or registered."
        )
    registered = folder.saved_result("register", RegisterResult)
    evaluated = folder.saved_result("evaluate", EvaluateResult)
    if registered is None or evaluated is None:
        return "Finished."
    return registered_summary(registered, evaluated)


def registered_summary(registered: RegisterResult, evaluated: EvaluateResult) -> str:
    """What register did, with the gate's interval when there was one."""
    name, version = registered.model_name, registered.version
    if registered.already_registered:
        head = f"Unchanged since v{version}: the same training is registered already"
    else:
        head = f"Registered {name} v{version}"
    decision = evaluated.decision
    verdict = "promoted to champion" if registered.promoted else "not promoted"
    evidence = decision.evidence
    interval = ""
    if evidence is not None:
        low, high = evidence.gain_interval
        interval = f" (gain {evidence.gain:+.4f}, interval [{low:+.4f}, {high:+.4f}])"
    return f"{head}; {verdict}{interval}: {decision.reason}"


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
