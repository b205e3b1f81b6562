"""A snapshot split read shard by shard on every pass: training never holds a split in memory.

A `SplitStream` yields one shard's images and labels at a time (uint8, as stored), so memory
depends on the shard size (at most one ingest chunk), not on the split. Training shuffles the
shard order each pass (seeded) and the examples within a bounded buffer (`make_dataset`).

A snapshot without a val split lends one from train: every tenth example of each shard (by its
position in the shard, so the hold-out does not depend on the shard order).
"""

from __future__ import annotations

import itertools
import struct
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

from lepton_tasks import storage
from lepton_tasks.data.readers import read_npy_header
from lepton_tasks.data.snapshot import read_manifest

HOLDOUT_EVERY = 10
HOLDOUTS = ("all", "keep", "held_out")


@dataclass
class SplitStream:
    """The examples of one split of a snapshot, shard by shard.

    `holdout`: "all" yields every example; "keep" all but every tenth; "held_out" only those.
    `shuffle_seed`: shuffle the shard order, differently on each pass; None keeps it.
    """

    snapshot_uri: str
    split: str
    holdout: str = "all"
    shuffle_seed: int | None = None
    _passes: Iterator[int] = field(default_factory=itertools.count, repr=False)

    def __post_init__(self) -> None:
        if self.holdout not in HOLDOUTS:
            raise ValueError(f"holdout is one of {HOLDOUTS}, not {self.holdout!r}")
        manifest = read_manifest(self.snapshot_uri)
        self.shards: list[str] = list(manifest["shards"][self.split])
        self.image_shape: tuple[int, ...] = tuple(manifest["image_shape"])
        self.count = self._count(int(manifest["split_counts"][self.split]))

    def _count(self, split_count: int) -> int:
        if self.holdout == "all":
            return split_count
        return sum(int(np.count_nonzero(self._select(self._length(name)))) for name in self.shards)

    def _length(self, name: str) -> int:
        """A shard's example count, from its labels alone."""
        uri = storage.join(self.snapshot_uri, name)
        with storage.open_uri(uri, "rb") as handle, np.load(handle) as archive:
            return len(archive["y"])

    def _select(self, n: int) -> slice | np.ndarray:
        if self.holdout == "all":
            return slice(None)
        # every tenth; a shard of fewer than ten lends its last example
        held = np.arange(n) % HOLDOUT_EVERY == min(HOLDOUT_EVERY, n) - 1
        return held if self.holdout == "held_out" else ~held

    def chunks(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """One pass: (images, int32 labels) per shard, in this pass's shard order."""
        order = list(self.shards)
        if self.shuffle_seed is not None:
            pass_number = next(self._passes)
            np.random.default_rng([self.shuffle_seed, pass_number]).shuffle(order)
        return self._read(order)

    def _read(self, order: list[str]) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for name in order:
            shard = storage.load_npz(storage.join(self.snapshot_uri, name))
            keep = self._select(len(shard["y"]))
            yield shard["x"][keep], shard["y"][keep].astype(np.int32)

    def batches(
        self, batch_size: int, shuffle_buffer: int = 0, seed: int = 0
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """One pass in batches; with `shuffle_buffer`, shuffled through a bounded pool.

        Each shard joins the examples carried over from the last one, the pool is permuted
        (seeded, differently on each pass), and all but `shuffle_buffer` of it go out in whole
        batches. Memory: one shard plus the buffer. Vectorized per batch, which keeps the input
        pipeline far from the training step's cost (per-example tf.data shuffling halved it).
        """
        pass_number = next(self._passes) if shuffle_buffer else 0
        rng = np.random.default_rng([seed, pass_number])
        order = list(self.shards)
        if shuffle_buffer:
            rng.shuffle(order)
        carried: tuple[np.ndarray, np.ndarray] | None = None
        for images, labels in self._read(order):
            if carried is not None:
                images = np.concatenate([carried[0], images])
                labels = np.concatenate([carried[1], labels])
            if shuffle_buffer:
                permutation = rng.permutation(len(labels))
                images, labels = images[permutation], labels[permutation]
            ready = max(0, (len(labels) - shuffle_buffer) // batch_size * batch_size)
            for start in range(0, ready, batch_size):
                yield images[start : start + batch_size], labels[start : start + batch_size]
            carried = images[ready:], labels[ready:]
        if carried is not None:
            for start in range(0, len(carried[1]), batch_size):
                yield carried[0][start : start + batch_size], carried[1][start : start + batch_size]

    def layouts(self) -> list[ShardLayout] | None:
        """Each shard's byte layout when all are local files TensorFlow can read directly."""
        if not storage.is_local(self.snapshot_uri):
            return None
        folder = storage.filesystem(self.snapshot_uri)[1]  # a plain path, file:// or not
        layouts = [shard_layout(f"{folder}/{name}", self.image_shape) for name in self.shards]
        return None if any(layout is None for layout in layouts) else layouts  # type: ignore[return-value]

    def head(self, n: int) -> np.ndarray:
        """The first `n` images in stored order (a model's input example)."""
        taken: list[np.ndarray] = []
        for images, _ in self._read(self.shards):
            taken.append(images[: n - sum(len(t) for t in taken)])
            if sum(len(t) for t in taken) >= n:
                break
        if not taken:
            return np.zeros((0, *self.image_shape), np.uint8)
        return np.concatenate(taken)


class ShardLayout(NamedTuple):
    """Where a shard's arrays lie inside its `.npz` (an uncompressed zip of `.npy` files)."""

    path: str
    count: int
    x_offset: int
    x_bytes: int
    y_offset: int
    y_bytes: int


def _npy_member(handle: Any, info: zipfile.ZipInfo) -> tuple[int, tuple[int, ...], np.dtype]:
    """The data offset, shape and dtype of one stored `.npy` member of an open zip file.

    Checked as numpy would: the local header, no encryption, and a member exactly as long as
    its header and data (else TensorFlow would read the next member's bytes as pixels).
    """
    handle.seek(info.header_offset)
    local_header = handle.read(30)
    if len(local_header) < 30 or local_header[:4] != b"PK\x03\x04" or info.flag_bits & 0x1:
        raise ValueError("not a plain stored zip member")
    name_length, extra_length = struct.unpack("<HH", local_header[26:30])
    start = info.header_offset + 30 + name_length + extra_length
    handle.seek(start)
    shape, fortran_order, dtype = read_npy_header(handle)
    data_at = handle.tell()
    if fortran_order:
        raise ValueError("Fortran-ordered array")
    if data_at - start + int(np.prod(shape)) * dtype.itemsize != info.file_size:
        raise ValueError("the member's size does not match its array")
    return data_at, shape, dtype


def shard_layout(path: str, image_shape: tuple[int, ...] | None = None) -> ShardLayout | None:
    """The byte ranges of a local shard's images and labels, for TensorFlow to read directly.

    None when the shard is not laid out as `np.savez` writes it (compressed, other dtypes):
    the caller then reads it through numpy.
    """
    try:
        with open(path, "rb") as handle, zipfile.ZipFile(handle) as archive:
            members = {}
            for name in ("x.npy", "y.npy"):
                info = archive.getinfo(name)
                if info.compress_type != zipfile.ZIP_STORED:
                    return None
                members[name] = _npy_member(handle, info)
    except (OSError, KeyError, ValueError, struct.error, zipfile.BadZipFile):
        return None
    (x_at, x_shape, x_dtype), (y_at, y_shape, y_dtype) = members["x.npy"], members["y.npy"]
    if x_dtype != np.uint8 or y_dtype != np.dtype("<i2") or x_shape[:1] != y_shape:
        return None
    if image_shape is not None and tuple(x_shape[1:]) != tuple(image_shape):
        return None
    count = int(y_shape[0])
    return ShardLayout(path, count, x_at, int(np.prod(x_shape)), y_at, 2 * count)


# The shuffle buffer bounds training's memory: at most 50,000 images and 256 MiB of them
# (50,000 MNIST images are 39 MB as uint8; 224x224 colour ones fill 256 MiB at 1,700).
SHUFFLE_BUFFER = 50_000
SHUFFLE_BUFFER_BYTES = 256 * 1024**2


def shuffle_buffer(stream: SplitStream) -> int:
    """How many examples the training shuffle holds for this split."""
    per_image = max(1, int(np.prod(stream.image_shape)))
    return max(1, min(stream.count, SHUFFLE_BUFFER, SHUFFLE_BUFFER_BYTES // per_image))


def make_dataset(stream: SplitStream, batch_size: int, seed: int, training: bool) -> Any:
    """A `tf.data` pipeline streaming the split shard by shard.

    Shuffled (seeded) for training: the shard order each pass, and the examples within a
    bounded buffer. Batched, cast to float32 per batch, prefetched. Its cardinality is
    declared, so Keras knows an epoch's length, and a multi-worker strategy shards it by data
    (each worker takes its part of every global batch).

    Local shards are read by TensorFlow's own ops (file bytes to tensors): a Python generator
    in the pipeline competes with the training loop for the interpreter and halved the
    images/s here. Remote shards go through the generator.
    """
    import tensorflow as tf

    layouts = stream.layouts()
    buffer = shuffle_buffer(stream) if training else 0
    if layouts is not None:
        examples = _read_shards(stream, layouts, seed, training)
        if training:
            examples = examples.shuffle(buffer, seed=seed, reshuffle_each_iteration=True)
        dataset = examples.batch(batch_size)
    else:
        dataset = tf.data.Dataset.from_generator(
            lambda: stream.batches(batch_size, shuffle_buffer=buffer, seed=seed),
            output_signature=(
                tf.TensorSpec((None, *stream.image_shape), tf.uint8),
                tf.TensorSpec((None,), tf.int32),
            ),
        )
    grey = len(stream.image_shape) == 2

    def to_float(x: Any, y: Any) -> tuple[Any, Any]:
        x = tf.cast(x, tf.float32)
        return (tf.expand_dims(x, -1) if grey else x), y

    dataset = dataset.map(to_float, num_parallel_calls=tf.data.AUTOTUNE).apply(
        tf.data.experimental.assert_cardinality(-(-stream.count // batch_size))
    )
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return dataset.with_options(options).prefetch(tf.data.AUTOTUNE)


def _read_shards(stream: SplitStream, layouts: list[ShardLayout], seed: int, training: bool) -> Any:
    """The examples of local shards, one shard's bytes in memory at a time, no Python."""
    import tensorflow as tf

    table = tf.data.Dataset.from_tensor_slices(
        tuple(np.asarray(column) for column in zip(*layouts, strict=True))
    )
    if training:
        table = table.shuffle(len(layouts), seed=seed, reshuffle_each_iteration=True)
    shape, holdout = list(stream.image_shape), stream.holdout

    def read(path: Any, count: Any, x_at: Any, x_bytes: Any, y_at: Any, y_bytes: Any) -> Any:
        raw = tf.io.read_file(path)
        images = tf.io.decode_raw(tf.strings.substr(raw, x_at, x_bytes), tf.uint8)
        images = tf.reshape(images, [-1, *shape])
        labels = tf.io.decode_raw(tf.strings.substr(raw, y_at, y_bytes), tf.int16)
        labels = tf.cast(labels, tf.int32)
        if holdout != "all":  # the same every-tenth rule as SplitStream._select
            every = tf.constant(HOLDOUT_EVERY, tf.int64)
            held = tf.equal(tf.range(count) % every, tf.minimum(every, count) - 1)
            keep = held if holdout == "held_out" else tf.logical_not(held)
            images, labels = tf.boolean_mask(images, keep), tf.boolean_mask(labels, keep)
        return tf.data.Dataset.from_tensor_slices((images, labels))

    return table.flat_map(read)
