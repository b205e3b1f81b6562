"""Ingest: read a labeled image dataset from any supported source into a normalized snapshot."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
import uuid
from datetime import datetime
from typing import Any

from lepton_tasks import storage
from lepton_tasks.data import readers
from lepton_tasks.data.snapshot import MANIFEST, SnapshotWriter, class_names_from_labels
from lepton_tasks.errors import InputDataError, NothingToIngestError, UsageError
from lepton_tasks.quarantine import set_aside
from lepton_tasks.redact import redact
from lepton_tasks.results import BatchInfo, IngestResult, records_result
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
    as_of: datetime | None = None,
) -> IngestResult:
    """Read `source` into a normalized, content-addressed snapshot in the run folder.

    Args:
        source: a dataset URI (see `readers.open_source`) or a landing-zone folder of batches.
        run_dir: the run folder; the result goes to its `ingest/`, the snapshot to
            `<snapshot root>/<snapshot id>-<provenance>` (content-addressed, never rewritten).
        fmt: auto (from the URI), sklearn, idx, npz or parquet.
        class_names: the class set [default: LEPTON_CLASSES, else read from the labels:
            numbers in numeric order, names in alphabetical order].
        chunk_size: examples read at a time, which bounds memory.
        when_empty: "skip" makes a missing or empty landing zone a skipped night.
        as_of: read only the landing-zone batches landed by then (the landing protocol), so
            the run for a past night (a backfill) sees that night's data.

    Returns:
        The snapshot's URI, id, counts and the batches it was read from.

    Raises:
        NothingToIngestError (when_empty="skip", nothing landed), UsageError, InputDataError
        (the bad batch is quarantined).
    """
    _check_landed(source, when_empty, as_of)
    settings = get_settings()
    explicit = list(class_names or settings.classes or [])
    _sweep_staging(settings.snapshot_root)
    staging = storage.join(settings.snapshot_root, f".staging-{uuid.uuid4().hex}")
    try:
        manifest, batch_infos = _stage(staging, source, fmt, explicit, chunk_size, as_of)
        snapshot_uri = _publish(staging, storage.join(settings.snapshot_root, _address(manifest)))
    except InputDataError as exc:
        set_aside(exc, source)
        raise
    finally:
        if storage.exists(staging):
            storage.remove(staging)
    log.info("snapshot %s: %d examples", manifest["snapshot_id"], manifest["count"])
    return IngestResult(
        run_dir=run_dir,
        snapshot_uri=snapshot_uri,
        snapshot_id=manifest["snapshot_id"],
        sha256=manifest["sha256"],
        count=manifest["count"],
        split_counts=manifest["split_counts"],
        image_shape=manifest["image_shape"],
        class_names=manifest["class_names"],
        source=source,
        format=manifest["format"],
        batches=batch_infos,
        as_of=as_of,
    )


def _address(manifest: dict[str, Any]) -> str:
    """`<snapshot id>-<provenance>`: the content, and where it was read from.

    The provenance (source and batches) is part of the address because validation names and
    quarantines batches by it: the same content read from other files is another folder with
    the same snapshot id, so one run never acts on another run's batches.
    """
    batches = [(b["name"], b.get("origin"), b["count"]) for b in manifest["batches"]]
    layout = json.dumps([manifest["source"], batches], sort_keys=True).encode()
    return f"{manifest['snapshot_id']}-{hashlib.sha256(layout).hexdigest()[:8]}"


STAGING_MAX_AGE_S = 24 * 3600


def _sweep_staging(root: str) -> None:
    """Remove staging folders of ingests that died more than a day ago.

    A killed process cannot clean up after itself.
    """
    local = root.removeprefix("file://") if storage.is_local(root) else None
    if local is None or not os.path.isdir(local):
        return
    for name in os.listdir(local):
        path = os.path.join(local, name)
        if (
            name.startswith(".staging-")
            and time.time() - os.path.getmtime(path) > STAGING_MAX_AGE_S
        ):
            log.info("removing the staging folder of an ingest that died: %s", name)
            shutil.rmtree(path, ignore_errors=True)


def _publish(staging: str, snapshot_uri: str) -> str:
    """Rename the staged snapshot to its content address.

    The same content is one folder, and a folder that exists is never written again.
    """
    if storage.exists(storage.join(snapshot_uri, MANIFEST)):
        log.info("snapshot %s exists: same content", storage.basename(snapshot_uri))
        return snapshot_uri
    if not storage.is_local(snapshot_uri):
        return _publish_remote(staging, snapshot_uri)
    try:
        storage.move(staging, snapshot_uri)
    except OSError:  # another run published the same content first
        if not storage.exists(storage.join(snapshot_uri, MANIFEST)):
            raise
    return snapshot_uri


def _publish_remote(staging: str, snapshot_uri: str) -> str:
    """Publish to an object store, which has no rename.

    The shards go first and the manifest last, so a folder with a manifest is always whole;
    one without is an interrupted publish, redone.
    """
    if storage.exists(snapshot_uri):
        storage.remove(snapshot_uri)
    for entry in storage.list_dir(staging):
        if storage.basename(entry) != MANIFEST:
            storage.copy_tree(entry, storage.join(snapshot_uri, storage.basename(entry)))
    storage.copy_tree(storage.join(staging, MANIFEST), storage.join(snapshot_uri, MANIFEST))
    return snapshot_uri


def _check_landed(source: str, when_empty: str, as_of: datetime | None) -> None:
    if when_empty not in ("fail", "skip"):
        raise UsageError(f"--when-empty must be fail or skip, not '{when_empty}'")
    if when_empty == "skip" and readers.is_empty_landing_zone(source, as_of):
        by = f"by {as_of:%Y-%m-%dT%H:%M}Z" if as_of else "yet"
        raise NothingToIngestError(f"no batch had landed {by}: nothing to train on", where=source)


def _stage(
    staging: str,
    source: str,
    fmt: str,
    explicit: list[str],
    chunk_size: int,
    as_of: datetime | None,
) -> tuple[dict[str, Any], list[BatchInfo]]:
    """Write the snapshot of the source's batches into the staging folder."""
    settings = get_settings()
    batches = _open_batches(source, fmt, as_of)
    writer = SnapshotWriter(
        staging,
        explicit or _classes_of(batches, source),
        settings.val_fraction,
        settings.test_fraction,
        class_source="explicit" if explicit else "data",
    )
    return _write_batches(writer, source, batches, chunk_size)


def _open_batches(source: str, fmt: str, as_of: datetime | None) -> list[readers.Batch]:
    try:
        return readers.open_source(source, fmt, as_of)
    except readers.READ_ERRORS as exc:  # a malformed file named directly
        raise readers.unreadable(exc, source, "file") from exc


def _classes_of(batches: list[readers.Batch], source: str) -> list[str]:
    """The class set the labels of every batch hold (no class flag, no LEPTON_CLASSES)."""
    labels = []
    for batch in batches:
        try:
            labels.append(batch.labels())
        except InputDataError as exc:
            exc.batch_uri = exc.batch_uri or batch.origin
            raise
        except readers.READ_ERRORS as exc:
            error = readers.unreadable(exc, batch.uri, "labels")
            error.batch_uri = batch.origin
            raise error from exc
    names = class_names_from_labels(labels, source)
    log.info("class set from the labels: %s", names)
    return names


def _write_batches(
    writer: SnapshotWriter, source: str, batches: list[readers.Batch], chunk_size: int
) -> tuple[dict[str, Any], list[BatchInfo]]:
    """Stream every batch of the source into the snapshot; returns its manifest and batches.

    Any failure of one batch (unreadable, too large, malformed) is an InputDataError naming it.
    """
    for batch_index, batch in enumerate(batches):
        log.info("reading %s (%s, %d examples)", redact(batch.uri), batch.format, batch.count)
        try:
            for images, labels in batch.read_chunks(chunk_size):
                writer.add(images, labels, where=batch.uri, batch_index=batch_index)
        except InputDataError as exc:
            exc.batch_uri = exc.batch_uri or batch.origin
            raise
        except readers.READ_ERRORS as exc:
            error = readers.unreadable(exc, batch.uri)
            error.batch_uri = batch.origin
            raise error from exc
    infos = [BatchInfo(name=b.name, uri=b.uri, count=b.count, origin=b.origin) for b in batches]
    manifest = writer.finish(
        source=source, fmt=batches[0].format, batches=[b.model_dump() for b in infos]
    )
    return manifest, infos
