"""Score: the champion's predictions for new, unlabelled data, written as Parquet.

The champion is resolved once and pinned by version number, so a promotion during a long batch
cannot mix two models' predictions. Every format ingest reads is read here too, labels
optional: where a batch has them, the step also reports the champion's accuracy on it
(labelled feedback). Each batch becomes one Parquet file, written under a hidden name and
renamed when whole; batches of the scoring inbox then move to `<inbox>/_scored/`, bad ones to
`<inbox>/_quarantine/`, so each batch is scored once and nothing is lost.
"""

from __future__ import annotations

import json
import logging
import time
from datetime import UTC, datetime

import numpy as np

from lepton_tasks import storage, tracking
from lepton_tasks.data import readers
from lepton_tasks.data.snapshot import _key
from lepton_tasks.errors import InputDataError, NothingToIngestError
from lepton_tasks.predictions import (
    PinnedModel,
    PredictionsFile,
    pin_champion,
    predict_probabilities,
    production_experiment,
)
from lepton_tasks.production_stats import ImageStats
from lepton_tasks.quarantine import same_location, set_aside
from lepton_tasks.results import ScoredBatch, ScoreResult, records_result
from lepton_tasks.settings import get_settings

log = logging.getLogger(__name__)

SCORED_FOLDER = "_scored"


@records_result
def score(
    model_name: str,
    input_uri: str,
    output_uri: str,
    run_dir: str | None = None,
    *,
    fmt: str = "auto",
    chunk_size: int = 2048,
) -> ScoreResult:
    """Score every batch of `input_uri` with the champion of `model_name`.

    Args:
        model_name: the registered model; its `champion` is pinned by version for the call.
        input_uri: a dataset, or a folder of batches (the scoring inbox: LEPTON_SCORING_INBOX_URI).
        output_uri: a `.parquet` file (every batch in it), or a folder (one file per batch).
        run_dir: where the step keeps its result [default: <output folder>/_lepton].
        fmt: as ingest's `--format`.
        chunk_size: images read and predicted at a time, which bounds memory.

    Returns:
        The files written, the version used, predicted-class counts, accuracy where labelled.

    Raises:
        RegistryError (no champion), NothingToIngestError (an empty inbox), InputDataError (a
        batch is unreadable or does not fit: quarantined; those before it are kept).
    """
    started = time.monotonic()
    run_dir = run_dir or _result_folder(output_uri, output_uri.endswith(".parquet"))
    _check_something_to_score(input_uri)
    pinned = pin_champion(model_name)
    total = ImageStats(len(pinned.class_names))
    scored: list[ScoredBatch] = []
    with tracking.step_run(
        "score", None, tags=_run_tags(pinned, input_uri), experiment=production_experiment()
    ) as run:
        try:
            _score_all(pinned, input_uri, fmt, output_uri, chunk_size, total, scored)
        finally:
            _log_run(total, scored, output_uri)
    log.info("scored %d images in %d batch(es) with v%s", total.count, len(scored), pinned.version)
    return ScoreResult(
        run_dir=run_dir,
        model_name=model_name,
        model_version=pinned.version,
        input=input_uri,
        output=output_uri,
        count=total.count,
        batches=scored,
        class_names=pinned.class_names,
        predicted_counts=dict(zip(pinned.class_names, map(int, total.class_counts), strict=True)),
        accuracy=total.accuracy,
        pixel_mean=total.pixel_mean if total.count else None,
        mlflow_run_id=run.info.run_id,
        mlflow_experiment_id=run.info.experiment_id,
        seconds=round(time.monotonic() - started, 3),
    )


def _score_all(
    pinned: PinnedModel,
    input_uri: str,
    fmt: str,
    output_uri: str,
    chunk_size: int,
    total: ImageStats,
    scored: list[ScoredBatch],
) -> None:
    """Each batch into `scored` and `total`; a bad one is quarantined and raised."""
    single_file = output_uri.endswith(".parquet")
    try:
        for batch in _batches(input_uri, fmt):
            target = output_uri if single_file else _batch_file(output_uri, batch.name)
            stats = _score_batch(batch, pinned, target, chunk_size, append=bool(scored))
            scored.append(_finish_batch(batch, target, stats, input_uri))
            total.merge(stats)
    except InputDataError as exc:
        set_aside(exc, input_uri)
        raise


def _result_folder(output_uri: str, single_file: bool) -> str:
    """`_lepton` beside the predictions: "_" keeps it out of a reader of the folder."""
    folder = output_uri.rsplit("/", 1)[0] if single_file else output_uri
    return storage.join(folder, "_lepton")


def _run_tags(pinned: PinnedModel, input_uri: str) -> dict[str, str]:
    return {
        "lepton.model_name": pinned.name,
        "lepton.model_version": pinned.version,
        "lepton.class_names": json.dumps(pinned.class_names),
        "lepton.input": input_uri,
        "mlflow.note.content": f"Scored with {pinned.name} v{pinned.version} "
        f"(models:/{pinned.name}/{pinned.version})",
    }


def _check_something_to_score(input_uri: str) -> None:
    """An empty inbox (or folder) is a skip, not a failure: nothing landed yet."""
    inbox = get_settings().scoring_inbox
    if not (same_location(input_uri, inbox) or storage.is_dir(input_uri)):
        return
    with readers.labels_optional():
        if readers.is_empty_landing_zone(input_uri):
            raise NothingToIngestError("nothing to score: no batch has landed", where=input_uri)


def _batches(input_uri: str, fmt: str) -> list[readers.Batch]:
    with readers.labels_optional():
        return readers.open_source(input_uri, fmt)


def _batch_file(output_uri: str, batch_name: str) -> str:
    safe = batch_name.replace("/", "__").replace("\\", "__").lstrip("._") or "batch"
    return storage.join(output_uri, f"{safe}.parquet")


def _score_batch(
    batch: readers.Batch,
    pinned: PinnedModel,
    target: str,
    chunk_size: int,
    *,
    append: bool,
) -> ImageStats:
    """Predict a batch chunk by chunk into `target` (whole or not at all); its statistics."""
    stats = ImageStats(len(pinned.class_names))
    where = batch.origin or batch.uri
    _check_fits(batch, pinned, where)
    with PredictionsFile(target, pinned, append=append) as out:
        offset = 0
        with readers.labels_optional():
            try:
                for images, labels in batch.read_chunks(chunk_size):
                    probabilities = predict_probabilities(pinned, images)
                    out.write(_keys(batch, offset, len(images)), probabilities, labels)
                    predicted = probabilities.argmax(axis=1)
                    stats.add(images, predicted)
                    _count_correct(stats, labels, predicted, pinned.class_names)
                    offset += len(images)
            except InputDataError as exc:
                exc.batch_uri = exc.batch_uri or batch.origin
                raise
            except readers.READ_ERRORS as exc:
                error = InputDataError(
                    f"unreadable batch: {type(exc).__name__}: {exc}", where=where
                )
                error.batch_uri = batch.origin
                raise error from exc
    return stats


def _check_fits(batch: readers.Batch, pinned: PinnedModel, where: str) -> None:
    shape, wanted = tuple(batch.image_shape), pinned.input_shape
    if shape != wanted and (*shape, 1) != wanted:
        error = InputDataError(
            f"images are {'x'.join(map(str, shape))}, but {pinned.name} v{pinned.version} takes "
            f"{'x'.join(map(str, wanted))}",
            where=where,
        )
        error.batch_uri = batch.origin
        raise error


def _keys(batch: readers.Batch, offset: int, count: int) -> list[str]:
    """Each example's key: its file for image folders, else `<batch>:<index>`."""
    if batch.format == "images":
        return [storage.basename(uri) for uri in batch.files[offset : offset + count]]
    return [f"{batch.name}:{i}" for i in range(offset, offset + count)]


def _count_correct(
    stats: ImageStats, labels: np.ndarray, predicted: np.ndarray, class_names: list[str]
) -> None:
    known = np.asarray([label is not None for label in labels], dtype=bool)
    if not known.any():
        return
    truth = np.asarray([_key(label) for label in labels[known]], dtype=object)
    guessed = np.asarray(class_names, dtype=object)[predicted[known]]
    stats.labelled += int(known.sum())
    stats.correct += int((truth == guessed).sum())


def _finish_batch(
    batch: readers.Batch, target: str, stats: ImageStats, input_uri: str
) -> ScoredBatch:
    moved_to = None
    inbox = get_settings().scoring_inbox
    if batch.origin and same_location(input_uri, inbox) and storage.exists(batch.origin):
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
        folder = storage.join(inbox, SCORED_FOLDER, stamp)
        storage.makedirs(folder)
        moved_to = storage.join(folder, storage.basename(batch.origin))
        storage.move(batch.origin, moved_to)
    return ScoredBatch(
        name=batch.name,
        uri=batch.uri,
        count=stats.count,
        output_uri=target,
        accuracy=stats.accuracy,
        moved_to=moved_to,
    )


def _log_run(stats: ImageStats, scored: list[ScoredBatch], output_uri: str) -> None:
    import mlflow

    with tracking.tracking_errors("logging the scoring run"):
        mlflow.log_metrics(stats.as_metrics() | {"batches": float(len(scored))})
        mlflow.set_tag("lepton.output", output_uri)
        mlflow.log_dict([b.model_dump(mode="json") for b in scored], "batches.json")
