"""Result models: the contract between steps, and what XCom carries.

Each step returns one of these; the CLI prints it as the last stdout line, and the step keeps it
in its run folder (`result_uri`). A downstream step gets an upstream result as an argument: the
URI of that file, read with `read_result`.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from datetime import datetime
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field
from pydantic_core import PydanticSerializationError

from lepton_tasks import storage


class StepResult(BaseModel):
    model_config = ConfigDict(extra="forbid")

    step: str
    run_dir: str
    ok: bool = True
    # Where this result is kept, so a downstream step can be handed it by URI.
    result_uri: str | None = None

    def to_json(self) -> str:
        """The result as one line of JSON. A path read from disk may hold bytes that are not
        UTF-8 (lone surrogates in Python), which pydantic refuses: then JSON's own `\\udcXX`
        escapes keep it exact, so the reader gets the same path back."""
        try:
            return self.model_dump_json()
        except PydanticSerializationError:
            return json.dumps(self.model_dump(mode="json"), separators=(",", ":"))


class BatchInfo(BaseModel):
    name: str
    uri: str
    count: int
    # The landing-zone entry the batch came from, when the source is a landing zone.
    origin: str | None = None


class IngestResult(StepResult):
    step: Literal["ingest"] = "ingest"
    snapshot_uri: str
    snapshot_id: str
    sha256: str
    count: int
    split_counts: dict[str, int]
    image_shape: list[int]
    class_names: list[str]
    source: str
    format: str
    batches: list[BatchInfo] = Field(default_factory=list)
    # The landing-zone batches read were those landed by then (None: every batch).
    as_of: datetime | None = None


class ValidateResult(StepResult):
    step: Literal["validate"] = "validate"
    snapshot_uri: str
    snapshot_id: str
    success: bool
    evaluated: int
    summary_uri: str
    data_docs_uri: str | None = None
    reference_snapshot_id: str | None = None


class TrainResult(StepResult):
    step: Literal["train"] = "train"
    snapshot_uri: str
    model_uri: str
    mlflow_model_uri: str
    mlflow_run_id: str
    mlflow_experiment_id: str
    architecture: str
    epochs_run: int
    best_epoch: int
    metrics: dict[str, float]
    train_seconds: float
    images_per_second: float
    resumed_from_epoch: int = 0
    device: str
    # Set when the result is an earlier run's, reused for the same content (content_cache).
    reused_from_run: str | None = None
    # The model's LiteRT copy, verified to predict as the Keras model does (lepton_tasks.litert)
    litert_model_uri: str | None = None
    litert_sha256: str | None = None


class TrainWorkerResult(StepResult):
    """What a worker other than the chief prints: the chief's TrainResult is the step's."""

    step: Literal["train-worker"] = "train-worker"
    worker: int
    workers: int
    epochs_run: int
    train_seconds: float
    images_per_second: float


class ChampionScore(BaseModel):
    version: str
    metrics: dict[str, float]


class GateEvidence(BaseModel):
    """The candidate against the champion on the same test examples, paired."""

    gain: float
    gain_interval: tuple[float, float]  # two-sided at 2 x confidence - 1; its low end decides
    confidence: float  # one-sided, for the lower bound
    bootstrap_samples: int
    class_recall_change: dict[str, float]
    regressed_classes: list[str]


class PromotionDecision(BaseModel):
    promote: bool
    reason: str
    metric: str
    candidate_value: float
    champion_value: float | None = None
    forced: bool = False
    evidence: GateEvidence | None = None


class EvaluateResult(StepResult):
    step: Literal["evaluate"] = "evaluate"
    snapshot_uri: str
    model_uri: str
    mlflow_model_uri: str
    mlflow_run_id: str
    mlflow_experiment_id: str
    train_run_id: str
    architecture: str
    model_name: str
    metrics: dict[str, float]
    champion: ChampionScore | None = None
    decision: PromotionDecision
    confusion_matrix_uri: str
    litert_model_uri: str | None = None
    litert_sha256: str | None = None
    predicted_with: str = "keras"  # or "litert": the candidate's verified LiteRT copy


class RegisterResult(StepResult):
    step: Literal["register"] = "register"
    model_name: str
    version: str
    aliases: list[str]
    promoted: bool
    champion_version: str | None
    previous_champion_version: str | None = None
    already_registered: bool = False
    metrics: dict[str, float] = Field(default_factory=dict)


class ScoredBatch(BaseModel):
    name: str
    uri: str
    count: int
    output_uri: str
    accuracy: float | None = None
    # Where the scored batch went (scoring inbox batches move to <inbox>/_scored/).
    moved_to: str | None = None


class ScoreResult(StepResult):
    step: Literal["score"] = "score"
    model_name: str
    model_version: str
    input: str
    output: str
    count: int
    batches: list[ScoredBatch] = Field(default_factory=list)
    class_names: list[str]
    predicted_counts: dict[str, int] = Field(default_factory=dict)
    accuracy: float | None = None
    pixel_mean: float | None = None
    mlflow_run_id: str | None = None
    mlflow_experiment_id: str | None = None
    seconds: float = 0.0


class DriftCheck(BaseModel):
    name: str
    value: float
    threshold: float
    alert: bool
    detail: str = ""


class MonitorResult(StepResult):
    step: Literal["monitor"] = "monitor"
    model_name: str
    champion_version: str | None
    window_hours: float
    production_examples: int = 0
    checks: list[DriftCheck] = Field(default_factory=list)
    alert: bool = False
    # An alert the last check of this version did not raise: what is sent, what retrains.
    new_alert: bool = False
    # One line: what crossed which threshold (empty when nothing did).
    reasons: list[str] = Field(default_factory=list)
    sources: list[str] = Field(default_factory=list)
    mlflow_run_id: str | None = None
    mlflow_experiment_id: str | None = None

    def summary(self) -> str:
        if not self.checks:
            return f"{self.model_name}: not enough production data to judge"
        state = "ALERT: " + "; ".join(self.reasons) if self.alert else "no drift"
        return f"{self.model_name} v{self.champion_version}: {state}"


class SimulateLandingResult(StepResult):
    step: Literal["simulate-landing"] = "simulate-landing"
    landing_uri: str
    batches: list[BatchInfo]


class PipelineStartResult(StepResult):
    step: Literal["pipeline-start"] = "pipeline-start"
    mlflow_run_id: str
    mlflow_experiment_id: str
    dag_id: str
    dag_run_id: str


class InputCheckResult(StepResult):
    step: Literal["check-inputs"] = "check-inputs"
    snapshot_id: str
    # The params that decide the outcome (and the model name), as the key has them.
    params: dict[str, Any]
    champion_version: str | None
    # The version an earlier run with the same inputs registered: nothing to do. None: run.
    unchanged_since: str | None = None
    unchanged_since_run: str | None = None
    forced: list[str] = Field(default_factory=list)
    # The settings, seed, code version and registry the key was made of (pipeline-end keys
    # the finished run with the same ones).
    environment: dict[str, Any] = Field(default_factory=dict)


class PipelineEndResult(StepResult):
    step: Literal["pipeline-end"] = "pipeline-end"
    mlflow_run_id: str
    status: str
    failed_step: str | None = None
    error: str | None = None
    # One line on what the run did, for the DAG run's note and the MLflow run.
    summary: str = ""


class VersionInfo(BaseModel):
    version: str
    aliases: list[str]
    metrics: dict[str, float]
    snapshot_id: str | None = None
    snapshot_count: int | None = None
    architecture: str | None = None
    # What the model's outputs mean, in order (versions from before the tag: unknown).
    class_names: list[str] | None = None
    pipeline_run_id: str | None = None
    dag_id: str | None = None
    dag_run_id: str | None = None
    train_run_id: str | None = None
    decision: str | None = None
    created_at: str

    def metrics_text(self) -> str:
        return ", ".join(f"{k} {val:.4f}" for k, val in sorted(self.metrics.items()))

    def classes_text(self) -> str:
        if not self.class_names:
            return "?"
        shown = ", ".join(self.class_names[:6])
        more = f", … ({len(self.class_names)})" if len(self.class_names) > 6 else ""
        return shown + more


class ModelInfo(StepResult):
    step: Literal["model-info"] = "model-info"
    model_name: str
    tracking_uri: str
    versions: list[VersionInfo]
    promotion_history: list[dict[str, Any]] = Field(default_factory=list)

    def summary(self) -> str:
        lines = [f"Registered model '{self.model_name}' ({self.tracking_uri})"]
        for v in self.versions:
            metrics = v.metrics_text()
            aliases = f" [{', '.join(v.aliases)}]" if v.aliases else ""
            lines.append(
                f"  v{v.version}{aliases}: {metrics}; {v.architecture}, snapshot {v.snapshot_id} "
                f"({v.snapshot_count} examples); {v.decision}"
            )
        return "\n".join(lines)


class RollbackResult(StepResult):
    step: Literal["rollback"] = "rollback"
    model_name: str
    champion_version: str
    previous_champion_version: str | None


R = TypeVar("R", bound="StepResult")


def read_result(uri: str, model: type[R]) -> R:
    """An upstream step's result, from the URI it was handed as.

    Raises:
        UpstreamMissingError: nothing is there (the upstream step did not run or finish).
    """
    from lepton_tasks.errors import UpstreamMissingError

    if not storage.exists(uri):
        step = model.model_fields["step"].default
        raise UpstreamMissingError(
            f"no result of step '{step}' here; run `lepton-tasks {step}` first or pass the "
            "URI of its result",
            where=uri,
        )
    return model.model_validate(storage.read_json(uri))


def records_result(step_function: Callable[..., R]) -> Callable[..., R]:
    """Every step keeps its result in its run folder, however it was called."""
    from lepton_tasks.run_folder import RunFolder

    @functools.wraps(step_function)
    def wrapper(*args: Any, **kwargs: Any) -> R:
        result = step_function(*args, **kwargs)
        folder = RunFolder(result.run_dir)
        result.result_uri = folder.result_uri(result.step)
        folder.save_result(result.step, result.model_dump(mode="json"))
        return result

    return wrapper
