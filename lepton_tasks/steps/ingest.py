"""Ingest: read a labeled image dataset from any supported source into a normalized snapshot."""

from __future__ import annotations

import logging

from lepton_tasks import storage
from lepton_tasks.data import readers
from lepton_tasks.data.snapshot import SnapshotWriter
from lepton_tasks.errors import InputDataError, NothingToIngestError, UsageError
from lepton_tasks.quarantine import quarantine_bad_data
from lepton_tasks.results import BatchInfo, IngestResult, records_result, step_dir
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
    """Snapshot `source`. With when_empty="skip", a landing-zone folder that is missing or holds
    no batch yet raises NothingToIngestError (a skipped night) instead of a data error."""
    if when_empty not in ("fail", "skip"):
        raise UsageError(f"--when-empty must be fail or skip, not '{when_empty}'")
    if when_empty == "skip" and readers.is_empty_landing_zone(source):
        raise NothingToIngestError("no batch has landed yet: nothing to train on", where=source)
    settings = get_settings()
    class_names = list(class_names or settings.classes)
    snapshot_uri = storage.join(step_dir(run_dir, "ingest"), "snapshot")
    if storage.exists(snapshot_uri):
        storage.remove(snapshot_uri)  # a retried task starts from a clean snapshot folder

    try:
        batches = readers.open_source(source, fmt)
        writer = SnapshotWriter(
            snapshot_uri, class_names, settings.val_fraction, settings.test_fraction
        )
        for batch_index, batch in enumerate(batches):
            log.info("reading %s (%s, %d examples)", batch.uri, batch.format, batch.count)
            try:
                for images, labels in batch.read_chunks(chunk_size):
                    writer.add(images, labels, where=batch.uri, batch_index=batch_index)
            except InputDataError as exc:
                exc.batch_uri = exc.batch_uri or batch.origin
                raise
        batch_infos = [
            BatchInfo(name=b.name, uri=b.uri, count=b.count, origin=b.origin) for b in batches
        ]
        manifest = writer.finish(
            source=source, fmt=batches[0].format, batches=[b.model_dump() for b in batch_infos]
        )
    except InputDataError as exc:
        _quarantine(exc, source)
        raise
    log.info(
        "snapshot %s: %d examples %s",
        manifest["snapshot_id"],
        manifest["count"],
        manifest["split_counts"],
    )
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


def _quarantine(exc: InputDataError, source: str) -> None:
    targets = quarantine_bad_data(source, [exc.batch_uri] if exc.batch_uri else [], exc)
    if targets:
        exc.message = f"{exc.message}; quarantined to {', '.join(targets)}"
