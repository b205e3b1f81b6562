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

from lepton_tasks import storage, tracking
from lepton_tasks.data.snapshot import load_split, read_manifest
from lepton_tasks.errors import InputDataError, UsageError
from lepton_tasks.models import load_keras, load_registered_keras
from lepton_tasks.registry import champion_version
from lepton_tasks.results import (
    ChampionScore,
    EvaluateResult,
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
    true_positive = np.diag(matrix).astype(float)
    predicted = matrix.sum(axis=0)
    actual = matrix.sum(axis=1)
    precision = np.divide(true_positive, predicted, out=np.zeros(k), where=predicted > 0)
    recall = np.divide(true_positive, actual, out=np.zeros(k), where=actual > 0)
    denominator = precision + recall
    f1 = np.divide(2 * precision * recall, denominator, out=np.zeros(k), where=denominator > 0)
    present = actual > 0
    metrics = {
        "accuracy": float(true_positive.sum() / max(matrix.sum(), 1)),
        "macro_f1": float(f1[present].mean()) if present.any() else 0.0,
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


def decide(
    candidate: dict[str, float],
    champion: dict[str, float] | None,
    metric: str,
    min_improvement: float,
    floor: float,
    force_reason: str | None,
) -> PromotionDecision:
    """The promotion gate on `metric`.

    Promote when forced (with a reason), else when the candidate reaches the floor and, if
    there is a champion, beats it by at least `min_improvement`.

    Returns:
        Whether to promote, and the reason in words with both values.
    """
    value = candidate[metric]
    champion_value = champion[metric] if champion else None
    common = {"metric": metric, "candidate_value": value, "champion_value": champion_value}
    if force_reason:
        return PromotionDecision(
            promote=True, forced=True, reason=f"forced: {force_reason}", **common
        )
    if value < floor:
        return PromotionDecision(
            promote=False, reason=f"{metric} {value:.4f} is below the floor {floor:.4f}", **common
        )
    if champion_value is None:
        return PromotionDecision(
            promote=True,
            reason=f"first model: {metric} {value:.4f} passes the floor {floor:.4f}",
            **common,
        )
    gain = value - champion_value
    if gain >= min_improvement:
        return PromotionDecision(
            promote=True,
            reason=f"{metric} {value:.4f} vs champion {champion_value:.4f} (+{gain:.4f}, "
            f"needed +{min_improvement:.4f})",
            **common,
        )
    return PromotionDecision(
        promote=False,
        reason=f"{metric} {value:.4f} vs champion {champion_value:.4f} ({gain:+.4f}, "
        f"needed +{min_improvement:.4f})",
        **common,
    )


class EvaluateParams(BaseModel):
    """The promotion gate: which model's champion to beat, by how much, and the floor."""

    model_name: str
    metric: str
    min_improvement: float
    floor: float
    force_reason: str | None = None

    @classmethod
    def with_defaults(cls, **given: Any) -> EvaluateParams:
        """Params from `given`, the rest (or any None) from LEPTON_* settings."""
        settings = get_settings()
        defaults = {
            "model_name": settings.model_name,
            "metric": settings.promotion_metric,
            "min_improvement": settings.min_improvement,
            "floor": settings.accuracy_floor,
        }
        params = cls(**{**defaults, **{k: v for k, v in given.items() if v is not None}})
        if params.metric not in METRICS:
            raise UsageError(
                f"LEPTON_PROMOTION_METRIC must be one of {METRICS}, not {params.metric}"
            )
        return params

    def decide(
        self, candidate: dict[str, float], champion: dict[str, float] | None
    ) -> PromotionDecision:
        """The gate applied to the candidate's and the champion's metrics (see `decide`)."""
        return decide(
            candidate, champion, self.metric, self.min_improvement, self.floor, self.force_reason
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
    candidate, matrix = classification_metrics(
        y_test, predict(load_keras(trained.model_uri), x_test), class_names
    )
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
        champion = _score_champion(params.model_name, x_test, y_test, class_names)
        decision = params.decide(candidate, champion.metrics if champion else None)
        _log_evaluation(params, len(y_test), candidate, champion, decision, png)
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
    )


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
    if champion:
        mlflow.log_metrics({f"champion_test_{k}": v for k, v in champion.metrics.items()})
    mlflow.set_tags({"lepton.promote": str(decision.promote), "lepton.decision": decision.reason})
    with tempfile.TemporaryDirectory() as scratch:
        local = os.path.join(scratch, "confusion_matrix.png")
        with open(local, "wb") as handle:
            handle.write(confusion_png_bytes)
        mlflow.log_artifact(local)
    mlflow.log_dict(decision.model_dump(), "decision.json")


def _score_champion(
    model_name: str, x_test: np.ndarray, y_test: np.ndarray, class_names: list[str]
) -> ChampionScore | None:
    version = champion_version(model_name)
    if version is None:
        log.info("no champion for %s yet", model_name)
        return None
    with tracking.tracking_errors("loading the champion model"):
        # by number: the alias could move between the lookup and the load
        model = load_registered_keras(f"models:/{model_name}/{version.version}")
    metrics, _ = classification_metrics(y_test, predict(model, x_test), class_names)
    log.info("champion v%s: accuracy %.4f", version.version, metrics["accuracy"])
    return ChampionScore(
        version=str(version.version),
        metrics={k: round(v, 6) for k, v in metrics.items() if k in METRICS},
    )
