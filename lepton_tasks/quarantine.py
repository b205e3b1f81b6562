"""Quarantine: set a rejected batch aside with the reason, so nothing is lost or re-ingested."""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from lepton_tasks import storage
from lepton_tasks.data.readers import QUARANTINE_FOLDER
from lepton_tasks.errors import LeptonError

log = logging.getLogger(__name__)


def quarantine(batch_uri: str, error: LeptonError, root: str, *, move: bool) -> str:
    """Copy (or move, for landing-zone batches) `batch_uri` under `root` next to `reason.json`.

    Moving keeps the next nightly run from tripping over the same bad batch; the data and the
    reason stay side by side for whoever fixes it.
    """
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    target = storage.join(root, f"{stamp}-{storage.basename(batch_uri)}")
    storage.copy_tree(batch_uri, storage.join(target, storage.basename(batch_uri)))
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
    if move:
        storage.remove(batch_uri)
    log.warning("quarantined %s -> %s (%s)", batch_uri, target, error.one_line())
    return target


def quarantine_bad_data(source: str, batch_uris: list[str], error: LeptonError) -> list[str]:
    """The one policy for rejected data.

    Landing-zone batches (`batch_uris`) are moved to `<landing>/_quarantine/` so the next run
    proceeds without them. Otherwise a source named directly (a file or folder) is copied to the
    quarantine root and left in place: it is the user's, not ours to move. Bundled datasets and
    missing files have nothing to set aside.
    """
    from lepton_tasks.settings import get_settings

    settings = get_settings()
    targets = []
    for batch_uri in batch_uris:
        if storage.exists(batch_uri):
            root = settings.quarantine_uri or storage.join(source, QUARANTINE_FOLDER)
            targets.append(quarantine(batch_uri, error, root, move=True))
    if batch_uris:
        return targets
    named_directly = ":" not in source.split("://")[-1] and "," not in source
    if named_directly and storage.exists(source):
        targets.append(quarantine(source, error, settings.quarantine_root, move=False))
    return targets
