"""Register: add the trained model to the MLflow registry with its lineage; move the aliases.

Every registered version gets alias `challenger`; `champion` moves only when evaluate's decision
says so. Registering the same training run twice returns the version it already has.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from lepton_tasks import litert, tracking
from lepton_tasks.data.snapshot import read_manifest
from lepton_tasks.model_catalog import model_source
from lepton_tasks.registry import (
    MANAGED_TAG,
    champion_version,
    move_champion,
    promotion_history,
    shorten,
)
from lepton_tasks.results import EvaluateResult, RegisterResult, ValidateResult, records_result

log = logging.getLogger(__name__)


@records_result
def register(
    evaluated: EvaluateResult,
    run_dir: str,
    validation: ValidateResult | None = None,
    model_name: str | None = None,
    parent_run_id: str | None = None,
) -> RegisterResult:
    """Register the evaluated candidate with its lineage; `champion` follows the decision.

    Args:
        evaluated: evaluate's result: the candidate, its snapshot, metrics and the decision.
        run_dir: the run folder (recorded on the version).
        validation: validate's result, recorded on the version.
        model_name: the registered model [default: the one evaluate compared against].
        parent_run_id: the MLflow pipeline run, tagged with the new version.

    Returns:
        The version, its aliases, whether it was promoted and the champion before and after.
        Registering the same training run twice returns the version it already has.

    Raises:
        TrackingUnavailableError, RegistryError: MLflow refused or cannot be reached.
    """
    from mlflow import MlflowClient

    model_name = model_name or evaluated.model_name
    tracking.setup()
    client = MlflowClient()
    with tracking.tracking_errors("registering the model"):
        _ensure_registered_model(client, model_name)
        version, already = _find_or_create_version(
            client, model_name, evaluated, validation, parent_run_id, run_dir
        )
        number = str(version.version)
        client.set_registered_model_alias(model_name, "challenger", number)
        promoted, previous_number = _promote_if_decided(
            client, model_name, number, evaluated, parent_run_id
        )
        champion = champion_version(model_name)
        aliases = sorted(client.get_model_version(model_name, number).aliases)
    if parent_run_id:
        with tracking.tracking_errors("tagging the pipeline run"):
            client.set_tag(parent_run_id, "lepton.model_version", f"{model_name}/{number}")
            if already:
                client.set_tag(parent_run_id, "lepton.unchanged_since", f"v{number}")
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


def _promote_if_decided(
    client: Any,
    model_name: str,
    number: str,
    evaluated: EvaluateResult,
    parent_run_id: str | None,
) -> tuple[bool, str | None]:
    """Move `champion` to `number` if the decision says so: (promoted, previous champion).

    The move happens only if the champion is still the one evaluate compared against; a
    retry of a register that already promoted this version finds it done.
    """
    compared = evaluated.champion.version if evaluated.champion else None
    current = champion_version(model_name)
    current_number = str(current.version) if current else None
    if current_number == number:  # an earlier try of this register did it
        return evaluated.decision.promote and compared != number, compared
    done = _earlier_promotion(client, model_name, number, parent_run_id)
    if done is not None:  # an earlier try promoted it, and someone has moved it since
        log.info("v%s was promoted by this pipeline run already; not moving it again", number)
        return True, done.get("previous")
    if not evaluated.decision.promote:
        log.info("champion stays %s: %s", current_number, evaluated.decision.reason)
        return False, current_number
    demoted_by = (
        None if evaluated.decision.forced else _rolled_back_from(client, model_name, number)
    )
    if demoted_by is not None:
        log.warning(
            "not promoting v%s again: %s rolled the champion back from it (%s); roll back to "
            "it by hand to make it champion",
            number,
            demoted_by.get("by"),
            demoted_by.get("reason"),
        )
        return False, current_number
    entry = {
        "by": "pipeline",
        "reason": evaluated.decision.reason,
        "pipeline_run_id": parent_run_id,
    }
    previous = move_champion(client, model_name, number, entry, expected=compared)
    log.info("champion: v%s (was %s)", number, previous or "none")
    return True, previous


def _rolled_back_from(client: Any, model_name: str, number: str) -> dict[str, Any] | None:
    """The rollback that moved the champion away from `number`, unless it came back since.

    A person's decision the gate must not undo the next night: the same training, reused from
    the content cache, is the same version.
    """
    history = promotion_history(client.get_registered_model(model_name).tags)
    last = None
    for entry in history:
        if entry.get("version") == number:
            last = None  # promoted (or rolled back to) since
        elif entry.get("previous") == number and str(entry.get("reason", "")).startswith(
            "rollback:"
        ):
            last = entry
    return last


def _earlier_promotion(
    client: Any, model_name: str, number: str, parent_run_id: str | None
) -> dict[str, Any] | None:
    """This pipeline run's promotion of `number`, if an earlier try of register made it."""
    if not parent_run_id:
        return None
    for entry in promotion_history(client.get_registered_model(model_name).tags):
        if entry.get("version") == number and entry.get("pipeline_run_id") == parent_run_id:
            return entry
    return None


def _ensure_registered_model(client: Any, model_name: str) -> None:
    """The registered model exists and is tagged as Lepton's.

    A model from before the tag gets it on its next registration.
    """
    from mlflow.exceptions import MlflowException

    try:
        model = client.get_registered_model(model_name)
    except MlflowException:
        client.create_registered_model(
            model_name,
            description="Registered by Lepton's register step.",
            tags={MANAGED_TAG: "true"},
        )
        return
    if (model.tags or {}).get(MANAGED_TAG) != "true":
        client.set_registered_model_tag(model_name, MANAGED_TAG, "true")


def _find_or_create_version(
    client: Any,
    model_name: str,
    evaluated: EvaluateResult,
    validation: ValidateResult | None,
    parent_run_id: str | None,
    run_dir: str,
) -> tuple[Any, bool]:
    """The version of the candidate's training run: (version, whether it already existed)."""
    run_id = evaluated.train_run_id
    for version in client.search_model_versions(f"name='{model_name}' and run_id='{run_id}'"):
        log.info(
            "unchanged since v%s: training run %s is registered already", version.version, run_id
        )
        return version, True
    manifest = read_manifest(evaluated.snapshot_uri)
    source = evaluated.mlflow_model_uri
    version = client.create_model_version(
        name=model_name,
        source=source,
        run_id=run_id,
        tags={
            **_pipeline_tags(client, parent_run_id),
            **_lineage_tags(manifest, evaluated, validation, parent_run_id, run_dir),
        },
        description=_description(manifest, evaluated),
        # an MLflow server refuses a `models:/<id>` source without its model id
        model_id=source.removeprefix("models:/") if source.startswith("models:/") else None,
    )
    return version, False


def _lineage_tags(
    manifest: dict[str, Any],
    evaluated: EvaluateResult,
    validation: ValidateResult | None,
    parent_run_id: str | None,
    run_dir: str,
) -> dict[str, str]:
    """Where the version came from: snapshot, validation, runs, code, decision, metrics."""
    checked = (
        {"success": validation.success, "evaluated": validation.evaluated} if validation else {}
    )
    return {
        **(
            {litert.URI_TAG: evaluated.litert_model_uri, litert.SHA_TAG: evaluated.litert_sha256}
            if evaluated.litert_model_uri and evaluated.litert_sha256
            else {}
        ),
        "lepton.snapshot_id": manifest["snapshot_id"],
        "lepton.snapshot_sha256": manifest["sha256"],
        "lepton.snapshot_uri": evaluated.snapshot_uri,
        "lepton.snapshot_count": str(manifest["count"]),
        # the model's outputs, in order: what its predictions mean
        "lepton.class_names": json.dumps(manifest["class_names"], ensure_ascii=False),
        "lepton.validation": json.dumps(checked),
        "lepton.train_run_id": evaluated.train_run_id,
        "lepton.evaluate_run_id": evaluated.mlflow_run_id,
        "lepton.pipeline_run_id": parent_run_id or "",
        "lepton.run_dir": run_dir,
        "lepton.architecture": evaluated.architecture,
        "lepton.model_source": model_source(evaluated.architecture),
        "lepton.code_version": tracking.code_version(),
        "lepton.decision": shorten(evaluated.decision.reason),
        **{f"lepton.metric.{k}": str(v) for k, v in evaluated.metrics.items()},
    }


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
