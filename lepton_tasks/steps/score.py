"""Score: the champion's predictions for new, unlabelled data, written as Parquet.

The champion is resolved once and pinned by version number, so a promotion during a long batch
cannot mix two models' predictions. Every format ingest reads is read here too, labels
optional: where a batch has them, the step also reports the champion's accuracy on it
(labelled feedback). Each batch becomes one Parquet file, written under a hidden name and
renamed when whole; batches of the scoring inbox then move to `<inbox>/_scored/`, bad ones to
`<inbox>/_quarantine/`, so each batch is scored once and nothing is lost.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime

from lepton_tasks import storage, tracking
from lepton_tasks.data import readers
from lepton_tasks.errors import InputDataError, NothingToIngestError
from lepton_tasks.predictions import (
    PinnedModel,
    PredictionsFile,
    fits,
    pin_champion,
    predict_probabilities,
    production_experiment,
)
from lepton_tasks.production_stats import ImageStats
from lepton_tasks.quarantine import refuse_linked_folder, same_location, set_aside
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
    """Each entry's batches, then the entry out of the inbox.

    A bad entry is quarantined and the others are still scored; its error is raised last.
    """
    single_file, names, errors = output_uri.endswith(".parquet"), set[str](), []
    for entry, found in _entries(input_uri, fmt):
        try:
            if isinstance(found, InputDataError):
                raise found
            done = []
            for batch in found:
                target = output_uri if single_file else _batch_file(output_uri, batch.name, names)
                append = single_file and bool(scored or done)
                stats = _score_batch(batch, pinned, target, chunk_size, append=append)
                done.append((batch, target, stats))
        except InputDataError as exc:
            exc.batch_uri = exc.batch_uri or entry
            set_aside(exc, input_uri)
            errors.append(exc)
            continue
        moved_to = _move_out(entry, input_uri)
        for batch, target, stats in done:
            scored.append(_scored(batch, target, stats, moved_to))
            total.merge(stats)
    if errors:
        others = f" ({len(errors) - 1} more bad batch(es) quarantined too)" if errors[1:] else ""
        errors[0].message += others
        raise errors[0]


def _entries(
    input_uri: str, fmt: str
) -> Iterator[tuple[str, list[readers.Batch] | InputDataError]]:
    """(entry, its batches or why they cannot be read).

    Each batch of the scoring inbox on its own, so one bad batch holds up no other; any
    other input as one entry.
    """
    with readers.labels_optional():
        if same_location(input_uri, get_settings().scoring_inbox):
            yield from readers.zone_entries(input_uri)
            return
        try:
            found: list[readers.Batch] | InputDataError = readers.open_source(input_uri, fmt)
        except InputDataError as exc:
            found = exc
        yield input_uri, found


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
    """An empty inbox (or folder of batches) is a skip, not a failure: nothing landed yet."""
    inbox = get_settings().scoring_inbox
    with readers.labels_optional():
        if not same_location(input_uri, inbox) and not (
            storage.is_dir(input_uri) and readers.detect_format(input_uri) == "folder"
        ):
            return  # a dataset: reading it says whether it is good
        if not storage.exists(input_uri):
            raise NothingToIngestError(
                "nothing to score: the inbox does not exist", where=input_uri
            )
        if readers.is_empty_landing_zone(input_uri):
            raise NothingToIngestError("nothing to score: no batch has landed", where=input_uri)


def _batch_file(output_uri: str, batch_name: str, used: set[str]) -> str:
    """One file name per batch: its path in the inbox, flattened, unique, not too long."""
    safe = batch_name.replace("/", "__").replace("\\", "__").lstrip("._") or "batch"
    if len(safe) > 120:
        safe = f"{safe[:100]}-{hashlib.sha256(batch_name.encode()).hexdigest()[:12]}"
    unique, n = safe, 1
    while unique in used:
        n += 1
        unique = f"{safe}-{n}"
    used.add(unique)
    return storage.join(output_uri, f"{unique}.parquet")


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
    with PredictionsFile(target, pinned, append=append) as out, readers.labels_optional():
        offset = 0
        for images, labels in _chunks(batch, chunk_size, where):
            probabilities = predict_probabilities(pinned, images)
            out.write(_keys(batch, offset, len(images)), probabilities, labels)
            predicted = probabilities.argmax(axis=1)
            stats.add(images, predicted)
            stats.count_hits(labels, predicted, pinned.class_names)
            offset += len(images)
    return stats


def _chunks(batch: readers.Batch, chunk_size: int, where: str) -> Iterator[readers.Chunk]:
    """The batch's chunks.

    What goes wrong reading them is the batch's fault (InputDataError, quarantined), unlike a
    failure to predict or to write, which is not the data's.
    """
    chunks = batch.read_chunks(chunk_size)
    while True:
        try:
            chunk = next(chunks)
        except StopIteration:
            return
        except InputDataError as exc:
            exc.batch_uri = exc.batch_uri or batch.origin
            raise
        except readers.READ_ERRORS as exc:
            error = readers.unreadable(exc, where)
            error.batch_uri = batch.origin
            raise error from exc
        yield chunk


def _check_fits(batch: readers.Batch, pinned: PinnedModel, where: str) -> None:
    shape, wanted = tuple(batch.image_shape), pinned.input_shape
    if not fits(shape, wanted):
        error = InputDataError(
            f"images are {'x'.join(map(str, shape))}, but {pinned.name} v{pinned.version} takes "
            f"{'x'.join(map(str, wanted))}",
            where=where,
        )
        error.batch_uri = batch.origin
        raise error


def _keys(batch: readers.Batch, offset: int, count: int) -> list[str]:
    """Each example's key: its file in an image folder (`cat/1.png`), else `<batch>:<index>`."""
    if batch.format == "images":
        root = batch.uri.rstrip("/") + "/"
        files = batch.files[offset : offset + count]
        return [storage.as_text(uri.removeprefix(root)) for uri in files]
    return [f"{storage.as_text(batch.name)}:{i}" for i in range(offset, offset + count)]


def _move_out(entry: str, input_uri: str) -> str | None:
    """An inbox entry, scored whole, into `<inbox>/_scored/<time>-<random>/`; else nothing.

    Refuses a `_scored` that is a link (a producer could plant one to send batches anywhere),
    and the folder is new and unguessable, so nothing already there is written through.
    """
    inbox = get_settings().scoring_inbox
    if not same_location(input_uri, inbox) or not storage.exists(entry):
        return None
    root = storage.join(inbox, SCORED_FOLDER)
    refuse_linked_folder(root)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    folder = storage.join(root, f"{stamp}-{uuid.uuid4().hex[:8]}")
    storage.makedirs(folder)
    moved_to = storage.join(folder, storage.basename(entry))
    storage.move(entry, moved_to)
    return moved_to


def _scored(
    batch: readers.Batch, target: str, stats: ImageStats, moved_to: str | None
) -> ScoredBatch:
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
