"""Register: add the trained model to the MLflow registry with its lineage; move the aliases.

Every registered version gets alias `challenger`; `champion` moves only when evaluate's decision
says so. Registering the same training run twice returns the version it already has.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from lepton_tasks import storage, tracking
from lepton_tasks.data.snapshot import read_manifest
from lepton_tasks.errors import RegistryError
from lepton_tasks.results import (
    EvaluateResult,
    ModelInfo,
    RegisterResult,
    RollbackResult,
    TrainResult,
    VersionInfo,
    load_result,
    records_result,
)
from lepton_tasks.settings import get_settings

log = logging.getLogger(__name__)

# One registered-model tag per promotion or rollback: MLflow keeps each tag value in a
# VARCHAR(5000) (enforced by PostgreSQL), so a history in one tag overflows after a few dozen
# events. Keys sort in time order. The single JSON-list tag of earlier releases is still read.
HISTORY_TAG_PREFIX = "lepton.promotion."
LEGACY_HISTORY_TAG = "lepton.promotion_history"
MAX_REASON_CHARS = 1000


def _existing_version(client: Any, model_name: str, run_id: str) -> Any | None:
    for version in client.search_model_versions(f"name='{model_name}' and run_id='{run_id}'"):
        return version
    return None


def _champion(client: Any, model_name: str) -> Any | None:
    from lepton_tasks.steps.evaluate import champion_version

    return champion_version(model_name)


def shorten(text: str, limit: int = MAX_REASON_CHARS) -> str:
    """A free-text reason cut to fit a tag value, marked where it was cut."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def promotion_history(tags: Mapping[str, str]) -> list[dict[str, Any]]:
    """The registered model's promotions and rollbacks, oldest first, from its tags."""
    history: list[dict[str, Any]] = []
    raw = [tags.get(LEGACY_HISTORY_TAG, "[]")]
    raw += [tags[k] for k in sorted(k for k in tags if k.startswith(HISTORY_TAG_PREFIX))]
    for value in raw:
        try:
            entry = json.loads(value)
        except json.JSONDecodeError:  # a hand-edited tag must not take the page down
            log.warning("skipping an unreadable promotion record: %.80s", value)
            continue
        history += entry if isinstance(entry, list) else [entry]
    return history


def _move_champion(client: Any, model_name: str, version: str, entry: dict[str, Any]) -> None:
    """Record the event, then move `champion`; if the move fails, the record is taken back, so
    the history never shows a promotion that did not happen nor misses one that did."""
    now = datetime.now(UTC)
    entry = {
        **entry,
        "version": version,
        "reason": shorten(str(entry.get("reason") or "")),
        "at": now.isoformat(timespec="seconds"),
    }
    key = f"{HISTORY_TAG_PREFIX}{now:%Y%m%dT%H%M%S%fZ}-{uuid.uuid4().hex[:8]}"
    # unescaped, so the cut above bounds the stored size (MLflow counts characters)
    client.set_registered_model_tag(model_name, key, json.dumps(entry, ensure_ascii=False))
    try:
        client.set_registered_model_alias(model_name, "champion", version)
    except Exception:
        try:
            client.delete_registered_model_tag(model_name, key)
        except Exception:  # the original failure is the one to report
            log.warning("could not take back history record %s", key, exc_info=True)
        raise


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

        previous = _champion(client, model_name)
        previous_number = str(previous.version) if previous else None
        promoted = evaluated.decision.promote and previous_number != number
        if promoted:
            _move_champion(
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
        champion = _champion(client, model_name)
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


@records_result
def rollback(
    model_name: str | None, version: str, reason: str, who: str, run_dir: str
) -> RollbackResult:
    """Point `champion` at an earlier version, recording who did it and why."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    model_name = model_name or get_settings().model_name
    if not reason.strip():
        raise RegistryError("a rollback needs a reason")
    tracking.setup()
    client = MlflowClient()
    with tracking.tracking_errors("rolling back"):
        try:
            client.get_model_version(model_name, version)
        except MlflowException as exc:
            raise RegistryError(f"no version {version} of model '{model_name}'") from exc
        previous = _champion(client, model_name)
        _move_champion(
            client,
            model_name,
            version,
            {
                "previous": str(previous.version) if previous else None,
                "by": who,
                "reason": f"rollback: {reason}",
            },
        )
    return RollbackResult(
        run_dir=run_dir,
        model_name=model_name,
        champion_version=version,
        previous_champion_version=str(previous.version) if previous else None,
    )


def describe_model(model_name: str | None = None) -> ModelInfo:
    """The registered model's versions, newest first, with aliases, metrics and lineage."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    model_name = model_name or get_settings().model_name
    tracking.setup()
    client = MlflowClient()
    with tracking.tracking_errors("reading the registry"):
        try:
            model = client.get_registered_model(model_name)
        except MlflowException as exc:
            raise RegistryError(f"no registered model '{model_name}'") from exc
        versions = client.search_model_versions(f"name='{model_name}'")
    # search results carry no aliases; the registered model has the alias -> version map
    aliases: dict[str, list[str]] = {}
    for alias, number in (model.aliases or {}).items():
        aliases.setdefault(str(number), []).append(alias)
    rows = []
    for version in sorted(versions, key=lambda v: int(v.version), reverse=True):
        tags = version.tags
        rows.append(
            VersionInfo(
                version=str(version.version),
                aliases=sorted(aliases.get(str(version.version), [])),
                metrics={
                    k.removeprefix("lepton.metric."): float(v)
                    for k, v in tags.items()
                    if k.startswith("lepton.metric.")
                },
                snapshot_id=tags.get("lepton.snapshot_id"),
                snapshot_count=int(tags["lepton.snapshot_count"])
                if "lepton.snapshot_count" in tags
                else None,
                architecture=tags.get("lepton.architecture"),
                pipeline_run_id=tags.get("lepton.pipeline_run_id") or None,
                dag_id=tags.get("lepton.dag_id"),
                dag_run_id=tags.get("lepton.dag_run_id"),
                train_run_id=tags.get("lepton.train_run_id"),
                decision=tags.get("lepton.decision"),
                created_at=datetime.fromtimestamp(version.creation_timestamp / 1000, UTC).isoformat(
                    timespec="seconds"
                ),
            )
        )
    history = promotion_history(model.tags)
    return ModelInfo(
        run_dir="",
        model_name=model_name,
        tracking_uri=tracking.tracking_uri(),
        versions=rows,
        promotion_history=history,
    )
