"""A batch landing starts a run: an event trigger on the landing zone, for an `AssetWatcher`.

The triggerer runs it. Every `poll_s` seconds it lists the zone by the landing protocol (only
finished dataset entries count) and, when an entry appears or changes, yields one event: the
scheduler records an event of the `lepton_landing_zone` asset and queues `lepton_training`.

What was announced is kept in `<artifact root>/_watch/`, so a restarted triggerer announces
only what landed meanwhile. Delivery is at least once: a restart between the event and that
record announces the batch again, and the run finds it unchanged at the cost of a few seconds.
Listing is a wake-up signal, keyed on names, sizes and times; what a run trains on is keyed on
content (the snapshot id).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import AsyncIterator
from typing import Any

from airflow.triggers.base import BaseEventTrigger, TriggerEvent

log = logging.getLogger(__name__)


def zone_listing(zone: str) -> dict[str, str]:
    """The zone's batches by name, each with a fingerprint (size and modification time)."""
    from lepton_tasks import storage
    from lepton_tasks.data import readers

    if not storage.exists(zone):
        return {}
    listing = {}
    for entry in readers.dataset_entries(zone, quiet=True):
        fs, path = storage.filesystem(entry)
        info = fs.info(path)
        listing[storage.basename(entry)] = f"{info.get('size')}:{storage.modified_time(entry)}"
    return listing


def state_uri(zone: str) -> str:
    from lepton_tasks import storage
    from lepton_tasks.settings import get_settings

    name = hashlib.sha256(zone.encode()).hexdigest()[:12]
    return storage.join(get_settings().runs_root, "_watch", f"landing-{name}.json")


class LandingZoneTrigger(BaseEventTrigger):
    """Fires when a batch lands in (or changes in) the landing zone `zone`."""

    def __init__(self, zone: str, poll_s: float = 15.0) -> None:
        super().__init__()
        self.zone = zone
        self.poll_s = poll_s

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return f"{type(self).__module__}.{type(self).__qualname__}", {
            "zone": self.zone,
            "poll_s": self.poll_s,
        }

    async def run(self) -> AsyncIterator[TriggerEvent]:
        announced = await asyncio.to_thread(self._announced)
        while True:
            try:
                listing = await asyncio.to_thread(zone_listing, self.zone)
            except Exception as exc:  # a zone that is briefly unreachable: look again later
                log.warning("cannot list the landing zone %s: %s", self.zone, exc)
                listing = announced
            arrived = sorted(name for name, mark in listing.items() if announced.get(name) != mark)
            if arrived:
                log.info("landed in %s: %s", self.zone, ", ".join(arrived))
                yield TriggerEvent({"zone": self.zone, "batches": arrived})
                announced = listing
                await asyncio.to_thread(self._remember, listing)
            elif listing != announced:  # only removals (quarantine): nothing to announce
                announced = listing
                await asyncio.to_thread(self._remember, listing)
            await asyncio.sleep(self.poll_s)

    def _announced(self) -> dict[str, str]:
        from lepton_tasks import storage

        uri = state_uri(self.zone)
        try:
            return dict(storage.read_json(uri)) if storage.exists(uri) else {}
        except (ValueError, TypeError, OSError) as exc:  # unreadable: announce what is there
            log.warning("ignoring the unreadable watch record %s: %s", uri, exc)
            return {}

    def _remember(self, listing: dict[str, str]) -> None:
        from lepton_tasks import storage

        storage.write_json(state_uri(self.zone), listing)
