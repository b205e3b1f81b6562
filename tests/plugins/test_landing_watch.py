"""The landing-zone trigger the triggerer runs for the `lepton_landing_zone` asset (issue 13):
a finished batch is announced; one in progress, or not a dataset, is not; a restarted trigger
announces what it finds (at least once: never a batch lost)."""

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


def test_a_finished_batch_is_announced(lepton_env: Path) -> None:
    zone = lepton_env / "landing"
    zone.mkdir(parents=True)
    x, y = digits()
    write_npz(zone / ".batch-2026-01-01.npz", x[:50], y[:50])  # being written
    write_npz(zone / "_staging" / "part.npz", x[:50], y[:50])  # Lepton's own, or in progress
    (zone / "README.txt").write_text("not a dataset")
    trigger = LandingZoneTrigger(zone=str(zone), poll_s=0.05)
    assert events_within(trigger) == []

    async def land_while_watching() -> list[dict]:
        seen: list[dict] = []

        async def consume() -> None:
            async for event in trigger.run():
                seen.append(event.payload)

        task = asyncio.create_task(consume())
        await asyncio.sleep(0.3)
        os.rename(zone / ".batch-2026-01-01.npz", zone / "batch-2026-01-01.npz")  # finished
        await asyncio.sleep(0.3)
        write_npz(zone / "batch-2026-01-02.npz", x[50:99], y[50:99])
        await asyncio.sleep(0.3)
        task.cancel()
        return seen

    assert asyncio.run(land_while_watching()) == [
        {"zone": str(zone), "batches": ["batch-2026-01-01.npz"]},
        {"zone": str(zone), "batches": ["batch-2026-01-02.npz"]},
    ]
    # A restarted trigger announces what it finds: a run that finds nothing new is cheap,
    # a batch never announced is lost until the nightly run.
    (again,) = events_within(LandingZoneTrigger(str(zone), 0.05))
    assert again["batches"] == ["batch-2026-01-01.npz", "batch-2026-01-02.npz"]


def test_a_file_landing_deep_in_a_batch_folder_is_announced(lepton_env: Path) -> None:
    zone = lepton_env / "landing"
    x, y = digits()
    write_npz(zone / "2026-01-01" / "part" / "a.npz", x[:50], y[:50])

    async def watch() -> list[dict]:
        seen: list[dict] = []

        async def consume() -> None:
            async for event in LandingZoneTrigger(str(zone), 0.05).run():
                seen.append(event.payload)

        task = asyncio.create_task(consume())
        await asyncio.sleep(0.3)
        write_npz(zone / "2026-01-01" / "part" / "b.npz", x[50:90], y[50:90])
        await asyncio.sleep(0.3)
        task.cancel()
        return seen

    assert [e["batches"] for e in asyncio.run(watch())] == [["2026-01-01"], ["2026-01-01"]]


def test_a_missing_zone_is_not_an_error(lepton_env: Path) -> None:
    zone = lepton_env / "landing"
    assert events_within(LandingZoneTrigger(zone=str(zone), poll_s=0.05)) == []


def test_the_trigger_serializes_to_an_importable_classpath() -> None:
    from airflow._shared.module_loading import import_string

    classpath, kwargs = LandingZoneTrigger("/data/landing", 15).serialize()
    assert import_string(classpath)(**kwargs).serialize() == (classpath, kwargs)
