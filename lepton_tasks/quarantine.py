"""Quarantine: set a rejected batch aside with the reason, so nothing is lost or re-ingested."""

from __future__ import annotations

import logging
import os
import shutil
import stat
import uuid
from datetime import UTC, datetime

from lepton_tasks import storage
from lepton_tasks.data.readers import QUARANTINE_FOLDER
from lepton_tasks.errors import InputDataError, LeptonError

log = logging.getLogger(__name__)


def quarantine(batch_uri: str, error: LeptonError, root: str, *, move: bool) -> str:
    """Move (landing-zone batches) or copy `batch_uri` under `root`, next to `reason.json`;
    returns where it went, as text.

    Moving keeps the next nightly run from tripping over the same bad batch; the data and the
    reason stay side by side for whoever fixes it. Locally a move is one rename and a copy
    keeps links as links and skips what is not a regular file (a FIFO, a device), so nothing
    outside the batch is read or written through it.
    """
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    refuse_linked_folder(root)
    # unique: two batches named alike in different folders (day-1/data, day-2/data) stay apart
    target = storage.join(root, f"{stamp}-{storage.basename(batch_uri)}-{uuid.uuid4().hex[:6]}")
    storage.makedirs(target)
    inner = storage.join(target, storage.basename(batch_uri))
    if storage.is_local(batch_uri) and storage.is_local(target):
        _local_set_aside(batch_uri.removeprefix("file://"), inner.removeprefix("file://"), move)
    else:
        storage.copy_tree(batch_uri, inner)
        if move:
            storage.remove(batch_uri)
    storage.write_json(
        storage.join(target, "reason.json"),
        {
            "batch": batch_uri,
            "error": type(error).__name__,
            "message": error.message,
            "where": error.where,
            "quarantined_at": stamp,
            "moved": move,
        },
    )
    log.warning("quarantined %s -> %s (%s)", batch_uri, target, error.one_line())
    return storage.as_text(target)  # for messages and reports; reason.json keeps the bytes


def refuse_linked_folder(root: str) -> None:
    """A folder Lepton moves batches into that is a link (a producer could plant one in the
    zone) could send them anywhere: refuse it."""
    if storage.is_local(root) and os.path.islink(root.removeprefix("file://").rstrip("/")):
        raise OSError(f"folder {root} is a symbolic link; refusing to write through it")


def _local_set_aside(source: str, target: str, move: bool) -> None:
    if move:
        try:
            os.rename(source, target)
            return
        except OSError:  # another filesystem: copy, then remove
            pass
    if os.path.isdir(source) and not os.path.islink(source):
        shutil.copytree(source, target, symlinks=True, ignore=_not_regular)
    elif os.path.isfile(source) and not os.path.islink(source):
        shutil.copy2(source, target)
    if move:
        shutil.rmtree(source) if os.path.isdir(source) and not os.path.islink(
            source
        ) else os.remove(source)


def _not_regular(folder: str, names: list[str]) -> set[str]:
    """Entries a copy must not open: anything but folders, regular files and links."""
    skipped = set()
    for name in names:
        mode = os.lstat(os.path.join(folder, name)).st_mode
        if not (stat.S_ISDIR(mode) or stat.S_ISREG(mode) or stat.S_ISLNK(mode)):
            skipped.add(name)
    return skipped


def quarantine_bad_data(source: str, batch_uris: list[str], error: LeptonError) -> list[str]:
    """The one policy for rejected data.

    Only the configured landing zone (LEPTON_LANDING_URI) and scoring inbox
    (LEPTON_SCORING_INBOX_URI) are Lepton's to rearrange: their bad batches are moved to
    `<zone>/_quarantine/` (landing: or LEPTON_QUARANTINE_URI), so the next run proceeds
    without them. Any other source is the user's: it is read, never changed, and a
    copy of the bad part (the failing batch, or the whole source) goes to the quarantine root.
    Bundled datasets and missing files have nothing to set aside.
    """
    from lepton_tasks.settings import get_settings

    settings = get_settings()
    if same_location(source, settings.landing):
        root = settings.quarantine_uri or storage.join(settings.landing, QUARANTINE_FOLDER)
        return [
            quarantine(uri, error, root, move=True)
            for uri in batch_uris
            if storage.exists(uri) and inside(uri, settings.landing)
        ]
    if same_location(source, settings.scoring_inbox):  # Lepton's too: its own _quarantine
        root = storage.join(settings.scoring_inbox, QUARANTINE_FOLDER)
        return [
            quarantine(uri, error, root, move=True)
            for uri in batch_uris
            if storage.exists(uri) and inside(uri, settings.scoring_inbox)
        ]
    parts = [uri for uri in batch_uris if storage.exists(uri)]
    named_directly = ":" not in source.split("://")[-1] and "," not in source
    if not batch_uris and named_directly and storage.exists(source):
        parts = [source]
    return [quarantine(uri, error, settings.quarantine_root, move=False) for uri in parts]


def _normal(uri: str) -> str:
    return (
        os.path.realpath(uri.removeprefix("file://")) if storage.is_local(uri) else uri.rstrip("/")
    )


def same_location(a: str, b: str) -> bool:
    """Whether two URIs name the same folder (local paths compared after resolving links)."""
    return _normal(a) == _normal(b)


def inside(uri: str, folder: str) -> bool:
    """Whether `uri` lies within `folder` (and is not the folder itself)."""
    return _normal(uri).startswith(_normal(folder).rstrip("/") + "/")


def set_aside(exc: InputDataError, source: str) -> None:
    """Quarantine the batch `exc` names (or the source); if that fails, say so, and the input
    error stays the error. The error's message says where the data went."""
    try:
        targets = quarantine_bad_data(source, [exc.batch_uri] if exc.batch_uri else [], exc)
    except Exception as failure:
        log.warning("could not quarantine %s: %s", exc.batch_uri or source, failure)
        exc.message = f"{exc.message}; could not quarantine it: {type(failure).__name__}"
        return
    if targets:
        exc.message = f"{exc.message}; quarantined to {', '.join(targets)}"
