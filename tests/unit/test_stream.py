"""Training reads the snapshot shard by shard (SplitStream, make_dataset), never a whole split."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from lepton_tasks import storage
from lepton_tasks.data.snapshot import example_hashes, load_split, read_manifest
from lepton_tasks.data.stream import SplitStream, make_dataset, shard_layout, shuffle_buffer
from lepton_tasks.errors import InputDataError
from lepton_tasks.steps.ingest import ingest
from lepton_tasks.steps.train import TrainParams, train
from tests.conftest import digits, write_npz


@pytest.fixture
def sharded_snapshot(tmp_path: Path, lepton_env: Path) -> str:
    """The real digits in shards of at most 200 examples per split (chunk size 300)."""
    x, y = digits()
    source = write_npz(tmp_path / "digits.npz", x, y)
    return ingest(str(source), str(tmp_path / "run"), chunk_size=300).snapshot_uri


def _hashes(chunks: list[tuple[np.ndarray, np.ndarray]]) -> list[bytes]:
    return sorted(h for images, _ in chunks for h in example_hashes(images).tolist())


def test_a_pass_yields_every_example_once_shard_by_shard(sharded_snapshot: str) -> None:
    manifest = read_manifest(sharded_snapshot)
    assert len(manifest["shards"]["train"]) >= 5
    stream = SplitStream(sharded_snapshot, "train", shuffle_seed=7)
    images, labels = load_split(sharded_snapshot, "train")
    first, second = list(stream.chunks()), list(stream.chunks())
    assert stream.count == len(images) == manifest["split_counts"]["train"]
    assert len(first) == len(manifest["shards"]["train"])  # one chunk per shard
    assert max(len(x) for x, _ in first) <= 300
    assert _hashes(first) == _hashes(second) == sorted(example_hashes(images).tolist())
    order = [[example_hashes(x[:1])[0] for x, _ in chunks] for chunks in (first, second)]
    assert order[0] != order[1], "the shard order is reshuffled on each pass"
    assert sorted(np.concatenate([y for _, y in first]).tolist()) == sorted(labels.tolist())


def test_the_lent_validation_tenth_never_overlaps_training(sharded_snapshot: str) -> None:
    kept = list(SplitStream(sharded_snapshot, "train", holdout="keep").chunks())
    held = list(SplitStream(sharded_snapshot, "train", holdout="held_out").chunks())
    everything = _hashes(list(SplitStream(sharded_snapshot, "train").chunks()))
    assert not set(_hashes(kept)) & set(_hashes(held))
    assert sorted(_hashes(kept) + _hashes(held)) == everything
    assert 0.08 < len(_hashes(held)) / len(everything) < 0.12
    assert SplitStream(sharded_snapshot, "train", holdout="held_out").count == len(_hashes(held))


def _dataset_examples(dataset: object) -> tuple[list[bytes], list[int], int]:
    batches = list(dataset.as_numpy_iterator())  # type: ignore[attr-defined]
    images = np.concatenate([x for x, _ in batches])[..., 0].astype(np.uint8)
    labels = np.concatenate([y for _, y in batches])
    order = sorted(zip(example_hashes(images).tolist(), labels.tolist(), strict=True))
    return [h for h, _ in order], [y for _, y in order], len(batches)


@pytest.mark.parametrize("holdout", ["all", "keep", "held_out"])
def test_tensorflow_reads_the_shards_as_numpy_does(sharded_snapshot: str, holdout: str) -> None:
    stream = SplitStream(sharded_snapshot, "train", holdout=holdout, shuffle_seed=3)
    assert stream.layouts() is not None  # local shards: read by TensorFlow's own ops
    hashes, labels, n_batches = _dataset_examples(make_dataset(stream, 32, 3, training=True))
    expected = sorted(
        (h, int(y))
        for x, ys in stream.chunks()
        for h, y in zip(example_hashes(x).tolist(), ys, strict=True)
    )
    assert hashes == [h for h, _ in expected] and labels == [y for _, y in expected]
    assert n_batches == -(-stream.count // 32) == make_dataset(stream, 32, 3, True).cardinality()


def test_remote_shards_stream_one_at_a_time_through_numpy(
    sharded_snapshot: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    loaded: list[str] = []
    real_load = storage.load_npz
    monkeypatch.setattr(storage, "load_npz", lambda uri: loaded.append(uri) or real_load(uri))
    stream = SplitStream(sharded_snapshot, "train", shuffle_seed=1)
    monkeypatch.setattr(stream, "layouts", lambda: None)  # as for an s3:// or gs:// snapshot
    dataset = make_dataset(stream, batch_size=32, seed=1, training=True)
    hashes, _, n_batches = _dataset_examples(dataset)
    assert len(loaded) == len(stream.shards)  # each shard read once per pass
    assert hashes == sorted(example_hashes(load_split(sharded_snapshot, "train")[0]).tolist())
    assert n_batches == -(-stream.count // 32)
    batches = list(stream.batches(32, shuffle_buffer=100, seed=1))
    assert max(len(y) for _, y in batches) == 32 and sum(len(y) for _, y in batches) == stream.count
    again = list(stream.batches(32, shuffle_buffer=100, seed=1))
    assert not np.array_equal(batches[0][1], again[0][1]), "each pass is shuffled anew"


@pytest.mark.parametrize("reader", ["tensorflow", "numpy"])
def test_training_streams_through_either_reader(
    sharded_snapshot: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, reader: str
) -> None:
    if reader == "numpy":  # as for an s3:// or gs:// snapshot
        monkeypatch.setattr(SplitStream, "layouts", lambda self: None)
    result = train(sharded_snapshot, str(tmp_path / reader), params=TrainParams(epochs=2))
    assert result.epochs_run == 2
    assert result.metrics["val_accuracy"] > 0.5  # chance is 0.1
    assert result.images_per_second > 0


def _npz(path: Path, **arrays: np.ndarray) -> str:
    np.savez(path, **arrays)
    return str(path)


def test_tensorflow_reads_only_shards_laid_out_as_ingest_writes_them(tmp_path: Path) -> None:
    x, y = np.zeros((4, 3, 3), np.uint8), np.arange(4, dtype=np.int16)
    plain = shard_layout(_npz(tmp_path / "plain.npz", x=x, y=y), (3, 3))
    assert plain is not None and plain.count == 4 and plain.x_bytes == 36 and plain.y_bytes == 8
    raw = (tmp_path / "plain.npz").read_bytes()
    assert raw[plain.x_offset : plain.x_offset + 36] == x.tobytes()
    assert raw[plain.y_offset : plain.y_offset + 8] == y.tobytes()
    odd = {
        "compressed": lambda p: np.savez_compressed(p, x=x, y=y),
        "big-endian labels": lambda p: np.savez(p, x=x, y=y.astype(">i2")),
        "Fortran order": lambda p: np.savez(p, x=np.asfortranarray(x), y=y),
        "float images": lambda p: np.savez(p, x=x.astype(np.float32), y=y),
        "no labels": lambda p: np.savez(p, x=x),
    }
    for name, write in odd.items():
        write(tmp_path / f"{name}.npz")
        assert shard_layout(str(tmp_path / f"{name}.npz"), (3, 3)) is None, name
    assert shard_layout(str(tmp_path / "plain.npz"), (9,)) is None  # not the manifest's shape
    (tmp_path / "cut.npz").write_bytes(raw[: plain.x_offset + 10])
    assert shard_layout(str(tmp_path / "cut.npz"), (3, 3)) is None
    assert shard_layout(str(tmp_path / "missing.npz")) is None


def test_the_shuffle_buffer_is_bounded_in_bytes(sharded_snapshot: str) -> None:
    stream = SplitStream(sharded_snapshot, "train")
    assert shuffle_buffer(stream) == stream.count  # a small split shuffles whole
    stream.count, stream.image_shape = 10**6, (224, 224, 3)
    assert shuffle_buffer(stream) * 224 * 224 * 3 <= 256 * 1024**2


def test_a_manifest_naming_other_files_is_refused(sharded_snapshot: str) -> None:
    manifest_path = Path(sharded_snapshot) / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["shards"]["train"].append("../../secrets.npz")
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(InputDataError, match="odd train shards"):
        SplitStream(sharded_snapshot, "train")
