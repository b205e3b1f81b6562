"""A batch landing starts a run: an event trigger on the landing zone, for an `AssetWatcher`.

The triggerer runs it. Every `poll_s` seconds it lists the zone by the landing protocol (only
finished dataset entries count, every file inside them fingerprinted) and, when an entry
appears or changes, yields one event: the scheduler records an event of the
`lepton_landing_zone` asset and queues `lepton_training`.

Delivery is at least once. What was announced is kept in memory only, so a (re)started trigger
announces the zone as it finds it: one run, which check-inputs finds unchanged in seconds if
nothing is new. Keeping it on disk would lose a batch whenever the triggerer died between
recording it and the event reaching the database. Listing is a wake-up signal, keyed on names,
sizes and times; what a run trains on is keyed on content (the snapshot id).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import AsyncIterator
from typing import Any

from airflow.triggers.base import BaseEventTrigger, TriggerEvent

log = logging.getLogger(__name__)


def _fingerprint(entry: str) -> str:
    """Every file of the entry (a file, or a batch folder at any depth): path, size, time."""
    from lepton_tasks import storage

    fs, path = storage.filesystem(entry)
    found = fs.find(path, detail=True) if fs.isdir(path) else {path: fs.info(path)}
    marks = sorted(
        (name, info.get("size"), str(info.get("mtime") or info.get("LastModified") or ""))
        for name, info in found.items()
    )
    return hashlib.sha256(repr(marks).encode()).hexdigest()


def zone_listing(zone: str, unlabelled: bool = False) -> dict[str, str]:
    """The zone's batches by name, each with a fingerprint of its files; `unlabelled` counts
    batches without labels too (the scoring inbox: a folder of images is a batch)."""
    import contextlib

    from lepton_tasks import storage
    from lepton_tasks.data import readers

    if not storage.exists(zone):
        return {}
    with readers.labels_optional() if unlabelled else contextlib.nullcontext():
        entries = readers.dataset_entries(zone, quiet=True)
    return {storage.basename(entry): _fingerprint(entry) for entry in entries}


class LandingZoneTrigger(BaseEventTrigger):
    """Fires when a batch lands in (or changes in) the landing zone `zone` (or, with
    `unlabelled`, the scoring inbox)."""

    def __init__(self, zone: str, poll_s: float = 15.0, unlabelled: bool = False) -> None:
        super().__init__()
        self.zone = zone
        self.poll_s = poll_s
        self.unlabelled = unlabelled

    def serialize(self) -> tuple[str, dict[str, Any]]:
        kwargs: dict[str, Any] = {"zone": self.zone, "poll_s": self.poll_s}
        if self.unlabelled:  # only then: the landing zone's trigger stays as it was
            kwargs["unlabelled"] = True
        return f"{type(self).__module__}.{type(self).__qualname__}", kwargs

    async def run(self) -> AsyncIterator[TriggerEvent]:
        from lepton_tasks.redact import redact

        announced: dict[str, str] = {}
        while True:
            try:
                listing = await asyncio.to_thread(zone_listing, self.zone, self.unlabelled)
            except Exception as exc:  # a zone that is briefly unreachable: look again later
                log.warning("cannot list the landing zone %s: %s", redact(self.zone), exc)
                listing = announced
            arrived = sorted(name for name, mark in listing.items() if announced.get(name) != mark)
            announced = listing
            if arrived:
                log.info("landed in %s: %s", redact(self.zone), ", ".join(arrived))
                yield TriggerEvent({"zone": redact(self.zone), "batches": arrived})
            await asyncio.sleep(self.poll_s)
