"""Ingest: read a labeled image dataset from any supported source into a normalized snapshot."""

from __future__ import annotations

import logging

from lepton_tasks import storage
from lepton_tasks.data import readers
from lepton_tasks.data.snapshot import SnapshotWriter
from lepton_tasks.errors import InputDataError, NothingToIngestError, UsageError
from lepton_tasks.quarantine import quarantine_bad_data
from lepton_tasks.results import BatchInfo, IngestResult, records_result
from lepton_tasks.run_folder import RunFolder
from lepton_tasks.settings import get_settings

log = logging.getLogger(__name__)


@records_result
def ingest(
    source: str,
    run_dir: str,
    fmt: str = "auto",
    class_names: list[str] | None = None,
    chunk_size: int = readers.CHUNK_SIZE,
    when_empty: str = "fail",
) -> IngestResult:
    """Read `source` into a normalized, content-addressed snapshot in the run folder.

    Args:
        source: a dataset URI (see `readers.open_source`) or a landing-zone folder of batches.
        run_dir: the run folder; the snapshot goes to its `ingest/snapshot`.
        fmt: auto (from the URI), sklearn, idx, npz or parquet.
        class_names: the label set [default: LEPTON_CLASSES].
        chunk_size: examples read at a time, which bounds memory.
        when_empty: "skip" makes a missing or empty landing zone a skipped night.

    Returns:
        The snapshot's URI, id, counts and the batches it was read from.

    Raises:
        NothingToIngestError (when_empty="skip", nothing landed), UsageError, InputDataError
        (the bad batch is quarantined).
    """
    _check_landed(source, when_empty)
    settings = get_settings()
    class_names = list(class_names or settings.classes)
    snapshot_uri = RunFolder(run_dir).snapshot_uri
    if storage.exists(snapshot_uri):
        storage.remove(snapshot_uri)  # a retried task starts from a clean snapshot folder
    writer = SnapshotWriter(
        snapshot_uri, class_names, settings.val_fraction, settings.test_fraction
    )
    try:
        batches = readers.open_source(source, fmt)
        _write_batches(writer, batches, chunk_size)
        batch_infos = [
            BatchInfo(name=b.name, uri=b.uri, count=b.count, origin=b.origin) for b in batches
        ]
        manifest = writer.finish(
            source=source, fmt=batches[0].format, batches=[b.model_dump() for b in batch_infos]
        )
    except InputDataError as exc:
        _quarantine(exc, source)
        raise
    log.info("snapshot %s: %d examples", manifest["snapshot_id"], manifest["count"])
    return IngestResult(
        run_dir=run_dir,
        snapshot_uri=snapshot_uri,
        snapshot_id=manifest["snapshot_id"],
        sha256=manifest["sha256"],
        count=manifest["count"],
        split_counts=manifest["split_counts"],
        image_shape=manifest["image_shape"],
        class_names=class_names,
        source=source,
        format=manifest["format"],
        batches=batch_infos,
    )


def _check_landed(source: str, when_empty: str) -> None:
    if when_empty not in ("fail", "skip"):
        raise UsageError(f"--when-empty must be fail or skip, not '{when_empty}'")
    if when_empty == "skip" and readers.is_empty_landing_zone(source):
        raise NothingToIngestError("no batch has landed yet: nothing to train on", where=source)


def _write_batches(writer: SnapshotWriter, batches: list[readers.Batch], chunk_size: int) -> None:
    """Stream every batch into the snapshot; a bad batch's error names its landing entry."""
    for batch_index, batch in enumerate(batches):
        log.info("reading %s (%s, %d examples)", batch.uri, batch.format, batch.count)
        try:
            for images, labels in batch.read_chunks(chunk_size):
                writer.add(images, labels, where=batch.uri, batch_index=batch_index)
        except InputDataError as exc:
            exc.batch_uri = exc.batch_uri or batch.origin
            raise


def _quarantine(exc: InputDataError, source: str) -> None:
    targets = quarantine_bad_data(source, [exc.batch_uri] if exc.batch_uri else [], exc)
    if targets:
        exc.message = f"{exc.message}; quarantined to {', '.join(targets)}"
