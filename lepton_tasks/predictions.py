"""Predictions with a registered model: the champion pinned by version, probabilities for
raw images, and the Parquet file they are written to (scoring and monitoring share these)."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np

from lepton_tasks import registry, storage, tracking
from lepton_tasks.data.snapshot import _key
from lepton_tasks.errors import RegistryError, UsageError
from lepton_tasks.redact import redact
from lepton_tasks.settings import get_settings

log = logging.getLogger(__name__)
PREDICT_BATCH = 512


def production_experiment() -> str:
    """Scoring and monitoring runs live beside the training experiment, not in it."""
    return f"{get_settings().experiment_name}-production"


@dataclass(frozen=True)
class PinnedModel:
    """A registered version, loaded, with what its outputs mean."""

    name: str
    version: str
    class_names: list[str]
    model: Any

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.model.input_shape[1:])


def pin_champion(model_name: str) -> PinnedModel:
    """The champion, loaded by its version number (the alias may move meanwhile).

    Raises:
        RegistryError: the model has no champion yet.
    """
    tracking.setup(production_experiment())
    version = registry.champion_version(model_name)
    if version is None:
        raise RegistryError(
            f"'{model_name}' has no champion to score with; train one first (make demo)",
            where=redact(tracking.tracking_uri()),
        )
    return pin_version(model_name, version)


def pin_version(model_name: str, version: Any) -> PinnedModel:
    """A registered version (MLflow's ModelVersion), loaded by its number."""
    from lepton_tasks.models import load_registered_keras

    with tracking.tracking_errors("loading the model"):
        model = load_registered_keras(f"models:/{model_name}/{version.version}")
    classes = registry.class_names_of(version) or [str(i) for i in range(model.output_shape[-1])]
    log.info("scoring with %s v%s (%d classes)", model_name, version.version, len(classes))
    return PinnedModel(model_name, str(version.version), classes, model)


def fits(image_shape: Any, input_shape: tuple[int, ...]) -> bool:
    """Whether images of `image_shape` are what a model of `input_shape` takes (a grey image
    may come without its channel axis)."""
    shape = tuple(image_shape)
    return shape == input_shape or (*shape, 1) == input_shape


def last_monitoring_run(model_name: str, version: str | None = None) -> Any | None:
    """The newest monitoring run of `model_name` (of one champion `version`), or None.

    Reads only: no experiment is created for a page that merely looks.
    """
    import mlflow

    query = (
        f"tags.`lepton.step` = 'monitor' and tags.`lepton.model_name` = '{quoted_name(model_name)}'"
    )
    if version is not None:
        query += f" and tags.`lepton.model_version` = '{version}'"
    mlflow.set_tracking_uri(tracking.check_tracking())
    with tracking.tracking_errors("reading the monitoring runs"):
        experiment = mlflow.get_experiment_by_name(production_experiment())
        if experiment is None:
            return None
        runs = mlflow.search_runs(
            [experiment.experiment_id],
            query,
            max_results=1,
            order_by=["attributes.start_time DESC"],
            output_format="list",
        )
    return runs[0] if runs else None


def latest_monitoring(model_name: str) -> dict[str, Any] | None:
    """The last monitoring run of `model_name`: when, alert, and each check (for the page)."""
    run = last_monitoring_run(model_name)
    if run is None:
        return None
    return {
        "at": datetime.fromtimestamp(run.info.start_time / 1000, UTC).strftime(
            "%Y-%m-%d %H:%M UTC"
        ),
        "version": run.data.tags.get("lepton.model_version"),
        "alert": run.data.tags.get("lepton.alert") == "true",
        "checks": _checks(run.data.tags.get("lepton.checks", "[]")),
        "examples": int(run.data.metrics.get("production_examples", 0)),
        "run_id": run.info.run_id,
        "experiment_id": run.info.experiment_id,
    }


def _checks(tag: str) -> list[dict[str, Any]]:
    """The checks a monitoring run recorded; a tag someone edited into nonsense is skipped."""
    try:
        found = json.loads(tag)
        return [
            {
                "name": str(c["name"]),
                "value": float(c["value"]),
                "threshold": float(c["threshold"]),
                "alert": bool(c["alert"]),
                "detail": str(c.get("detail", "")),
            }
            for c in found
        ]
    except (ValueError, TypeError, KeyError):
        log.warning("unreadable lepton.checks tag: %.80s", tag)
        return []


def quoted_name(model_name: str) -> str:
    """A model name safe inside a search filter's quotes (MLflow has no escape for them)."""
    if "'" in model_name:
        raise UsageError(f"a registered model name cannot hold a quote: {model_name!r}")
    return model_name


def predict_probabilities(pinned: PinnedModel, images: np.ndarray) -> np.ndarray:
    """One probability per class for each raw 0..255 image (with or without a channel)."""
    x = images.reshape(len(images), *pinned.input_shape).astype(np.float32)
    probabilities = pinned.model.predict(x, batch_size=PREDICT_BATCH, verbose=0)
    return np.asarray(probabilities, dtype=np.float32)


class PredictionsFile:
    """One Parquet file of predictions, written under a hidden name and renamed when whole.

    With `append`, rows go on after the file's existing ones (a single-file output of several
    batches): the file is rewritten whole, never left half-written.
    """

    def __init__(self, target: str, pinned: PinnedModel, *, append: bool) -> None:
        self.target, self.pinned, self.append = target, pinned, append
        folder, name = target.rsplit("/", 1) if "/" in target else (".", target)
        self.partial = storage.join(folder, f".{name}.partial")
        self.scored_at = datetime.now(UTC)

    def __enter__(self) -> PredictionsFile:
        import pyarrow.parquet as pq

        storage.makedirs(self.partial.rsplit("/", 1)[0])
        self.handle = storage.open_uri(self.partial, "wb")
        self.writer = pq.ParquetWriter(self.handle, self._schema())
        if self.append and storage.exists(self.target):
            with storage.open_uri(self.target, "rb") as earlier:
                self.writer.write_table(pq.read_table(earlier))
        return self

    def _schema(self) -> Any:
        import pyarrow as pa

        classes = len(self.pinned.class_names)
        fields = [
            ("key", pa.string()),
            ("predicted_class", pa.string()),
            ("confidence", pa.float32()),
            ("probabilities", pa.list_(pa.float32(), classes)),
            ("label", pa.string()),
            ("model_name", pa.string()),
            ("model_version", pa.string()),
            ("scored_at", pa.timestamp("us", tz="UTC")),
        ]
        metadata = {"lepton.class_names": json.dumps(self.pinned.class_names)}
        return pa.schema(fields, metadata=metadata)

    def write(self, keys: list[str], probabilities: np.ndarray, labels: np.ndarray) -> None:
        import pyarrow as pa

        n, classes = probabilities.shape
        names = np.asarray(self.pinned.class_names, dtype=object)
        columns = {
            "key": keys,
            "predicted_class": names[probabilities.argmax(axis=1)].tolist(),
            "confidence": probabilities.max(axis=1),
            "probabilities": pa.FixedSizeListArray.from_arrays(
                pa.array(probabilities.reshape(-1)), classes
            ),
            "label": [None if label is None else _key(label) for label in labels],
            "model_name": [self.pinned.name] * n,
            "model_version": [self.pinned.version] * n,
            "scored_at": pa.array([self.scored_at] * n, pa.timestamp("us", tz="UTC")),
        }
        self.writer.write_table(pa.table(columns, schema=self._schema()))

    def __exit__(self, kind: Any, *_: Any) -> None:
        self.writer.close()
        self.handle.close()
        if kind is None:
            storage.move(self.partial, self.target)
        elif storage.exists(self.partial):
            storage.remove(self.partial)
