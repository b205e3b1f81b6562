"""The landing protocol's dates: a run "as of" D reads the batches landed by D, so a backfill
of past nights sees each night's own data (issue 13)."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path

import pytest

from lepton_tasks.cli import parse_as_of
from lepton_tasks.data import readers
from lepton_tasks.errors import NothingToIngestError, UsageError
from lepton_tasks.steps.ingest import ingest
from tests.conftest import digits, write_npz


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def test_a_batch_landed_at_the_date_its_path_names(tmp_path: Path) -> None:
    zone = str(tmp_path)
    assert readers.landed_at(f"{zone}/batch-2026-01-03.npz", zone) == at("2026-01-03T00:00")
    assert readers.landed_at(f"{zone}/2026-01-03T0415/a.npz", zone) == at("2026-01-03T04:15")
    assert readers.landed_at(f"{zone}/2026-01-03_04:15.parquet", zone) == at("2026-01-03T04:15")


def test_only_the_path_within_the_zone_is_dated(tmp_path: Path) -> None:
    """A zone whose own name holds a date (or given as file://) dates nothing by that name."""
    zone = tmp_path / "landing-2027-01-01"
    x, y = digits()
    batch = write_npz(zone / "scans.npz", x[:10], y[:10])
    stamp = datetime(2026, 2, 3, tzinfo=UTC).timestamp()
    os.utime(batch, (stamp, stamp))
    for root in (str(zone), f"file://{zone}"):
        assert readers.landed_at(str(batch), root) == at("2026-02-03T00:00")
        assert readers.dataset_entries(root, as_of=at("2026-02-04T00:00")) == [str(batch)]


def test_without_a_date_a_batch_landed_at_its_modification_time(tmp_path: Path) -> None:
    x, y = digits()
    plain = write_npz(tmp_path / "scans.npz", x[:10], y[:10])
    not_a_date = write_npz(tmp_path / "run-2026-13-45.npz", x[:10], y[:10])
    stamp = datetime(2026, 2, 3, 4, 5, tzinfo=UTC).timestamp()
    for path in (plain, not_a_date):
        os.utime(path, (stamp, stamp))
        assert readers.landed_at(str(path), str(tmp_path)) == at("2026-02-03T04:05")


def test_a_run_as_of_a_night_reads_only_the_batches_landed_by_then(
    lepton_env: Path, tmp_path: Path
) -> None:
    x, y = digits()
    zone = lepton_env / "landing"
    for day, part in zip((1, 2, 3), range(3), strict=True):
        write_npz(zone / f"batch-2026-01-0{day}.npz", x[part::3], y[part::3])

    second_night = ingest(str(zone), str(tmp_path / "run2"), as_of=at("2026-01-02T02:00"))
    assert [b.name for b in second_night.batches] == ["batch-2026-01-01", "batch-2026-01-02"]
    assert second_night.as_of == at("2026-01-02T02:00")
    everything = ingest(str(zone), str(tmp_path / "now"))
    assert len(everything.batches) == 3 and everything.snapshot_id != second_night.snapshot_id
    # The same night again is the same content: the same snapshot.
    again = ingest(str(zone), str(tmp_path / "again"), as_of=at("2026-01-02T23:00"))
    assert again.snapshot_id == second_night.snapshot_id


def test_a_night_before_any_batch_is_skipped_not_failed(lepton_env: Path, tmp_path: Path) -> None:
    x, y = digits()
    zone = lepton_env / "landing"
    write_npz(zone / "batch-2026-01-05.npz", x[:100], y[:100])
    with pytest.raises(NothingToIngestError, match="no batch had landed by 2026-01-04T02:00Z"):
        ingest(str(zone), str(tmp_path / "run"), when_empty="skip", as_of=at("2026-01-04T02:00"))


def test_as_of_is_an_iso_date_time_and_naive_means_utc() -> None:
    assert parse_as_of("2026-01-02T02:00:00+00:00") == at("2026-01-02T02:00")
    assert parse_as_of("2026-01-02 02:00") == at("2026-01-02T02:00")
    assert parse_as_of("") is None
    with pytest.raises(UsageError, match="not an ISO date-time"):
        parse_as_of("last tuesday")
