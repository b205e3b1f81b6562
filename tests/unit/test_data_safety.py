"""Nothing lost, nothing moved that is not ours: what ingest and validate do to the data.

Each test here failed on the code before "data safety" (issue 12); the comment says how.
"""

from __future__ import annotations

import gzip
import io
import json
import logging
import os
import struct
import zipfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lepton_tasks import storage
from lepton_tasks.errors import DataValidationError, InputDataError
from lepton_tasks.settings import get_settings
from lepton_tasks.steps.ingest import ingest
from lepton_tasks.steps.validate import validate
from tests.conftest import digits, write_npz


def tree(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def npz_declaring(path: Path, shape: tuple[int, ...], payload: bytes) -> Path:
    """An NPZ whose x.npy header declares `shape` but holds only `payload`."""
    header = io.BytesIO()
    np.lib.format.write_array_header_2_0(
        header, {"descr": "|u1", "fortran_order": False, "shape": shape}
    )
    labels = io.BytesIO()
    np.save(labels, np.zeros(shape[0] if shape[0] < 10 else 10, np.int64))
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("x.npy", header.getvalue() + payload)
        archive.writestr("y.npy", labels.getvalue())
    return path


# A user's own folder ---------------------------------------------------------------------------


def test_a_named_folder_is_read_never_rearranged(
    tmp_path: Path, lepton_env: Path, digit_classes: list[str]
) -> None:
    """Before: `notes/` (no dataset) was moved into `my_datasets/_quarantine/`, run failed."""
    images, labels = digits()
    mine = tmp_path / "my_datasets"
    write_npz(mine / "digits.npz", images, labels)
    (mine / "notes").mkdir()
    (mine / "notes" / "readme.txt").write_text("my notes")
    before = tree(mine)
    assert ingest(str(mine), str(tmp_path / "run")).count == 1797
    bad = labels[:100].copy()
    bad[0] = 42
    write_npz(mine / "zz-bad.npz", images[:100], bad)
    before = tree(mine)
    with pytest.raises(InputDataError, match="outside the class set"):
        ingest(str(mine), str(tmp_path / "run2"))
    assert tree(mine) == before  # nothing moved, nothing added
    (copy,) = (lepton_env / "quarantine").iterdir()  # a copy of the bad file, with the reason
    assert (copy / "zz-bad.npz").is_file() and (copy / "reason.json").is_file()


def test_a_non_dataset_entry_in_the_landing_zone_is_skipped_with_a_warning(
    tmp_path: Path, lepton_env: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Before: the entry made the run fail and was quarantined."""
    images, labels = digits()
    landing = lepton_env / "landing"
    write_npz(landing / "day-1" / "data.npz", images, labels)
    (landing / "notes").mkdir()
    (landing / "notes" / "readme.txt").write_text("not data")
    with caplog.at_level(logging.WARNING):
        assert ingest(str(landing), str(tmp_path / "run")).count == 1797
    assert (landing / "notes" / "readme.txt").is_file()
    assert not (landing / "_quarantine").exists()
    assert "notes: not a dataset" in caplog.text


def test_same_named_batches_in_different_folders_are_told_apart(
    tmp_path: Path, lepton_env: Path
) -> None:
    """Before: batches were keyed by file stem, so the one bad day quarantined all three."""
    images, labels = digits()
    landing = lepton_env / "landing"
    write_npz(landing / "day-1" / "data.npz", images[:900], labels[:900])
    write_npz(landing / "day-2" / "data.npz", images[900:], labels[900:])
    ones = labels == 1
    write_npz(landing / "day-3" / "data.npz", images[ones][:150], labels[ones][:150])
    result = ingest(str(landing), str(tmp_path / "run"))
    assert [b.name for b in result.batches] == ["day-1/data", "day-2/data", "day-3/data"]
    with pytest.raises(DataValidationError, match="in batch day-3/data"):
        validate(result.snapshot_uri, str(tmp_path / "run"), data_docs=False)
    assert (landing / "day-1" / "data.npz").is_file() and (landing / "day-2" / "data.npz").is_file()
    assert not (landing / "day-3").exists()
    (quarantined,) = (landing / "_quarantine").iterdir()
    assert quarantined.name.split("-", 1)[1].startswith("day-3")


# Every per-batch failure is a named input error, bounded before allocation ---------------------


def test_a_huge_declared_shape_is_refused_before_allocation(
    tmp_path: Path, lepton_env: Path
) -> None:
    """Before: np.load tried to allocate the declared array: MemoryError, exit 1, retried."""
    landing = lepton_env / "landing"
    npz_declaring(landing / "huge.npz", (10**9, 28, 28), b"\0" * 1000)
    with pytest.raises(InputDataError, match="LEPTON_MAX_BATCH_BYTES") as caught:
        ingest(str(landing), str(tmp_path / "run"))
    assert caught.value.where.endswith("huge.npz") and "quarantined" in caught.value.message
    npz_declaring(tmp_path / "liar.npz", (10, 28, 28), b"\0" * 1000)  # within bounds, but lies
    with pytest.raises(InputDataError, match=r"declares shape \(10, 28, 28\) \(7,840 bytes\)"):
        ingest(str(tmp_path / "liar.npz"), str(tmp_path / "run2"))


def test_a_decompression_bomb_is_refused_before_it_is_inflated(
    tmp_path: Path, lepton_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before: the archive was inflated whole (here 40 MB from ~40 KB) with no bound."""
    monkeypatch.setenv("LEPTON_MAX_BATCH_BYTES", str(10_000_000))
    get_settings.cache_clear()
    bomb = tmp_path / "bomb.npz"
    np.savez_compressed(bomb, x=np.zeros((4000, 100, 100), np.uint8), y=np.zeros(4000, np.int64))
    assert bomb.stat().st_size < 100_000

    def never(*args: object, **kwargs: object) -> None:
        raise AssertionError("the arrays were loaded")

    monkeypatch.setattr(storage, "load_npz", never)
    with pytest.raises(InputDataError, match=r"40,000,000 bytes, more than LEPTON_MAX_BATCH"):
        ingest(str(bomb), str(tmp_path / "run"))


def test_idx_dimensions_are_bounded(tmp_path: Path, lepton_env: Path) -> None:
    """Before: a header declaring 2^20 x 2^20 images made the reader ask for a terabyte."""
    folder = tmp_path / "idx"
    folder.mkdir()
    with gzip.open(folder / "t-images-idx3-ubyte.gz", "wb") as handle:
        handle.write(struct.pack(">iiii", 0x803, 1, 2**20, 2**20) + b"\0" * 100)
    with gzip.open(folder / "t-labels-idx1-ubyte.gz", "wb") as handle:
        handle.write(struct.pack(">ii", 0x801, 1) + b"\0")
    with pytest.raises(InputDataError, match="exceeds LEPTON_MAX_IMAGE_SIDE"):
        ingest(str(folder), str(tmp_path / "run"))


@pytest.mark.parametrize(
    ("columns", "message"),
    [
        ({"image": [b"\x01\x02\x03\x04"] * 4, "label": [1, 2, 3, 4]}, "column 'image' is binary"),
        (
            {"image": [[1, 2, 3, 4]] * 4, "label": [1, None, 3, 4]},
            "null value.*'label', first at row 1",
        ),
        (
            {
                "image": [[1, 2, 3, 4]] * 4,
                "label": [1, 2, 3, 4],
                "height": [2, None, 2, 2],
                "width": [2] * 4,
            },
            "null value.*'height'",
        ),
        ({"image": [[1, 2, 3, None]] * 4, "label": [1, 2, 3, 4]}, "null pixel"),
        (
            {"image": [None, [1, 2, 3, 4], [1, 2, 3, 4], [1, 2, 3, 4]], "label": [1, 2, 3, 4]},
            "null value.*'image', first at row 0",
        ),
    ],
)
def test_null_and_binary_parquet_cells_are_named_input_errors(
    tmp_path: Path, lepton_env: Path, columns: dict, message: str
) -> None:
    """Before: AttributeError or TypeError, exit 1, retried three times, left in the zone."""
    landing = lepton_env / "landing"
    landing.mkdir(parents=True)
    pq.write_table(pa.table(columns), landing / "cells.parquet")
    with pytest.raises(InputDataError, match=message) as caught:
        ingest(str(landing), str(tmp_path / "run"))
    assert caught.value.exit_code == 3 and "quarantined" in caught.value.message
    assert not (landing / "cells.parquet").exists()


# What the landing zone holds -------------------------------------------------------------------


def test_symlinks_out_of_the_zone_and_loops_are_not_followed(
    tmp_path: Path, lepton_env: Path
) -> None:
    """Before: `landing/loop -> landing` read each batch dozens of times (or hit ELOOP)."""
    images, labels = digits()
    landing = lepton_env / "landing"
    write_npz(landing / "day-1" / "data.npz", images, labels)
    os.symlink(landing, landing / "loop")
    os.symlink(landing / "day-1", landing / "day-1" / "again")
    outside = tmp_path / "elsewhere"
    write_npz(outside / "secret.npz", images[:10], labels[:10])
    os.symlink(outside, landing / "outside")
    result = ingest(str(landing), str(tmp_path / "run"))
    assert result.count == 1797 and [b.name for b in result.batches] == ["day-1/data"]


def test_files_still_being_written_are_not_read_or_moved(tmp_path: Path, lepton_env: Path) -> None:
    """Before: a batch folder whose only file was still uploading failed the run and was
    moved while the writer went on."""
    images, labels = digits()
    landing = lepton_env / "landing"
    write_npz(landing / "day-1" / "data.npz", images, labels)
    (landing / "day-2").mkdir()
    (landing / "day-2" / "data.npz.part").write_bytes(b"PK\x03\x04 half an archive")
    (landing / ".day-3.npz").write_bytes(b"PK\x03\x04 half an archive")  # the protocol's name
    result = ingest(str(landing), str(tmp_path / "run"))
    assert result.count == 1797
    assert (landing / "day-2" / "data.npz.part").is_file() and (landing / ".day-3.npz").is_file()
    assert not (landing / "_quarantine").exists()


# Writes and snapshots --------------------------------------------------------------------------


def test_results_are_replaced_whole_never_rewritten_in_place(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before: the file was truncated and rewritten in place; a kill left half a JSON file."""
    target = tmp_path / "result.json"
    storage.write_json(str(target), {"version": 1})
    opened: list[tuple[str, str]] = []
    real_open = open

    def spy(file, mode="r", *args, **kwargs):
        opened.append((str(file), mode))
        return real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr("builtins.open", spy)
    storage.write_json(str(target), {"version": 2, "big": "x" * 100_000})
    monkeypatch.undo()
    assert not [m for f, m in opened if f == str(target) and "w" in m]
    assert json.loads(target.read_text())["version"] == 2

    def killed(*args: object) -> None:
        raise KeyboardInterrupt("killed mid-write")

    monkeypatch.setattr(os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        storage.write_json(str(target), {"version": 3})
    monkeypatch.undo()
    assert json.loads(target.read_text())["version"] == 2
    assert [p.name for p in tmp_path.iterdir()] == ["result.json"]  # no temporary left behind


def test_snapshots_are_content_addressed_and_never_rewritten(
    tmp_path: Path, lepton_env: Path
) -> None:
    """Before: every run wrote `<run>/ingest/snapshot`, and re-running the run (clearing an old
    DAG run) rewrote the folder a registered version's lepton.snapshot_uri points to."""
    images, labels = digits()
    source = write_npz(tmp_path / "data.npz", images, labels)
    first = ingest(str(source), str(tmp_path / "run"))
    assert Path(first.snapshot_uri).name.startswith(f"{first.snapshot_id}-")
    manifest = Path(first.snapshot_uri, "manifest.json")
    written = manifest.stat().st_mtime_ns
    rerun = ingest(str(source), str(tmp_path / "run"))  # the same run again: the same folder
    assert rerun.snapshot_uri == first.snapshot_uri
    write_npz(tmp_path / "data.npz", images[:1000], labels[:1000])  # the source changes
    again = ingest(str(source), str(tmp_path / "run"))  # the same run, re-run
    assert again.snapshot_id != first.snapshot_id and again.snapshot_uri != first.snapshot_uri
    assert manifest.stat().st_mtime_ns == written  # the first snapshot is untouched
    # the same content read from another file: the same id, its own folder, so validation
    # never names (or quarantines) batches another run read
    copy = ingest(str(write_npz(tmp_path / "copy.npz", images, labels)), str(tmp_path / "run3"))
    assert copy.snapshot_id == first.snapshot_id and copy.snapshot_uri != first.snapshot_uri
    assert json.loads(Path(copy.snapshot_uri, "manifest.json").read_text())["source"].endswith(
        "copy.npz"
    )
    assert not [p for p in Path(first.snapshot_uri).parent.iterdir() if p.name.startswith(".")]


def test_a_finished_training_is_reused_only_for_the_same_snapshot(tmp_path: Path) -> None:
    """Before: only the params decided, so new data in a re-run reused the old model."""
    from lepton_tasks.results import TrainResult
    from lepton_tasks.run_folder import RunFolder
    from lepton_tasks.steps.train import TrainParams, _finished

    folder = RunFolder(str(tmp_path / "run"))
    params = TrainParams(epochs=1)
    done = TrainResult(
        run_dir=folder.uri,
        snapshot_uri="/snapshots/aaa",
        model_uri="m",
        mlflow_model_uri="models:/m",
        mlflow_run_id="r",
        mlflow_experiment_id="e",
        architecture="seed_cnn",
        epochs_run=1,
        best_epoch=1,
        metrics={},
        train_seconds=1.0,
        images_per_second=1.0,
        device="CPU",
    )
    folder.save_result("train", done.model_dump(mode="json"))
    storage.write_json(folder.training_params_uri, params.model_dump())
    assert _finished(folder, params, "/snapshots/aaa") == done
    assert _finished(folder, params, "/snapshots/bbb") is None


# Truncated and corrupt files: a named error that quarantines the batch, never fewer examples --


def landing_with_one_good_batch(lepton_env: Path) -> Path:
    images, labels = digits()
    landing = lepton_env / "landing"
    write_npz(landing / "batch-2026-01-01.npz", images[:600], labels[:600])
    return landing


def gzipped_csv(images: np.ndarray, labels: np.ndarray) -> bytes:
    rows = [",".join(["label", *(f"p{i}" for i in range(64))])]
    rows += [",".join(map(str, [y, *x.ravel()])) for x, y in zip(images, labels, strict=True)]
    return gzip.compress("\n".join(rows).encode())


def tfrecord_of(records: list[bytes], scratch: Path) -> bytes:
    import tensorflow as tf

    path = scratch / f"records-{len(list(scratch.iterdir()))}.tfrecord"
    with tf.io.TFRecordWriter(str(path)) as writer:
        for record in records:
            writer.write(record)
    return path.read_bytes()


def example_records(count: int) -> list[bytes]:
    import tensorflow as tf
    from PIL import Image

    images, labels = digits()
    records = []
    for image, label in zip(images[:count], labels[:count], strict=True):
        png = io.BytesIO()
        Image.fromarray(image).save(png, format="PNG")
        feature = {
            "image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[png.getvalue()])),
            "label": tf.train.Feature(int64_list=tf.train.Int64List(value=[int(label)])),
        }
        example = tf.train.Example(features=tf.train.Features(feature=feature))
        records.append(example.SerializeToString())
    return records


def bad_batch(kind: str, scratch: Path) -> tuple[str, bytes]:
    images, labels = digits()
    whole_csv = gzipped_csv(images[600:800], labels[600:800])
    if kind == "truncated gzip":
        return "batch-2026-01-02.csv.gz", whole_csv[: len(whole_csv) // 2]
    if kind == "corrupt gzip":
        return "batch-2026-01-02.csv.gz", whole_csv[:10] + b"\xff" * 64 + whole_csv[74:]
    whole_tfrecord = tfrecord_of(example_records(40), scratch)
    if kind == "truncated tfrecord":
        return "batch-2026-01-02.tfrecord", whole_tfrecord[: len(whole_tfrecord) // 2]
    return "batch-2026-01-02.tfrecord", tfrecord_of(
        [b"\xff\xfe not an Example \x00" * 3] * 4, scratch
    )


@pytest.mark.parametrize(
    ("kind", "reason"),
    [
        ("truncated gzip", "unreadable batch: EOFError: Compressed file ended"),
        ("corrupt gzip", "unreadable batch: "),
        ("truncated tfrecord", r"truncated: the file ends inside record \d+, at byte"),
        ("not examples", r"record 1 is not a tf.train.Example"),
    ],
)
def test_a_cut_or_corrupt_batch_is_named_and_quarantined_and_the_others_go_on(
    tmp_path: Path, lepton_env: Path, kind: str, reason: str
) -> None:
    """Before: a truncated .csv.gz printed only `Aborted!` (EOFError), a corrupt one a zlib
    traceback, both exit 1 with the file left in place to fail every night; a TFRecord cut in
    half was read as its first 20 of 40 examples (exit 0); a TFRecord of records that are not
    `tf.train.Example`s was a protobuf traceback."""
    landing = landing_with_one_good_batch(lepton_env)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    name, payload = bad_batch(kind, scratch)
    (landing / name).write_bytes(payload)
    with pytest.raises(InputDataError, match=reason) as caught:
        ingest(str(landing), str(tmp_path / "run"))
    assert caught.value.exit_code == 3 and caught.value.where.endswith(name)
    assert "quarantined" in caught.value.message
    (quarantined,) = (landing / "_quarantine").iterdir()
    assert (quarantined / name).read_bytes() == payload  # moved whole, nothing lost
    assert not (landing / name).exists()
    again = ingest(str(landing), str(tmp_path / "run2"))  # the night's other batch goes on
    assert [b.name for b in again.batches] == ["batch-2026-01-01"] and again.count == 600


def test_a_batch_whose_name_is_not_utf8_is_read_named_in_text_and_quarantined_by_its_bytes(
    tmp_path: Path, lepton_env: Path
) -> None:
    """Names are bytes on disk. Before: validate failed on the name's lone surrogate
    (UnicodeEncodeError, exit 1) and the bad batch stayed, failing every night."""
    images, labels = digits()
    landing = lepton_env / "landing"
    write_npz(landing / "batch-2026-01-01.npz", images[:900], labels[:900])
    ones = labels == 1
    raw = os.path.join(os.fsencode(landing), b"batch-2026-01-02-caf\xe9.npz")
    write_npz(Path(os.fsdecode(raw)), images[ones][:150], labels[ones][:150])
    result = ingest(str(landing), str(tmp_path / "run"))
    assert [b.name for b in result.batches] == ["batch-2026-01-01", "batch-2026-01-02-caf\\xe9"]
    assert json.loads(result.to_json())["batches"][1]["uri"] == os.fsdecode(raw)  # exact
    with pytest.raises(DataValidationError, match=r"in batch batch-2026-01-02-caf\\xe9") as caught:
        validate(result.snapshot_uri, str(tmp_path / "run"), data_docs=False)
    caught.value.message.encode()  # the message is text: it ends up in alerts and MLflow
    assert not os.path.exists(raw)
    (quarantined,) = (landing / "_quarantine").iterdir()
    assert sorted(os.listdir(os.fsencode(quarantined))) == [
        b"batch-2026-01-02-caf\xe9.npz",
        b"reason.json",
    ]
