"""Evaluate: score the candidate on the test split, score the champion on the same split, decide.

The decision (promote or not, and why) is the gate `register` obeys: the candidate must reach
the absolute floor, and beat the champion by at least the configured margin.
"""

from __future__ import annotations

import logging
import os
import tempfile
from typing import Any

import numpy as np
from pydantic import BaseModel

from lepton_tasks import litert, storage, tracking
from lepton_tasks.data.snapshot import load_split, read_manifest
from lepton_tasks.errors import InputDataError, UsageError
from lepton_tasks.models import load_keras, load_registered_keras
from lepton_tasks.registry import champion_version, class_names_of
from lepton_tasks.results import (
    ChampionScore,
    EvaluateResult,
    GateEvidence,
    PromotionDecision,
    TrainResult,
    records_result,
)
from lepton_tasks.run_folder import RunFolder
from lepton_tasks.settings import get_settings

log = logging.getLogger(__name__)

METRICS = ("accuracy", "macro_f1")


def classification_metrics(
    y_true: np.ndarray, y_pred: np.ndarray, class_names: list[str]
) -> tuple[dict[str, float], np.ndarray]:
    """Accuracy, macro F1 (over the classes present) and per-class precision and recall.

    Returns:
        The metrics, and the confusion matrix (rows: true class, columns: predicted).
    """
    k = len(class_names)
    matrix = np.bincount(y_true * k + y_pred, minlength=k * k).reshape(k, k)
    precision, recall, macro_f1 = _per_class(matrix)
    metrics = {
        "accuracy": float(np.trace(matrix) / max(matrix.sum(), 1)),
        "macro_f1": macro_f1,
    }
    for i, name in enumerate(class_names):
        metrics[f"precision_{name}"] = float(precision[i])
        metrics[f"recall_{name}"] = float(recall[i])
    return metrics, matrix


def predict(model: Any, images: np.ndarray, batch_size: int = 512) -> np.ndarray:
    """The predicted class index of each image (raw 0..255 pixels, with or without channel)."""
    x = images[..., np.newaxis] if images.ndim == 3 else images
    probabilities = model.predict(x.astype(np.float32), batch_size=batch_size, verbose=0)
    return np.asarray(probabilities).argmax(axis=1)


def confusion_png(matrix: np.ndarray, class_names: list[str], title: str) -> bytes:
    """The confusion matrix drawn with its counts, as PNG bytes."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    size = max(4.0, 0.5 * len(class_names) + 2)
    figure, axes = plt.subplots(figsize=(size, size))
    axes.imshow(matrix, cmap="Blues")
    axes.set_xticks(range(len(class_names)), class_names)
    axes.set_yticks(range(len(class_names)), class_names)
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    axes.set_title(title)
    threshold = matrix.max() / 2 if matrix.size else 0
    for (i, j), value in np.ndenumerate(matrix):
        axes.text(
            j,
            i,
            str(value),
            ha="center",
            va="center",
            color="white" if value > threshold else "black",
            fontsize=8,
        )
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    plt.close(figure)
    return buffer.getvalue()


def metric_value(y_true: np.ndarray, y_pred: np.ndarray, k: int, metric: str) -> float:
    """Accuracy or macro F1 (over the classes present) of one set of predictions."""
    if metric == "accuracy":
        return float((y_true == y_pred).mean()) if len(y_true) else 0.0
    return _per_class(np.bincount(y_true * k + y_pred, minlength=k * k).reshape(k, k))[2]


def _per_class(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Per-class precision and recall, and macro F1 over the classes present.

    `matrix` is a confusion matrix, rows the true class.
    """
    k = len(matrix)
    true_positive = np.diag(matrix).astype(float)
    predicted, actual = matrix.sum(axis=0), matrix.sum(axis=1)
    precision = np.divide(true_positive, predicted, out=np.zeros(k), where=predicted > 0)
    recall = np.divide(true_positive, actual, out=np.zeros(k), where=actual > 0)
    denominator = precision + recall
    f1 = np.divide(2 * precision * recall, denominator, out=np.zeros(k), where=denominator > 0)
    present = actual > 0
    return precision, recall, float(f1[present].mean()) if present.any() else 0.0


def gate_evidence(
    y_true: np.ndarray,
    candidate_pred: np.ndarray,
    champion_pred: np.ndarray,
    class_names: list[str],
    metric: str,
    *,
    confidence: float,
    samples: int,
    max_recall_drop: float,
    seed: int = 0,
) -> GateEvidence:
    """The candidate's gain over the champion, paired, on the same test examples.

    A bootstrap interval of the gain (seeded: the same data, the same interval) and each
    class's change in recall.
    """
    k, n = len(class_names), len(y_true)
    rng = np.random.default_rng(seed)
    gains = np.empty(samples)
    for start in range(0, samples, 256):  # bounded memory: 256 resamples at a time
        rows = rng.integers(0, n, size=(min(256, samples - start), n))
        for i, idx in enumerate(rows):
            gains[start + i] = metric_value(y_true[idx], candidate_pred[idx], k, metric) - (
                metric_value(y_true[idx], champion_pred[idx], k, metric)
            )
    tail = 1.0 - confidence
    low, high = np.quantile(gains, [tail, 1.0 - tail])
    change = {}
    for c, name in enumerate(class_names):
        members = y_true == c
        if members.any():
            change[name] = round(
                float((candidate_pred[members] == c).mean() - (champion_pred[members] == c).mean()),
                6,
            )
    return GateEvidence(
        gain=round(
            metric_value(y_true, candidate_pred, k, metric)
            - metric_value(y_true, champion_pred, k, metric),
            6,
        ),
        gain_interval=(round(float(low), 6), round(float(high), 6)),
        confidence=confidence,
        bootstrap_samples=samples,
        class_recall_change=change,
        regressed_classes=[name for name, d in change.items() if d < -max_recall_drop],
    )


def _gain_clears(
    value: float, champion_value: float, min_improvement: float, evidence: GateEvidence | None
) -> tuple[bool, str]:
    """Whether the gain over the champion clears `min_improvement`, and the figures why."""
    if evidence is None:
        gain = value - champion_value
        return gain > min_improvement, f"({gain:+.4f}, needed more than +{min_improvement:.4f})"
    low, high = evidence.gain_interval
    why = (
        f"(gain {evidence.gain:+.4f}, {evidence.confidence:.0%} lower bound {low:+.4f}, "
        f"interval [{low:+.4f}, {high:+.4f}], needed more than +{min_improvement:.4f})"
    )
    if evidence.regressed_classes:
        why += f"; recall regressed on class(es) {', '.join(evidence.regressed_classes)}"
    return low > min_improvement and not evidence.regressed_classes, why


def decide(
    candidate: dict[str, float],
    champion: dict[str, float] | None,
    metric: str,
    min_improvement: float,
    floor: float,
    force_reason: str | None,
    evidence: GateEvidence | None = None,
    incomparable: str | None = None,
) -> PromotionDecision:
    """The promotion gate on `metric`.

    Promote when forced (with a reason), else when the candidate reaches the floor and, if
    there is a champion, is better by more than `min_improvement` with confidence: the lower
    bound of the paired bootstrap interval (`evidence`) clears it, and no class regresses.
    Without evidence the point gain must exceed it. Ties never promote. A champion of other
    classes (`incomparable` says how) cannot be compared: only forcing promotes then.

    Returns:
        Whether to promote, and the reason in words with the values and the interval.
    """
    value = candidate[metric]
    champion_value = champion[metric] if champion else None
    common = {
        "metric": metric,
        "candidate_value": value,
        "champion_value": champion_value,
        "evidence": evidence,
    }
    if force_reason:
        return PromotionDecision(
            promote=True, forced=True, reason=f"forced: {force_reason}", **common
        )
    if value < floor:
        return PromotionDecision(
            promote=False, reason=f"{metric} {value:.4f} is below the floor {floor:.4f}", **common
        )
    if incomparable:
        return PromotionDecision(
            promote=False,
            reason=f"{incomparable}: no comparison is possible; promote by forcing, with a reason",
            **common,
        )
    if champion_value is None:
        return PromotionDecision(
            promote=True,
            reason=f"first model: {metric} {value:.4f} passes the floor {floor:.4f}",
            **common,
        )
    promote, why = _gain_clears(value, champion_value, min_improvement, evidence)
    versus = f"{metric} {value:.4f} vs champion {champion_value:.4f}"
    return PromotionDecision(promote=promote, reason=f"{versus} {why}", **common)


class EvaluateParams(BaseModel):
    """The promotion gate: which model's champion to beat, by how much, and the floor."""

    model_name: str
    metric: str
    min_improvement: float
    floor: float
    force_reason: str | None = None
    confidence: float = 0.95
    bootstrap_samples: int = 2000
    max_class_recall_drop: float = 0.05

    @classmethod
    def with_defaults(cls, **given: Any) -> EvaluateParams:
        """Params from `given`, the rest (or any None) from LEPTON_* settings."""
        settings = get_settings()
        defaults = {
            "model_name": settings.model_name,
            "metric": settings.promotion_metric,
            "min_improvement": settings.min_improvement,
            "floor": settings.accuracy_floor,
            "confidence": settings.gate_confidence,
            "bootstrap_samples": settings.gate_bootstrap_samples,
            "max_class_recall_drop": settings.max_class_recall_drop,
        }
        params = cls(**{**defaults, **{k: v for k, v in given.items() if v is not None}})
        if params.metric not in METRICS:
            raise UsageError(
                f"LEPTON_PROMOTION_METRIC must be one of {METRICS}, not {params.metric}"
            )
        return params

    def decide(
        self,
        candidate: dict[str, float],
        champion: dict[str, float] | None,
        evidence: GateEvidence | None = None,
        incomparable: str | None = None,
    ) -> PromotionDecision:
        """The gate applied to the candidate's and the champion's metrics (see `decide`)."""
        return decide(
            candidate,
            champion,
            self.metric,
            self.min_improvement,
            self.floor,
            self.force_reason,
            evidence,
            incomparable,
        )


@records_result
def evaluate(
    trained: TrainResult,
    run_dir: str,
    params: EvaluateParams | None = None,
    parent_run_id: str | None = None,
) -> EvaluateResult:
    """Score the candidate and the current champion on the snapshot's test split; decide.

    Args:
        trained: train's result (the candidate's model file and run, its snapshot).
        run_dir: the run folder; the confusion matrix goes to its `evaluate/`.
        params: the gate [default: `EvaluateParams.with_defaults()`].
        parent_run_id: the MLflow pipeline run to nest under.

    Returns:
        Both models' test metrics and the decision (promote or not, and why).

    Raises:
        InputDataError (empty test split), TrackingUnavailableError.
    """
    params = params or EvaluateParams.with_defaults()
    tracking.check_tracking()
    manifest, (x_test, y_test) = _test_split(trained.snapshot_uri)
    class_names = manifest["class_names"]
    verified = litert.load_verified(trained.litert_model_uri, trained.litert_sha256)
    candidate_pred = predict(verified or load_keras(trained.model_uri), x_test)
    candidate, matrix = classification_metrics(y_test, candidate_pred, class_names)
    folder = RunFolder(run_dir)
    png = confusion_png(
        matrix, class_names, f"{params.model_name} candidate on {len(y_test)} test images"
    )
    storage.write_bytes(folder.confusion_matrix_uri, png)
    tags = {
        "lepton.snapshot_id": manifest["snapshot_id"],
        "lepton.train_run_id": trained.mlflow_run_id,
    }
    with tracking.step_run("evaluate", parent_run_id, tags=tags) as run:
        champion, evidence, other = _score_champion(
            params, x_test, y_test, candidate_pred, manifest
        )
        decision = params.decide(candidate, champion.metrics if champion else None, evidence, other)
        _log_evaluation(params, len(y_test), candidate, champion, decision, png, _runtime(verified))
    log.info("decision: %s", decision.reason)
    return EvaluateResult(
        run_dir=run_dir,
        snapshot_uri=trained.snapshot_uri,
        model_uri=trained.model_uri,
        mlflow_model_uri=trained.mlflow_model_uri,
        mlflow_run_id=run.info.run_id,
        mlflow_experiment_id=run.info.experiment_id,
        train_run_id=trained.mlflow_run_id,
        architecture=trained.architecture,
        model_name=params.model_name,
        metrics={k: round(v, 6) for k, v in candidate.items() if k in METRICS},
        champion=champion,
        decision=decision,
        confusion_matrix_uri=folder.confusion_matrix_uri,
        **_litert_fields(trained, verified),
    )


def _litert_fields(trained: TrainResult, verified: Any) -> dict[str, Any]:
    """The LiteRT copy evaluate predicted with, passed on for register to record."""
    return {
        "litert_model_uri": trained.litert_model_uri if verified else None,
        "litert_sha256": trained.litert_sha256 if verified else None,
        "predicted_with": _runtime(verified),
    }


def _runtime(verified: Any) -> str:
    """What predicted the candidate: its verified LiteRT copy, else Keras (TensorFlow)."""
    return "litert" if verified is not None else "keras"


def _test_split(snapshot_uri: str) -> tuple[dict[str, Any], tuple[np.ndarray, np.ndarray]]:
    manifest = read_manifest(snapshot_uri)
    x_test, y_test = load_split(snapshot_uri, "test")
    if len(x_test) == 0:
        raise InputDataError("the snapshot's test split is empty", where=snapshot_uri)
    return manifest, (x_test, y_test)


def _log_evaluation(
    params: EvaluateParams,
    test_examples: int,
    candidate: dict[str, float],
    champion: ChampionScore | None,
    decision: PromotionDecision,
    confusion_png_bytes: bytes,
    predicted_with: str = "keras",
) -> None:
    """The evaluate run in MLflow: both models' metrics, the gate, the decision, the matrix."""
    import mlflow

    mlflow.log_metrics({f"test_{k}": v for k, v in candidate.items()})
    mlflow.log_params(
        {
            "model_name": params.model_name,
            "metric": params.metric,
            "min_improvement": params.min_improvement,
            "floor": params.floor,
            "test_examples": test_examples,
        }
    )
    mlflow.set_tag("lepton.predicted_with", predicted_with)
    if champion:
        mlflow.log_metrics({f"champion_test_{k}": v for k, v in champion.metrics.items()})
    mlflow.set_tags({"lepton.promote": str(decision.promote), "lepton.decision": decision.reason})
    with tempfile.TemporaryDirectory() as scratch:
        local = os.path.join(scratch, "confusion_matrix.png")
        with open(local, "wb") as handle:
            handle.write(confusion_png_bytes)
        mlflow.log_artifact(local)
    if decision.evidence:
        low, high = decision.evidence.gain_interval
        mlflow.log_metrics({"gain": decision.evidence.gain, "gain_low": low, "gain_high": high})
    mlflow.log_dict(decision.model_dump(mode="json"), "decision.json")


def _score_champion(
    params: EvaluateParams,
    x_test: np.ndarray,
    y_test: np.ndarray,
    candidate_pred: np.ndarray,
    manifest: dict[str, Any],
) -> tuple[ChampionScore | None, GateEvidence | None, str | None]:
    """The champion's metrics on the same test split, and the paired evidence against it.

    For a champion of other classes, why there is no comparison instead.
    """
    import mlflow

    class_names = manifest["class_names"]
    version = champion_version(params.model_name)
    if version is None:
        log.info("no champion for %s yet", params.model_name)
        return None, None, None
    theirs = champion_classes(version)
    if theirs is not None and theirs != class_names:
        other = f"the class set changed from the champion v{version.version}'s {theirs} to {class_names}"
        log.warning("%s", other)
        return None, None, other
    model = litert.load_verified(*_champion_copy(version))
    mlflow.set_tag("lepton.champion_predicted_with", _runtime(model))
    if model is None:
        with tracking.tracking_errors("loading the champion model"):
            # by number: the alias could move between the lookup and the load
            model = load_registered_keras(f"models:/{params.model_name}/{version.version}")
    champion_pred = predict(model, x_test)
    metrics, _ = classification_metrics(y_test, champion_pred, class_names)
    log.info("champion v%s: accuracy %.4f", version.version, metrics["accuracy"])
    evidence = gate_evidence(
        y_test,
        candidate_pred,
        champion_pred,
        class_names,
        params.metric,
        confidence=params.confidence,
        samples=params.bootstrap_samples,
        max_recall_drop=params.max_class_recall_drop,
    )
    score = ChampionScore(
        version=str(version.version),
        metrics={k: round(v, 6) for k, v in metrics.items() if k in METRICS},
    )
    return score, evidence, None


def _champion_copy(version: Any) -> tuple[str | None, str | None]:
    """The champion's LiteRT copy and its sha256, if its train run logged that same sha256.

    Version tags can be edited by anyone with registry access; a run's parameters cannot be
    changed once logged, so the tag alone never decides what scores the champion.
    """
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    tags = version.tags or {}
    uri, sha256 = tags.get(litert.URI_TAG), tags.get(litert.SHA_TAG)
    if not uri or not sha256 or not version.run_id:
        return None, None
    try:
        logged = MlflowClient().get_run(version.run_id).data.params.get(litert.SHA_PARAM)
    except MlflowException as exc:  # its train run deleted: the registered model still scores
        log.warning("champion v%s's train run is not readable (%s)", version.version, exc)
        return None, None
    if logged != sha256:
        log.warning("champion v%s's LiteRT tags do not match its train run", version.version)
        return None, None
    return uri, sha256


def champion_classes(version: Any) -> list[str] | None:
    """A registered version's class set (see `registry.class_names_of`)."""
    return class_names_of(version)
