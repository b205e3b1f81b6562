"""Findings of a review of the data-safety work (issue 12), each with the case that showed it."""

from __future__ import annotations

import json
import os
import signal
import stat
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lepton_tasks import storage
from lepton_tasks.errors import InputDataError, UsageError
from lepton_tasks.redact import redact
from lepton_tasks.settings import get_settings
from lepton_tasks.steps.ingest import ingest
from tests.conftest import digits, write_npz


def bad_labels_npz(path: Path) -> Path:
    images, labels = digits()
    bad = labels[:100].copy()
    bad[0] = 42
    return write_npz(path, images[:100], bad)


def test_quarantine_moves_links_as_links_and_never_reads_through_them(
    tmp_path: Path, lepton_env: Path, digit_classes: list[str]
) -> None:
    secret = tmp_path / "private" / "token"
    secret.parent.mkdir()
    secret.write_text("s3cret")
    landing = lepton_env / "landing"
    bad_labels_npz(landing / "day-1" / "data.npz")
    os.symlink(secret, landing / "day-1" / "leak")
    with pytest.raises(InputDataError) as caught:
        ingest(str(landing), str(tmp_path / "run"))
    assert "quarantined to" in caught.value.message
    (target,) = (landing / "_quarantine").iterdir()
    moved = target / "day-1" / "leak"
    assert moved.is_symlink() and stat.S_ISLNK(moved.lstat().st_mode)  # a link, not a copy
    assert secret.read_text() == "s3cret"


def test_a_quarantine_folder_planted_as_a_link_is_refused(
    tmp_path: Path, lepton_env: Path, digit_classes: list[str]
) -> None:
    landing = lepton_env / "landing"
    bad_labels_npz(landing / "day-1.npz")
    elsewhere = tmp_path / "dags"
    elsewhere.mkdir()
    os.symlink(elsewhere, landing / "_quarantine")
    with pytest.raises(InputDataError) as caught:
        ingest(str(landing), str(tmp_path / "run"))
    assert "could not quarantine it" in caught.value.message
    assert list(elsewhere.iterdir()) == [] and (landing / "day-1.npz").is_file()


def test_a_fifo_in_a_named_folder_does_not_hang_the_copy(
    tmp_path: Path, lepton_env: Path, digit_classes: list[str]
) -> None:
    mine = tmp_path / "mine"
    bad_labels_npz(mine / "data.npz")
    os.mkfifo(mine / "pipe")

    def hung(*args: object) -> None:
        raise TimeoutError("the quarantine copy blocked on a FIFO")

    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(30)
    try:
        with pytest.raises(InputDataError) as caught:
            ingest(str(mine / "data.npz"), str(tmp_path / "run"))
        assert "quarantined to" in caught.value.message
        with pytest.raises(InputDataError) as caught:
            ingest(str(mine), str(tmp_path / "run2"))
        assert "quarantined to" in caught.value.message
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    assert stat.S_ISFIFO((mine / "pipe").lstat().st_mode)  # the user's folder is as it was


def test_an_extra_npz_member_is_never_loaded(
    tmp_path: Path, lepton_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 400 MB zero array beside small x and y passed the bound and was inflated on read."""
    monkeypatch.setenv("LEPTON_MAX_BATCH_BYTES", str(5_000_000))
    get_settings.cache_clear()
    images, labels = digits()
    path = tmp_path / "extra.npz"
    np.savez_compressed(path, x=images, y=labels, junk=np.zeros(400_000_000, np.uint8))
    tracemalloc.start()
    try:
        assert ingest(str(path), str(tmp_path / "run")).count == 1797
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 100_000_000, peak


def test_parquet_is_bounded_by_its_decoded_size(
    tmp_path: Path, lepton_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LEPTON_MAX_BATCH_BYTES", str(1_000_000))
    get_settings.cache_clear()
    rows = [[0] * 784] * 5000  # 5000 x 784 int64 = 31 MB decoded, tiny on disk
    pq.write_table(pa.table({"image": rows, "label": [1] * 5000}), tmp_path / "big.parquet")
    assert (tmp_path / "big.parquet").stat().st_size < 1_000_000
    with pytest.raises(InputDataError, match="LEPTON_MAX_BATCH_BYTES"):
        ingest(str(tmp_path / "big.parquet"), str(tmp_path / "run"))


def test_malformed_files_named_directly_are_input_errors(tmp_path: Path, lepton_env: Path) -> None:
    """Before: KeyError and ValueError, exit 1, retried."""
    with zipfile.ZipFile(tmp_path / "bare.npz", "w") as archive:
        archive.writestr("x", b"not an npy")
        archive.writestr("y", b"not an npy")
    with pytest.raises(InputDataError, match="missing array"):
        ingest(str(tmp_path / "bare.npz"), str(tmp_path / "run"))
    table = {"image": [[1, 2, 3, 4]] * 4, "label": [1] * 4, "height": [-2] * 4, "width": [-2] * 4}
    pq.write_table(pa.table(table), tmp_path / "negative.parquet")
    with pytest.raises(InputDataError):
        ingest(str(tmp_path / "negative.parquet"), str(tmp_path / "run2"))


def test_idx_files_follow_the_landing_protocol(tmp_path: Path, lepton_env: Path) -> None:
    images, labels = digits()
    landing = lepton_env / "landing"
    write_npz(landing / "day-1.npz", images, labels)
    (landing / ".t10k-images-idx3-ubyte.part").write_bytes(b"\0\0\x08\x03 half")
    assert ingest(str(landing), str(tmp_path / "run")).count == 1797


def test_the_legacy_param_name_is_refused_not_ignored(lepton_env: Path) -> None:
    from lepton_tasks.pipeline_run import start

    with pytest.raises(UsageError, match="'model' is now 'architecture'"):
        start("lepton_training", "manual__1", params={"model": "seed_cnn"})


def test_more_secrets_are_redacted() -> None:
    assert "pw" not in redact("redis://:pw@redis:6379/0")
    assert "tok3n" not in redact("https://tok3n@git.example/repo")
    assert "abc" not in redact("https://x.example/invoke?api-version=1&sig=abc&key2=1")
    assert "AKIA" not in redact("https://b.s3/x?X-Amz-Signature=AKIA123&X-Amz-Date=1")


def test_written_files_follow_the_umask(tmp_path: Path) -> None:
    previous = os.umask(0o077)
    try:
        storage.write_json(str(tmp_path / "private.json"), {"a": 1})
    finally:
        os.umask(previous)
    assert (tmp_path / "private.json").stat().st_mode & 0o777 == 0o600
    storage.write_json(str(tmp_path / "shared.json"), {"a": 1})
    assert (tmp_path / "shared.json").stat().st_mode & 0o777 == 0o666 & ~previous
    assert json.loads((tmp_path / "shared.json").read_text()) == {"a": 1}


def test_a_stale_lock_holder_never_releases_the_next_holders_lock(lepton_env: Path) -> None:
    from mlflow import MlflowClient

    from lepton_tasks import tracking
    from lepton_tasks.registry import LOCK_SUFFIX, champion_lock

    tracking.setup()
    client = MlflowClient()
    client.create_registered_model("m")
    name = f"m{LOCK_SUFFIX}"
    with champion_lock(client, "m", "first"):
        client.delete_registered_model(name)  # broken as stale by someone else...
        client.create_registered_model(name, tags={"lepton.lock_token": "next"})  # ...retaken
    assert client.get_registered_model(name).tags["lepton.lock_token"] == "next"
