"""A model's classes are its champion's (issue 14): a new class in the data, or a missing one,
is a named error that quarantines the batch bringing it; a class set given on purpose starts
afresh, and the gate then cannot compare with the champion."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from lepton_tasks.errors import EXIT_CODES, ClassSetError
from lepton_tasks.settings import get_settings
from lepton_tasks.steps.evaluate import champion_classes, decide
from lepton_tasks.steps.ingest import ingest
from lepton_tasks.steps.validate import validate
from tests.conftest import digits, write_npz


@pytest.fixture
def champion_snapshot(lepton_env: Path, tmp_path: Path) -> str:
    """The snapshot a champion of the ten digit classes was trained on."""
    return ingest("sklearn:digits", str(tmp_path / "champion")).snapshot_uri


def test_a_new_class_fails_validation_and_its_batch_is_quarantined(
    lepton_env: Path, tmp_path: Path, champion_snapshot: str
) -> None:
    x, y = digits()
    landing = lepton_env / "landing"
    write_npz(landing / "batch-2026-01-01.npz", x[:1200], y[:1200])
    new_labels = y[1200:].astype(object)
    new_labels[:40] = "ten"  # a class the champion never saw
    write_npz(landing / "batch-2026-01-02.npz", x[1200:], new_labels.astype(str))
    snapshot = ingest(str(landing), str(tmp_path / "run")).snapshot_uri
    with pytest.raises(ClassSetError, match=r"new class\(es\) \['ten'\]") as caught:
        validate(snapshot, str(tmp_path / "run"), reference_uri=champion_snapshot)
    assert "another model_name" in caught.value.message and "--classes" in caught.value.message
    assert "quarantined" in caught.value.message
    assert not (landing / "batch-2026-01-02.npz").exists()
    assert (landing / "batch-2026-01-01.npz").exists()
    assert EXIT_CODES["ClassSetError"] == 13


def test_a_missing_class_fails_validation(
    lepton_env: Path, tmp_path: Path, champion_snapshot: str
) -> None:
    x, y = digits()
    keep = y != 9
    snapshot = ingest(str(write_npz(tmp_path / "no-nines.npz", x[keep], y[keep])), str(tmp_path))
    with pytest.raises(ClassSetError, match=r"class\(es\) \['9'\] are missing"):
        validate(snapshot.snapshot_uri, str(tmp_path / "run"), reference_uri=champion_snapshot)


def test_a_class_set_given_on_purpose_starts_afresh(
    lepton_env: Path, tmp_path: Path, champion_snapshot: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    x, y = digits()
    labels = y.astype(str).astype(object)
    labels[::9] = "ten"
    monkeypatch.setenv("LEPTON_CLASSES", json.dumps([*map(str, range(10)), "ten"]))
    get_settings.cache_clear()
    source = write_npz(tmp_path / "eleven.npz", x, labels.astype(str))
    snapshot = ingest(str(source), str(tmp_path / "run")).snapshot_uri
    checked = validate(snapshot, str(tmp_path / "run"), reference_uri=champion_snapshot)
    assert checked.success and checked.reference_snapshot_id is None  # no drift checks


def test_the_gate_cannot_compare_with_a_champion_of_other_classes() -> None:
    candidate = {"accuracy": 0.95}
    why = "the class set changed from the champion v3's ['a', 'b'] to ['a', 'b', 'c']"
    kept = decide(candidate, None, "accuracy", 0.0, 0.8, None, incomparable=why)
    assert not kept.promote and kept.reason.startswith(why)
    assert "promote by forcing" in kept.reason
    forced = decide(candidate, None, "accuracy", 0.0, 0.8, "new classes", incomparable=why)
    assert forced.promote and forced.forced


def test_a_versions_classes_come_from_its_tag_or_its_snapshot(champion_snapshot: str) -> None:
    tagged = SimpleNamespace(tags={"lepton.class_names": json.dumps(["cat", "dog"])})
    assert champion_classes(tagged) == ["cat", "dog"]
    older = SimpleNamespace(tags={"lepton.snapshot_uri": champion_snapshot})
    assert champion_classes(older) == [str(d) for d in range(10)]
    assert champion_classes(SimpleNamespace(tags={})) is None
