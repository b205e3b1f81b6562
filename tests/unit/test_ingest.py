"""Ingest: snapshots are content-addressed, splits are stable, bad batches are quarantined."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from lepton_tasks.data.snapshot import iter_shards, load_split, read_manifest
from lepton_tasks.errors import InputDataError
from lepton_tasks.steps.ingest import ingest
from tests.conftest import digits, write_npz


def split_of_each_example(snapshot_uri: str) -> dict[bytes, str]:
    return {
        bytes(h): split
        for split in ("train", "val", "test")
        for shard in iter_shards(snapshot_uri, split)
        for h in shard["h"]
    }


def test_ingest_digits_writes_a_manifest_and_shards(tmp_path: Path, lepton_env: Path) -> None:
    result = ingest("sklearn:digits", str(tmp_path / "run"))
    manifest = read_manifest(result.snapshot_uri)
    assert result.count == manifest["count"] == 1797
    assert sum(result.split_counts.values()) == 1797
    assert manifest["label_counts"]["0"] == 178  # the digits set has 178 zeros
    assert result.snapshot_id == manifest["sha256"][:16]
    x_test, y_test = load_split(result.snapshot_uri, "test")
    assert x_test.shape == (result.split_counts["test"], 8, 8) and len(y_test) == len(x_test)
    # a tenth each for val and test, give or take the hash's luck
    assert 120 < result.split_counts["test"] < 240


def test_same_data_same_snapshot_id_in_any_order(tmp_path: Path, lepton_env: Path) -> None:
    images, labels = digits()
    order = np.random.default_rng(0).permutation(len(images))
    a = ingest(str(write_npz(tmp_path / "a.npz", images, labels)), str(tmp_path / "r1"))
    b = ingest(
        str(write_npz(tmp_path / "b.npz", images[order], labels[order])), str(tmp_path / "r2")
    )
    c = ingest(str(write_npz(tmp_path / "c.npz", images[1:], labels[1:])), str(tmp_path / "r3"))
    assert a.snapshot_id == b.snapshot_id
    assert c.snapshot_id != a.snapshot_id


def test_examples_keep_their_split_when_data_grows(tmp_path: Path, lepton_env: Path) -> None:
    images, labels = digits()
    small = ingest(
        str(write_npz(tmp_path / "s.npz", images[:900], labels[:900])), str(tmp_path / "r1")
    )
    full = ingest(str(write_npz(tmp_path / "f.npz", images, labels)), str(tmp_path / "r2"))
    before, after = (
        split_of_each_example(small.snapshot_uri),
        split_of_each_example(full.snapshot_uri),
    )
    assert before and all(after[h] == split for h, split in before.items())


def test_landing_zone_bad_batch_is_moved_to_quarantine(
    tmp_path: Path, lepton_env: Path, digit_classes: list[str]
) -> None:
    """With a class set given (LEPTON_CLASSES), a label outside it is a bad batch."""
    images, labels = digits()
    landing = lepton_env / "landing"  # the configured landing zone
    write_npz(landing / "batch-001.npz", images[:500], labels[:500])
    bad_labels = labels[500:900].copy()
    bad_labels[7] = 42
    write_npz(landing / "batch-002.npz", images[500:900], bad_labels)
    with pytest.raises(InputDataError, match="label.*outside the class set.*42") as caught:
        ingest(str(landing), str(tmp_path / "run"))
    assert "quarantined to" in caught.value.message
    assert not (landing / "batch-002.npz").exists()
    (quarantined,) = (landing / "_quarantine").iterdir()
    reason = json.loads((quarantined / "reason.json").read_text())
    assert reason["error"] == "InputDataError" and "42" in reason["message"]
    assert (quarantined / "batch-002.npz").exists()  # nothing lost
    # the next run proceeds with the good batch alone
    assert ingest(str(landing), str(tmp_path / "run2")).count == 500


def test_direct_bad_source_is_copied_to_quarantine_and_left_in_place(
    tmp_path: Path, lepton_env: Path, digit_classes: list[str]
) -> None:
    images, labels = digits()
    source = write_npz(tmp_path / "mine.npz", images[:0], labels[:0])
    with pytest.raises(InputDataError, match="the dataset is empty"):
        ingest(str(source), str(tmp_path / "run"))
    assert source.exists()
    (copy,) = (lepton_env / "quarantine").iterdir()
    assert (copy / "mine.npz").exists() and (copy / "reason.json").exists()


def test_mixed_shapes_across_batches(tmp_path: Path, lepton_env: Path, mnist_dir: Path) -> None:
    images, labels = digits()
    landing = lepton_env / "landing"  # the configured landing zone
    write_npz(landing / "a.npz", images[:300], labels[:300])
    mnist = np.zeros((300, 28, 28), np.uint8)
    write_npz(landing / "b.npz", mnist, labels[:300])
    with pytest.raises(InputDataError, match=r"image shape \(28, 28\) differs from \(8, 8\)"):
        ingest(str(landing), str(tmp_path / "run"))
