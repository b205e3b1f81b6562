"""The normalized snapshot: uint8 image shards per split plus a `manifest.json`.

Layout under the snapshot folder::

    manifest.json          content sha256, counts, shape, classes, label counts, shards, batches
    train-00000.npz ...    x: uint8 (n, H, W[, C]), y: int16 class index, h: 16-byte content hash,
                           b: int16 index of the source batch (manifest 'batches')

Splits come from a hash of each image's bytes, so an example keeps its split as data grows and
duplicates can never leak across splits. The content sha256 does not depend on input order, so
the same data always gets the same snapshot id. Snapshots are content-addressed: `ingest` writes
one into a staging folder and then renames it to `<snapshot root>/<snapshot id>`, so a snapshot
folder never changes once it exists, and the same content is one folder.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np

from lepton_tasks import storage
from lepton_tasks.errors import InputDataError

SPLITS = ("train", "val", "test")
MANIFEST = "manifest.json"
HASH_BYTES = 16


def example_hashes(images: np.ndarray) -> np.ndarray:
    rows = np.ascontiguousarray(images).reshape(len(images), -1)
    digests = b"".join(hashlib.sha256(row.data).digest()[:HASH_BYTES] for row in rows)
    return np.frombuffer(digests, dtype=f"S{HASH_BYTES}")


def assign_splits(hashes: np.ndarray, val_fraction: float, test_fraction: float) -> np.ndarray:
    """0 = train, 1 = val, 2 = test, from the first 8 bytes of each content hash."""
    as_int = np.frombuffer(hashes.tobytes(), dtype=">u8")[:: HASH_BYTES // 8]
    position = as_int / float(2**64)
    return np.where(
        position < test_fraction, 2, np.where(position < test_fraction + val_fraction, 1, 0)
    )


def _whole(labels: np.ndarray, where: str) -> np.ndarray:
    """Float labels that are whole numbers as ints (a CSV or Parquet often stores 3 as 3.0)."""
    if labels.dtype.kind != "f":
        return labels
    if np.isnan(labels).any():
        raise InputDataError(f"{int(np.isnan(labels).sum())} label(s) are NaN", where=where)
    if not np.all(labels == np.round(labels)):
        raise InputDataError("labels must be whole numbers or class names", where=where)
    return labels.astype(np.int64)


def _is_int(key: str) -> bool:
    try:
        int(key)
    except ValueError:
        return False
    return True


def _key(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


# More distinct labels than this is a wrong label column (pixel values, ids), not a class set.
MAX_CLASSES = 1000


def class_names_from_labels(label_arrays: list[np.ndarray], where: str) -> list[str]:
    """The class set the labels hold: numbers in numeric order ("2" before "10"), names in
    alphabetical order. Refuses fewer than two classes and an implausible number of them."""
    keys: set[str] = set()
    for labels in label_arrays:
        keys.update(_key(value) for value in np.unique(_whole(np.asarray(labels), where)))
    numeric = all(_is_int(key) for key in keys)  # "10" from a folder name counts as 10
    if len(keys) < 2:
        raise InputDataError(
            f"the labels hold {len(keys)} class(es) {sorted(keys)}: a classifier needs two or "
            "more (or pass the class set with --classes)",
            where=where,
        )
    if len(keys) > MAX_CLASSES:
        raise InputDataError(
            f"{len(keys)} distinct labels: more than {MAX_CLASSES} classes, so the label column "
            "is probably not labels (pass the class set with --classes if it is)",
            where=where,
        )
    return sorted(keys, key=int) if numeric else sorted(keys)


def map_labels(labels: np.ndarray, class_names: list[str], where: str) -> np.ndarray:
    """Raw labels (ints or strings) to class indices; anything outside the class set is refused."""
    labels = _whole(labels, where)
    uniques, inverse = np.unique(labels, return_inverse=True)
    index = {name: i for i, name in enumerate(class_names)}
    inverse = inverse.reshape(-1)
    lookup = np.zeros(len(uniques), dtype=np.int16)
    known = np.ones(len(uniques), dtype=bool)
    unknown = []
    for i, value in enumerate(uniques):
        key = _key(value)
        if key in index:
            lookup[i] = index[key]
        else:
            known[i] = False
            unknown.append(key)
    if unknown:
        bad = ~known[inverse]
        raise InputDataError(
            f"{int(bad.sum())} label(s) outside the class set {class_names}: "
            f"values {unknown[:5]}, first at index {int(np.flatnonzero(bad)[0])}",
            where=where,
        )
    return lookup[inverse]


@dataclass
class SnapshotWriter:
    """Streams chunks into split shards and accumulates what the manifest needs."""

    uri: str
    class_names: list[str]
    val_fraction: float
    test_fraction: float
    # "data": the class set was read from the labels; "explicit": --classes or LEPTON_CLASSES.
    class_source: str = "explicit"
    image_shape: tuple[int, ...] | None = None
    shards: dict[str, list[str]] = field(default_factory=lambda: {s: [] for s in SPLITS})
    split_counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SPLITS, 0))
    _records: list[np.ndarray] = field(default_factory=list)
    _label_counts: np.ndarray | None = None
    _pixel_sum: float = 0.0
    _pixel_sq_sum: float = 0.0
    _count: int = 0

    def add(self, images: np.ndarray, labels: np.ndarray, where: str, batch_index: int = 0) -> None:
        if len(images) == 0:
            return
        shape = tuple(images.shape[1:])
        if self.image_shape is None:
            self.image_shape = shape
        elif shape != self.image_shape:
            raise InputDataError(
                f"image shape {shape} differs from {self.image_shape} seen earlier in this "
                "source: all images of a dataset must have one shape",
                where=where,
            )
        classes = map_labels(labels, self.class_names, where)
        hashes = example_hashes(images)
        splits = assign_splits(hashes, self.val_fraction, self.test_fraction)
        for split_index, split in enumerate(SPLITS):
            mask = splits == split_index
            if not mask.any():
                continue
            shard = storage.join(self.uri, f"{split}-{len(self.shards[split]):05d}.npz")
            storage.save_npz(
                shard,
                x=images[mask],
                y=classes[mask],
                h=hashes[mask],
                b=np.full(int(mask.sum()), batch_index, dtype=np.int16),
            )
            self.shards[split].append(storage.basename(shard))
            self.split_counts[split] += int(mask.sum())
        record = np.empty(len(images), dtype=[("h", f"S{HASH_BYTES}"), ("y", ">i2")])
        record["h"], record["y"] = hashes, classes
        self._records.append(record)
        counts = np.bincount(classes, minlength=len(self.class_names))
        self._label_counts = counts if self._label_counts is None else self._label_counts + counts
        pixels = images.astype(np.float64)
        self._pixel_sum += float(pixels.sum())
        self._pixel_sq_sum += float(np.square(pixels).sum())
        self._count += len(images)

    def content_sha256(self) -> str:
        """The examples (image hash, class), in any order, and what decides their split and
        class: the same sha256 means the same snapshot, shard for shard."""
        records = np.sort(np.concatenate(self._records), order=("h", "y"))
        digest = hashlib.sha256(records.tobytes())
        digest.update(repr((self.class_names, self.val_fraction, self.test_fraction)).encode())
        return digest.hexdigest()

    def finish(self, *, source: str, fmt: str, batches: list[dict[str, Any]]) -> dict[str, Any]:
        if self._count == 0:
            raise InputDataError("the dataset is empty: no examples were read", where=source)
        sha = self.content_sha256()
        pixels_per_image = int(np.prod(self.image_shape))
        n_pixels = self._count * pixels_per_image
        mean = self._pixel_sum / n_pixels
        manifest = {
            "snapshot_id": sha[:16],
            "sha256": sha,
            "count": self._count,
            "image_shape": list(self.image_shape or ()),
            "dtype": "uint8",
            "class_names": self.class_names,
            "class_source": self.class_source,
            "label_counts": dict(zip(self.class_names, map(int, self._label_counts), strict=True)),
            "split_counts": self.split_counts,
            "split_fractions": {"val": self.val_fraction, "test": self.test_fraction},
            "pixel_mean": mean,
            "pixel_std": float(np.sqrt(max(self._pixel_sq_sum / n_pixels - mean**2, 0.0))),
            "shards": self.shards,
            "source": source,
            "format": fmt,
            "batches": batches,
            "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        storage.write_json(storage.join(self.uri, MANIFEST), manifest)
        return manifest


def read_manifest(snapshot_uri: str) -> dict[str, Any]:
    uri = storage.join(snapshot_uri, MANIFEST)
    if not storage.exists(uri):
        raise InputDataError("not a Lepton snapshot: manifest.json is missing", where=snapshot_uri)
    manifest = storage.read_json(uri)
    for split, names in (manifest.get("shards") or {}).items():
        # only the split's own shards, in the snapshot folder: no ../, no other split's
        bad = [n for n in names if not re.fullmatch(rf"{re.escape(split)}-\d{{5}}\.npz", str(n))]
        if bad:
            raise InputDataError(f"the manifest lists odd {split} shards {bad[:3]}", where=uri)
    return manifest


def iter_shards(snapshot_uri: str, split: str) -> Iterator[dict[str, np.ndarray]]:
    manifest = read_manifest(snapshot_uri)
    for name in manifest["shards"][split]:
        yield storage.load_npz(storage.join(snapshot_uri, name))


def load_split(snapshot_uri: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    manifest = read_manifest(snapshot_uri)
    shards = list(iter_shards(snapshot_uri, split))
    if not shards:
        shape = (0, *manifest["image_shape"])
        return np.zeros(shape, np.uint8), np.zeros(0, np.int16)
    return (
        np.concatenate([s["x"] for s in shards]),
        np.concatenate([s["y"] for s in shards]),
    )
