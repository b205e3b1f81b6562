"""The landing-zone trigger the triggerer runs for the `lepton_landing_zone` asset (issue 13):
a finished batch is announced once; one in progress, or not a dataset, is not."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from lepton_airflow.landing_watch import LandingZoneTrigger
from tests.conftest import digits, write_npz


def events_within(trigger: LandingZoneTrigger, seconds: float = 0.5) -> list[dict]:
    """The payloads the trigger yields while it runs for `seconds`, as the triggerer runs it
    (then stopped, as a triggerer that shuts down stops it)."""

    async def run() -> list[dict]:
        seen: list[dict] = []

        async def consume() -> None:
            async for event in trigger.run():
                seen.append(event.payload)

        task = asyncio.create_task(consume())
        await asyncio.sleep(seconds)
        task.cancel()
        return seen

    return asyncio.run(run())


def test_a_finished_batch_is_announced_once(lepton_env: Path) -> None:
    zone = lepton_env / "landing"
    zone.mkdir(parents=True)
    x, y = digits()
    write_npz(zone / ".batch-2026-01-01.npz", x[:50], y[:50])  # being written
    write_npz(zone / "_staging" / "part.npz", x[:50], y[:50])  # Lepton's own, or in progress
    (zone / "README.txt").write_text("not a dataset")
    trigger = LandingZoneTrigger(zone=str(zone), poll_s=0.05)
    assert events_within(trigger) == []

    os.rename(zone / ".batch-2026-01-01.npz", zone / "batch-2026-01-01.npz")  # finished
    assert events_within(trigger) == [{"zone": str(zone), "batches": ["batch-2026-01-01.npz"]}]
    # A restarted triggerer (a new trigger) knows what was announced.
    assert events_within(LandingZoneTrigger(str(zone), 0.05)) == []

    write_npz(zone / "batch-2026-01-02.npz", x[50:99], y[50:99])
    (event,) = events_within(trigger)
    assert event["batches"] == ["batch-2026-01-02.npz"]


def test_a_batch_replaced_in_place_is_announced_again(lepton_env: Path) -> None:
    zone = lepton_env / "landing"
    x, y = digits()
    batch = write_npz(zone / "batch.npz", x[:50], y[:50])
    trigger = LandingZoneTrigger(zone=str(zone), poll_s=0.05)
    assert len(events_within(trigger)) == 1
    write_npz(batch, x[:80], y[:80])
    (event,) = events_within(trigger)
    assert event["batches"] == ["batch.npz"]


def test_a_missing_zone_or_an_unreadable_record_is_not_an_error(lepton_env: Path) -> None:
    zone = lepton_env / "landing"
    trigger = LandingZoneTrigger(zone=str(zone), poll_s=0.05)
    assert events_within(trigger) == []  # no zone yet
    x, y = digits()
    write_npz(zone / "batch.npz", x[:50], y[:50])
    assert len(events_within(trigger)) == 1
    from lepton_airflow.landing_watch import state_uri

    Path(state_uri(str(zone))).write_text("{not json")
    assert len(events_within(trigger)) == 1  # announced again: at least once, never lost


def test_the_trigger_serializes_to_an_importable_classpath() -> None:
    from airflow._shared.module_loading import import_string

    classpath, kwargs = LandingZoneTrigger("/data/landing", 15).serialize()
    assert import_string(classpath)(**kwargs).serialize() == (classpath, kwargs)
