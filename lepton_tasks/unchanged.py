"""Would this pipeline run change anything? Same data, params, code and champion as an earlier
successful run means the same outcome: the run skips its steps and says "unchanged since v3".

The key is content only: the snapshot id (the sha256 of the data and its splits), the params
and settings that decide the outcome, the code version, and the champion the run would be
compared with. A finished run remembers its key with the champion it left behind, so the next
night on the same data matches it, whether or not that run promoted its candidate.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from pydantic import BaseModel

from lepton_tasks import content_cache, registry, tracking
from lepton_tasks.model_catalog import model_code_version
from lepton_tasks.redact import redact
from lepton_tasks.results import (
    EvaluateResult,
    InputCheckResult,
    RegisterResult,
    records_result,
)
from lepton_tasks.run_folder import RunFolder
from lepton_tasks.settings import get_settings

log = logging.getLogger(__name__)

CACHE = "pipeline"
# The DAG params that decide a run's outcome. The source and format are not among them: the
# snapshot id is what was read. Forcing is never a repeat.
OUTCOME_PARAMS = (
    "architecture",
    "epochs",
    "batch_size",
    "learning_rate",
    "augment",
    "min_improvement",
)
FORCING_PARAMS = ("force_retrain", "force_promotion")
# The settings that decide a run's outcome: validation thresholds and the gate.
OUTCOME_SETTINGS = {
    "max_duplicate_rate",
    "min_examples_per_split",
    "min_class_share",
    "max_class_share",
    "max_label_kl_divergence",
    "max_pixel_mean_shift",
    "promotion_metric",
    "accuracy_floor",
    "gate_confidence",
    "gate_bootstrap_samples",
    "max_class_recall_drop",
}


class RunMemo(BaseModel):
    """What an earlier run with this key left: the version it registered (or found)."""

    version: str
    dag_run_id: str | None = None
    run_dir: str


def environment_inputs(params: dict[str, Any]) -> dict[str, Any]:
    """What decides the outcome besides the data and the params: the settings, the seed, the
    code version (Lepton's and a model of yours) and the registry (a reset registry numbers
    its versions anew)."""
    return {
        "settings": get_settings().model_dump(include=OUTCOME_SETTINGS, mode="json"),
        "seed": os.environ.get("LEPTON_SEED", ""),
        "code": tracking.code_version(),
        "model_code": model_code_version(str(params.get("architecture") or "lepton_cnn")),
        "registry": redact(tracking.tracking_uri()),
    }


def run_key(
    snapshot_id: str, params: dict[str, Any], champion: str | None, environment: dict[str, Any]
) -> str:
    """The content key of a run of `params` on the snapshot, compared with `champion`."""
    return content_cache.cache_key(
        snapshot_id=snapshot_id,
        model_name=model_name_of(params),
        params={name: params.get(name) for name in OUTCOME_PARAMS},
        champion=champion,
        **environment,
    )


def model_name_of(params: dict[str, Any]) -> str:
    return str(params.get("model_name") or get_settings().model_name)


@records_result
def check_inputs(snapshot_id: str, run_dir: str, params: dict[str, Any]) -> InputCheckResult:
    """Whether an earlier successful run had the same inputs; then this one has nothing to do.

    Args:
        snapshot_id: the content id of the data ingest read.
        run_dir: the run folder; the result goes to its `check-inputs/`.
        params: the run's params (the DAG's), of which the outcome's are keyed.

    Returns:
        `unchanged_since`: the version that run registered, or None (run the steps).

    Raises:
        TrackingUnavailableError: MLflow cannot be reached (the champion is part of the key).
    """
    champion_version = registry.champion_number(model_name_of(params))
    forced = [name for name in FORCING_PARAMS if params.get(name)]
    environment = environment_inputs(params)
    key = run_key(snapshot_id, params, champion_version, environment)
    memo = content_cache.lookup(CACHE, key, RunMemo)
    if forced or memo is None:
        log.info("new inputs%s: running every step", f" ({', '.join(forced)})" if forced else "")
        memo = None
    else:
        log.info(
            "unchanged since v%s: the same data, params, code and champion as DAG run %s; "
            "nothing to train, evaluate or register",
            memo.version,
            memo.dag_run_id,
        )
    return InputCheckResult(
        run_dir=run_dir,
        snapshot_id=snapshot_id,
        params={name: params.get(name) for name in (*OUTCOME_PARAMS, "model_name")},
        champion_version=champion_version,
        unchanged_since=memo.version if memo else None,
        unchanged_since_run=memo.dag_run_id if memo else None,
        forced=forced,
        environment=environment,
    )


def remember(folder: RunFolder, dag_run_id: str | None) -> str | None:
    """After a successful run: key its inputs with the champion it left, for the next run.

    Only when the champion it left follows from its own decision: the one it compared with
    (not promoted), or its candidate promoted over that one. A champion someone moved during
    the run was never compared with: nothing is remembered, and the next run runs the gate.

    Returns the version remembered, or None.
    """
    checked = folder.saved_result("check-inputs", InputCheckResult)
    evaluated = folder.saved_result("evaluate", EvaluateResult)
    registered = folder.saved_result("register", RegisterResult)
    if checked is None or evaluated is None or registered is None or checked.unchanged_since:
        return None
    compared = evaluated.champion.version if evaluated.champion else None
    after = registered.champion_version
    followed = (
        registered.previous_champion_version == compared and after == registered.version
        if registered.promoted
        else after == compared
    )
    if not followed:
        log.warning("the champion moved during this run (now %s): not remembered", after)
        return None
    key = run_key(checked.snapshot_id, checked.params, after, checked.environment)
    memo = RunMemo(version=registered.version, dag_run_id=dag_run_id, run_dir=folder.uri)
    content_cache.store(CACHE, key, memo)
    return registered.version
