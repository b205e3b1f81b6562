"""Register: add the trained model to the MLflow registry with its lineage; move the aliases.

Every registered version gets alias `challenger`; `champion` moves only when evaluate's decision
says so. Registering the same training run twice returns the version it already has.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from lepton_tasks import storage, tracking
from lepton_tasks.data.snapshot import read_manifest
from lepton_tasks.registry import champion_version, move_champion, shorten
from lepton_tasks.results import (
    EvaluateResult,
    RegisterResult,
    TrainResult,
    load_result,
    records_result,
)
from lepton_tasks.settings import get_settings

log = logging.getLogger(__name__)


def _existing_version(client: Any, model_name: str, run_id: str) -> Any | None:
    for version in client.search_model_versions(f"name='{model_name}' and run_id='{run_id}'"):
        return version
    return None


@records_result
def register(
    run_dir: str,
    model_name: str | None = None,
    parent_run_id: str | None = None,
) -> RegisterResult:
    from mlflow import MlflowClient

    settings = get_settings()
    evaluated = load_result(run_dir, "evaluate", EvaluateResult)
    trained = load_result(run_dir, "train", TrainResult)
    model_name = model_name or evaluated.model_name or settings.model_name
    manifest = read_manifest(evaluated.snapshot_uri)
    validation_uri = storage.join(run_dir, "validate", "summary.json")
    validation = storage.read_json(validation_uri) if storage.exists(validation_uri) else {}
    tracking.setup()
    client = MlflowClient()

    with tracking.tracking_errors("registering the model"):
        try:
            client.get_registered_model(model_name)
        except Exception:
            client.create_registered_model(
                model_name, description="Registered by Lepton's register step."
            )
        existing = _existing_version(client, model_name, trained.mlflow_run_id)
        if existing is None:
            tags = {
                **_pipeline_tags(client, parent_run_id),
                "lepton.snapshot_id": manifest["snapshot_id"],
                "lepton.snapshot_sha256": manifest["sha256"],
                "lepton.snapshot_uri": evaluated.snapshot_uri,
                "lepton.snapshot_count": str(manifest["count"]),
                "lepton.validation": json.dumps(
                    {k: validation.get(k) for k in ("success", "evaluated", "failed")}
                ),
                "lepton.train_run_id": trained.mlflow_run_id,
                "lepton.evaluate_run_id": evaluated.mlflow_run_id,
                "lepton.pipeline_run_id": parent_run_id or "",
                "lepton.run_dir": run_dir,
                "lepton.architecture": trained.architecture,
                "lepton.code_version": tracking.code_version(),
                "lepton.decision": shorten(evaluated.decision.reason),
                **{f"lepton.metric.{k}": str(v) for k, v in evaluated.metrics.items()},
            }
            version = client.create_model_version(
                name=model_name,
                source=trained.mlflow_model_uri,
                run_id=trained.mlflow_run_id,
                tags=tags,
                description=_description(manifest, evaluated),
                # an MLflow server refuses a `models:/<id>` source without its model id
                model_id=trained.mlflow_model_uri.removeprefix("models:/")
                if trained.mlflow_model_uri.startswith("models:/")
                else None,
            )
            already = False
        else:
            version = existing
            already = True
            log.info("run %s is already version %s", trained.mlflow_run_id, version.version)
        number = str(version.version)
        client.set_registered_model_alias(model_name, "challenger", number)

        previous = champion_version(model_name)
        previous_number = str(previous.version) if previous else None
        promoted = evaluated.decision.promote and previous_number != number
        if promoted:
            move_champion(
                client,
                model_name,
                number,
                {
                    "previous": previous_number,
                    "by": "pipeline",
                    "reason": evaluated.decision.reason,
                    "pipeline_run_id": parent_run_id,
                },
            )
            log.info("champion: v%s (was %s)", number, previous_number or "none")
        else:
            log.info("champion stays v%s: %s", previous_number, evaluated.decision.reason)
        champion = champion_version(model_name)
        aliases = sorted(client.get_model_version(model_name, number).aliases)

    if parent_run_id:
        with tracking.tracking_errors("tagging the pipeline run"):
            client.set_tag(parent_run_id, "lepton.model_version", f"{model_name}/{number}")
    return RegisterResult(
        run_dir=run_dir,
        model_name=model_name,
        version=number,
        aliases=aliases,
        promoted=promoted,
        champion_version=str(champion.version) if champion else None,
        previous_champion_version=previous_number,
        already_registered=already,
        metrics=evaluated.metrics,
    )


def _pipeline_tags(client: Any, parent_run_id: str | None) -> dict[str, str]:
    """The orchestrator run behind the pipeline run, so a version links back to its DAG run."""
    if not parent_run_id:
        return {}
    tags = client.get_run(parent_run_id).data.tags
    return {k: tags[k] for k in ("lepton.dag_id", "lepton.dag_run_id") if tags.get(k)}


def _description(manifest: dict[str, Any], evaluated: EvaluateResult) -> str:
    metrics = ", ".join(f"{k} {v:.4f}" for k, v in evaluated.metrics.items())
    return (
        f"Trained on snapshot {manifest['snapshot_id']} ({manifest['count']} examples from "
        f"{manifest['source']}). Test: {metrics}. Decision: {evaluated.decision.reason}."
    )
