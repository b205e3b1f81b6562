"""Readers for labeled image datasets, each yielding uint8 image chunks and raw labels.

A source resolves to one or more batches (a landing-zone folder holds many). Each batch is read
in chunks so that large inputs never sit in memory several times over. Everything a user can get
wrong raises an `InputDataError` naming the file and what is wrong with it.
"""

from __future__ import annotations

import gzip
import logging
import os
import re
import struct
import zipfile
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import IO, Any

import numpy as np

from lepton_tasks import storage
from lepton_tasks.errors import InputDataError, UnknownSourceError

FORMATS = ("auto", "sklearn", "idx", "npz", "parquet", "csv", "tfrecord", "images")
CHUNK_SIZE = 65_536
IDX_IMAGES_MAGIC = 0x00000803
IDX_LABELS_MAGIC = 0x00000801
QUARANTINE_FOLDER = "_quarantine"

Chunk = tuple[np.ndarray, np.ndarray]
log = logging.getLogger(__name__)

# Scoring reads data that has no labels yet: with this set, a batch without its labels (an NPZ
# without 'y', IDX images without their labels file, a table without a label column, a flat
# folder of images) reads with every label None instead of failing.
_LABELS_OPTIONAL: ContextVar[bool] = ContextVar("lepton_labels_optional", default=False)


@contextmanager
def labels_optional() -> Iterator[None]:
    """Within this block, batches without labels are read (labels all None)."""
    token = _LABELS_OPTIONAL.set(True)
    try:
        yield
    finally:
        _LABELS_OPTIONAL.reset(token)


def labels_are_optional() -> bool:
    return _LABELS_OPTIONAL.get()


def no_labels(count: int) -> np.ndarray:
    return np.full(count, None, dtype=object)


@dataclass
class Batch:
    """One readable unit of a source: a file, a pair of IDX files or a bundled dataset."""

    name: str
    uri: str
    format: str
    count: int
    image_shape: tuple[int, ...]
    read_chunks: Callable[[int], Iterator[Chunk]] = field(repr=False)
    files: list[str] = field(default_factory=list)
    # The landing-zone entry this batch came from: what gets quarantined if it is bad.
    origin: str | None = None
    # The labels alone, where a format can read them without the images.
    read_labels: Callable[[], np.ndarray] | None = field(default=None, repr=False)
    # False for a batch read without labels (see `labels_optional`): every label is None.
    labelled: bool = True

    def __post_init__(self) -> None:
        # a name is text (the manifest, validation's messages, MLflow); uri and origin keep
        # the path's bytes, which are what is read and quarantined
        self.name = storage.as_text(self.name)

    def labels(self) -> np.ndarray:
        """Every label of the batch (for the class set), cheaply where the format allows."""
        if self.read_labels is not None:
            return self.read_labels()
        chunks = [labels for _, labels in self.read_chunks(CHUNK_SIZE)]
        return np.concatenate(chunks) if chunks else np.asarray([])


# Pixel normalization --------------------------------------------------------------------------


def to_uint8(images: np.ndarray, where: str, *, source_max: float | None = None) -> np.ndarray:
    """Bring pixels to uint8 0..255; floats in [0, 1] are scaled, NaN and out-of-range refused."""
    if images.dtype == np.uint8 and source_max is None:
        return images
    if images.size == 0:
        return images.astype(np.uint8)
    if np.issubdtype(images.dtype, np.floating):
        nan_mask = np.isnan(images)
        if nan_mask.any():
            bad = np.flatnonzero(nan_mask.reshape(len(images), -1).any(axis=1))
            raise InputDataError(
                f"{int(nan_mask.sum())} NaN pixel(s) in {len(bad)} image(s), first at index "
                f"{int(bad[0])}",
                where=where,
            )
    elif not np.issubdtype(images.dtype, np.integer):
        raise InputDataError(f"images have non-numeric dtype {images.dtype}", where=where)
    low, high = float(images.min()), float(images.max())
    if source_max is not None:
        if low < 0 or high > source_max:
            raise InputDataError(
                f"pixel values span [{low:g}, {high:g}], expected [0, {source_max:g}]", where=where
            )
        return np.rint(images.astype(np.float32) * (255.0 / source_max)).astype(np.uint8)
    if low < 0 or high > 255:
        raise InputDataError(
            f"pixel values span [{low:g}, {high:g}], expected [0, 255] or [0, 1]", where=where
        )
    if np.issubdtype(images.dtype, np.floating) and high <= 1.0:
        return np.rint(images * 255.0).astype(np.uint8)
    return np.rint(images).astype(np.uint8) if images.dtype.kind == "f" else images.astype(np.uint8)


def check_declared_size(shape: tuple[int, ...], itemsize: int, where: str) -> None:
    """Refuse a declared shape before anything is allocated: no negative dimension, image
    sides within LEPTON_MAX_IMAGE_SIDE, the whole within LEPTON_MAX_BATCH_BYTES."""
    from lepton_tasks.settings import get_settings

    settings = get_settings()
    if any(d < 0 for d in shape):
        raise InputDataError(f"negative dimension in declared shape {shape}", where=where)
    if any(d > settings.max_image_side for d in shape[1:3]):
        raise InputDataError(
            f"declared image size {shape[1:3]} exceeds LEPTON_MAX_IMAGE_SIDE "
            f"({settings.max_image_side})",
            where=where,
        )
    size = int(np.prod(shape, dtype=object)) * itemsize
    if size > settings.max_batch_bytes:
        raise InputDataError(
            f"declared shape {shape} needs {size:,} bytes, more than LEPTON_MAX_BATCH_BYTES "
            f"({settings.max_batch_bytes:,})",
            where=where,
        )


def check_images(images: np.ndarray, where: str) -> np.ndarray:
    if images.ndim not in (3, 4):
        raise InputDataError(
            f"images must be an array of shape (N, H, W) or (N, H, W, C), got {images.shape}",
            where=where,
        )
    return images


def check_counts(n_images: int, n_labels: int, where: str) -> None:
    if n_images != n_labels:
        raise InputDataError(
            f"{n_images} images but {n_labels} labels: counts must match", where=where
        )


def array_chunks(images: np.ndarray, labels: np.ndarray, chunk_size: int) -> Iterator[Chunk]:
    for start in range(0, len(images), chunk_size):
        yield images[start : start + chunk_size], labels[start : start + chunk_size]


def _bundled_digits_csv() -> str:
    """The file behind sklearn.datasets.load_digits, found without importing scikit-learn.

    Importing scikit-learn costs seconds (scipy.stats and friends); the data is one small CSV.
    """
    import importlib.util
    import os

    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        raise UnknownSourceError(
            "sklearn:digits needs scikit-learn installed", where="sklearn:digits"
        )
    return os.path.join(
        next(iter(spec.submodule_search_locations)), "datasets", "data", "digits.csv.gz"
    )


# scikit-learn bundled data --------------------------------------------------------------------


def sklearn_batch(source: str) -> Batch:
    name = source.split(":", 1)[1] if ":" in source else ""
    if name != "digits":
        raise UnknownSourceError(
            f"unknown bundled dataset '{name}'; available: sklearn:digits", where=source
        )

    def read(chunk_size: int) -> Iterator[Chunk]:
        table = np.loadtxt(_bundled_digits_csv(), delimiter=",", dtype=np.float32)
        # The digits are 8x8 intensities in 0..16; scale them onto the common 0..255 range.
        images = to_uint8(table[:, :-1].reshape(-1, 8, 8), source, source_max=16.0)
        yield from array_chunks(images, table[:, -1].astype(np.int64), chunk_size)

    return Batch("digits", source, "sklearn", 1797, (8, 8), read)


# IDX (MNIST format) ---------------------------------------------------------------------------


def _open_maybe_gzip(uri: str) -> IO[bytes]:
    if not storage.exists(uri):
        raise InputDataError("file not found", where=uri)
    raw = storage.open_uri(uri, "rb")
    head = raw.read(2)
    raw.seek(0)
    if head == b"\x1f\x8b":
        return gzip.GzipFile(fileobj=raw, mode="rb")  # type: ignore[return-value]
    return raw


def _read_exact(handle: IO[bytes], size: int, uri: str, what: str) -> bytes:
    try:
        data = handle.read(size)
    except (gzip.BadGzipFile, EOFError, zlib.error, OSError) as exc:
        raise InputDataError(
            f"corrupt or truncated gzip while reading {what}: {exc}", where=uri
        ) from exc
    if len(data) != size:
        raise InputDataError(
            f"file is truncated: expected {size} bytes of {what}, got {len(data)}", where=uri
        )
    return data


def _idx_header(uri: str, expected_magic: int) -> tuple[IO[bytes], list[int]]:
    handle = _open_maybe_gzip(uri)
    (magic,) = struct.unpack(">i", _read_exact(handle, 4, uri, "the IDX header"))
    if magic != expected_magic:
        kind = "images" if expected_magic == IDX_IMAGES_MAGIC else "labels"
        raise InputDataError(
            f"wrong IDX magic 0x{magic & 0xFFFFFFFF:08x}, expected 0x{expected_magic:08x} for "
            f"{kind}",
            where=uri,
        )
    ndim = expected_magic & 0xFF
    dims = list(struct.unpack(f">{ndim}i", _read_exact(handle, 4 * ndim, uri, "the IDX header")))
    return handle, dims


def _link_out_of(path: str, root: str) -> bool:
    """Whether `path` is a link whose target lies outside `root`."""
    if not os.path.islink(path):
        return False
    home = os.path.realpath(root)
    return os.path.commonpath([os.path.realpath(path), home]) != home


def _visible_files(folder: str) -> dict[str, str]:
    """The folder's entries by name, by the landing protocol: no `.`/`_` names, and no link
    whose target lies outside the folder."""
    names = {}
    for uri in storage.list_dir(folder):
        name = storage.basename(uri)
        local = _local_path(uri)
        if name.startswith((".", "_")):
            continue
        if local is not None and _link_out_of(local, _local_path(folder) or folder):
            log.warning("skipping link %s: it leads out of the folder", uri)
            continue
        names[name] = uri
    return names


def _find_idx_pairs(folder: str) -> list[tuple[str, str | None]]:
    names = _visible_files(folder)
    pairs = []
    for name, uri in names.items():
        if "idx3-ubyte" not in name:
            continue
        label_name = name.replace("images", "labels").replace("idx3-ubyte", "idx1-ubyte")
        if label_name not in names and not labels_are_optional():
            raise InputDataError(
                f"IDX images file {name} has no labels file {label_name} beside it", where=folder
            )
        pairs.append((uri, names.get(label_name)))
    return sorted(pairs, key=lambda pair: pair[0])


def idx_batches(source: str) -> list[Batch]:
    pairs: list[tuple[str, str | None]]
    if "," in source:
        images_uri, labels_uri = (part.strip() for part in source.split(",", 1))
        pairs = [(images_uri, labels_uri)]
    elif storage.is_dir(source):
        pairs = _find_idx_pairs(source)
        if not pairs:
            raise InputDataError("no IDX images file (*idx3-ubyte[.gz]) in folder", where=source)
    else:
        name = storage.basename(source)
        label_name = name.replace("images", "labels").replace("idx3-ubyte", "idx1-ubyte")
        labels_uri = source[: -len(name)] + label_name
        missing = labels_are_optional() and not storage.exists(labels_uri)
        pairs = [(source, None if missing else labels_uri)]
    return [
        _idx_batch(images_uri, labels_uri)
        if labels_uri is not None
        else _idx_images_only(images_uri)
        for images_uri, labels_uri in pairs
    ]


def _idx_images_only(images_uri: str) -> Batch:
    """IDX images without labels (scoring)."""
    image_handle, (count, rows, cols) = _idx_header(images_uri, IDX_IMAGES_MAGIC)
    image_handle.close()
    check_declared_size((count, rows, cols), 1, images_uri)

    def read(chunk_size: int) -> Iterator[Chunk]:
        images_in, _ = _idx_header(images_uri, IDX_IMAGES_MAGIC)
        with images_in:
            for start in range(0, count, chunk_size):
                n = min(chunk_size, count - start)
                pixels = _read_exact(images_in, n * rows * cols, images_uri, "image data")
                yield np.frombuffer(pixels, np.uint8).reshape(n, rows, cols), no_labels(n)

    name = storage.basename(images_uri).split("-images")[0].split("-idx3")[0]
    return Batch(
        name,
        images_uri,
        "idx",
        count,
        (rows, cols),
        read,
        [images_uri],
        read_labels=lambda: no_labels(count),
        labelled=False,
    )


def _idx_batch(images_uri: str, labels_uri: str) -> Batch:
    image_handle, image_dims = _idx_header(images_uri, IDX_IMAGES_MAGIC)
    image_handle.close()
    label_handle, label_dims = _idx_header(labels_uri, IDX_LABELS_MAGIC)
    label_handle.close()
    count, rows, cols = image_dims
    check_declared_size((count, rows, cols), 1, images_uri)
    check_declared_size((label_dims[0],), 1, labels_uri)
    check_counts(count, label_dims[0], f"{images_uri} vs {labels_uri}")

    def read(chunk_size: int) -> Iterator[Chunk]:
        images_in, _ = _idx_header(images_uri, IDX_IMAGES_MAGIC)
        labels_in, _ = _idx_header(labels_uri, IDX_LABELS_MAGIC)
        with images_in, labels_in:
            for start in range(0, count, chunk_size):
                n = min(chunk_size, count - start)
                pixels = _read_exact(images_in, n * rows * cols, images_uri, "image data")
                labels = _read_exact(labels_in, n, labels_uri, "label data")
                yield (
                    np.frombuffer(pixels, np.uint8).reshape(n, rows, cols),
                    np.frombuffer(labels, np.uint8),
                )

    def read_labels() -> np.ndarray:
        labels_in, _ = _idx_header(labels_uri, IDX_LABELS_MAGIC)
        with labels_in:
            return np.frombuffer(_read_exact(labels_in, count, labels_uri, "label data"), np.uint8)

    name = storage.basename(images_uri).split("-images")[0].split("-idx3")[0]
    return Batch(
        name,
        images_uri,
        "idx",
        count,
        (rows, cols),
        read,
        [images_uri, labels_uri],
        read_labels=read_labels,
    )


# NPZ ------------------------------------------------------------------------------------------


def read_npy_header(handle: IO[bytes]) -> tuple[tuple[int, ...], bool, np.dtype]:
    """Shape, Fortran order and dtype from a `.npy` header, leaving `handle` at the data."""
    version = np.lib.format.read_magic(handle)
    read_header = (
        np.lib.format.read_array_header_1_0
        if version == (1, 0)
        else np.lib.format.read_array_header_2_0
    )
    return read_header(handle)


def _npy_header(archive: zipfile.ZipFile, key: str, uri: str) -> tuple[tuple[int, ...], np.dtype]:
    """The declared shape and dtype of `<key>.npy` in an NPZ, checked against the bytes it
    holds and against the size bounds, without reading (or inflating) the array."""
    info = archive.getinfo(f"{key}.npy")
    with archive.open(info) as member:
        shape, _, dtype = read_npy_header(member)
        header_bytes = member.tell()
    if dtype.hasobject:
        raise InputDataError(f"array '{key}' holds Python objects, not numbers", where=uri)
    check_declared_size(shape, dtype.itemsize, uri)
    declared = int(np.prod(shape, dtype=object)) * dtype.itemsize
    if header_bytes + declared != info.file_size:
        raise InputDataError(
            f"array '{key}' declares shape {shape} ({declared:,} bytes) but holds "
            f"{info.file_size - header_bytes:,} bytes",
            where=uri,
        )
    return shape, dtype


def npz_batch(uri: str) -> Batch:
    """An NPZ file (x: images, y: labels). Only the headers are read here; the arrays are
    loaded when the batch is read, after their declared sizes passed the bounds."""
    if not storage.exists(uri):
        raise InputDataError("file not found", where=uri)
    try:
        with storage.open_uri(uri, "rb") as handle, zipfile.ZipFile(handle) as archive:
            found = sorted(n.removesuffix(".npy") for n in archive.namelist() if n.endswith(".npy"))
            labelled = "y" in found or not labels_are_optional()
            missing = [key for key in ("x", "y") if key not in found]
            if missing and (labelled or "x" in missing):
                raise InputDataError(
                    f"missing array(s) {missing}; an NPZ dataset holds 'x' (images) and 'y' "
                    f"(labels), found {found}",
                    where=uri,
                )
            shape, _ = _npy_header(archive, "x", uri)
            labels_shape = _npy_header(archive, "y", uri)[0] if labelled else shape[:1]
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, zlib.error) as exc:
        raise InputDataError(f"not a readable .npz archive: {exc}", where=uri) from exc
    if len(shape) not in (3, 4):
        raise InputDataError(
            f"images must be an array of shape (N, H, W) or (N, H, W, C), got {shape}", where=uri
        )
    check_counts(shape[0], int(np.prod(labels_shape)), uri)

    def read(chunk_size: int) -> Iterator[Chunk]:
        try:  # x and y only: another member's size was never checked
            with storage.open_uri(uri, "rb") as handle, np.load(handle, allow_pickle=False) as npz:
                images = npz["x"]
                labels = npz["y"] if labelled else no_labels(len(images))
        except (ValueError, OSError, EOFError, zlib.error, zipfile.BadZipFile) as exc:
            raise InputDataError(f"not a readable .npz archive: {exc}", where=uri) from exc
        images = to_uint8(check_images(images, uri), uri)
        yield from array_chunks(images, labels.reshape(-1), chunk_size)

    def read_labels() -> np.ndarray:
        if not labelled:
            return no_labels(shape[0])
        try:
            with storage.open_uri(uri, "rb") as handle, np.load(handle, allow_pickle=False) as npz:
                return npz["y"].reshape(-1)
        except (ValueError, OSError, EOFError, zlib.error, zipfile.BadZipFile) as exc:
            raise InputDataError(f"not a readable .npz archive: {exc}", where=uri) from exc

    name = storage.basename(uri).removesuffix(".npz")
    return Batch(
        name,
        uri,
        "npz",
        shape[0],
        tuple(shape[1:]),
        read,
        [uri],
        read_labels=read_labels,
        labelled=labelled,
    )


# Parquet --------------------------------------------------------------------------------------


def _check_parquet_schema(parquet: Any, uri: str) -> None:
    """Column types a dataset can have, and its uncompressed size within the bounds."""
    import pyarrow as pa

    schema = parquet.schema_arrow
    image = schema.field("image").type
    is_list = pa.types.is_list(image) or pa.types.is_large_list(image)
    if not (is_list or pa.types.is_fixed_size_list(image)) or not (
        pa.types.is_integer(image.value_type) or pa.types.is_floating(image.value_type)
    ):
        raise InputDataError(
            f"column 'image' is {image}; expected a list of pixel numbers", where=uri
        )
    label = schema.field("label").type if "label" in schema.names else None
    if label is not None and not (
        pa.types.is_integer(label) or pa.types.is_string(label) or pa.types.is_large_string(label)
    ):
        raise InputDataError(f"column 'label' is {label}; expected integers or names", where=uri)
    for name in ("height", "width"):
        if name in schema.names and not pa.types.is_integer(schema.field(name).type):
            raise InputDataError(
                f"column '{name}' is {schema.field(name).type}; expected integers", where=uri
            )
    # the decoded size: rows x pixels per row x bytes per pixel (the file's own sizes are of
    # encoded pages, which dictionary and run-length encoding can shrink a thousandfold)
    if pa.types.is_fixed_size_list(image):
        pixels = image.list_size
    else:
        first = next(parquet.iter_batches(batch_size=1, columns=["image"]), None)
        pixels = first.column(0).value_lengths()[0].as_py() or 0 if first is not None else 0
    check_declared_size(
        (parquet.metadata.num_rows, pixels), max(image.value_type.bit_width // 8, 1), uri
    )


def _no_nulls(table: Any, uri: str) -> None:
    for name in ("image", "label", "height", "width"):
        if name not in table.column_names:
            continue
        column = table.column(name).combine_chunks()
        if column.null_count:
            first = int(np.flatnonzero(column.is_null().to_numpy(zero_copy_only=False))[0])
            raise InputDataError(
                f"{column.null_count} null value(s) in column '{name}', first at row {first} "
                "of this chunk",
                where=uri,
            )
        if name == "image" and column.flatten().null_count:
            raise InputDataError("null pixel(s) in column 'image'", where=uri)


def _parquet_images(table: Any, uri: str) -> np.ndarray:
    _no_nulls(table, uri)
    column = table.column("image").combine_chunks()
    lengths = column.value_lengths().to_numpy(zero_copy_only=False)
    if len(lengths) and (lengths != lengths[0]).any():
        first_bad = int(np.flatnonzero(lengths != lengths[0])[0])
        raise InputDataError(
            f"mixed image sizes: row {first_bad} has {int(lengths[first_bad])} pixels, row 0 has "
            f"{int(lengths[0])}",
            where=uri,
        )
    flat = column.flatten().to_numpy(zero_copy_only=False)
    size = int(lengths[0]) if len(lengths) else 0
    if "height" in table.column_names and "width" in table.column_names:
        height, width = (
            int(table.column("height")[0].as_py()),
            int(table.column("width")[0].as_py()),
        )
    else:
        side = round(size**0.5)
        if side * side != size:
            raise InputDataError(
                f"images of {size} pixels are not square; add 'height' and 'width' columns",
                where=uri,
            )
        height = width = side
    if height * width != size:
        raise InputDataError(
            f"'height' x 'width' = {height * width} but images have {size} pixels", where=uri
        )
    return flat.reshape(len(lengths), height, width)


def _parquet_columns(columns: list[str], uri: str) -> bool:
    """Whether the file has labels; refuses one without images, or without labels where
    labels are required."""
    labelled = "label" in columns or not labels_are_optional()
    missing = [name for name in ("image", "label") if name not in columns]
    if missing and (labelled or "image" in missing):
        raise InputDataError(
            f"missing column(s) {missing}; a Parquet dataset has 'image' (list of pixels) and "
            f"'label', found {columns}",
            where=uri,
        )
    return "label" in columns


def parquet_batch(uri: str) -> Batch:
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not storage.exists(uri):
        raise InputDataError("file not found", where=uri)
    try:
        parquet = pq.ParquetFile(storage.open_uri(uri, "rb"))
    except (pa.ArrowInvalid, OSError) as exc:
        raise InputDataError(f"not a readable Parquet file: {exc}", where=uri) from exc
    labelled = _parquet_columns(parquet.schema_arrow.names, uri)
    _check_parquet_schema(parquet, uri)
    first = next(parquet.iter_batches(batch_size=1), None)  # one row, not a row group
    shape = (
        tuple(_parquet_images(pa.Table.from_batches([first]), uri).shape[1:])
        if first is not None
        else ()
    )

    def read(chunk_size: int) -> Iterator[Chunk]:
        for record_batch in parquet.iter_batches(batch_size=chunk_size):
            table = pa.Table.from_batches([record_batch])
            images = _parquet_images(table, uri)
            if tuple(images.shape[1:]) != shape:
                raise InputDataError(
                    f"mixed image shapes: {images.shape[1:]} after {shape}", where=uri
                )
            labels = (
                table.column("label").to_numpy(zero_copy_only=False)
                if labelled
                else no_labels(len(images))
            )
            yield to_uint8(images, uri), labels

    def read_labels() -> np.ndarray:
        if not labelled:
            return no_labels(parquet.metadata.num_rows)
        arrays = []
        for record_batch in parquet.iter_batches(columns=["label"]):
            table = pa.Table.from_batches([record_batch])
            _no_nulls(table, uri)
            arrays.append(table.column("label").to_numpy(zero_copy_only=False))
        return np.concatenate(arrays or [np.asarray([])])

    return Batch(
        storage.basename(uri).removesuffix(".parquet"),
        uri,
        "parquet",
        parquet.metadata.num_rows,
        shape,
        read,
        [uri],
        read_labels=read_labels,
        labelled=labelled,
    )


# Resolution -----------------------------------------------------------------------------------


def _is_landing_zone(source: str) -> bool:
    """The landing zone or the scoring inbox: folders of batches, never of classes."""
    from lepton_tasks.settings import get_settings

    settings = get_settings()
    return any(_same_folder(source, zone) for zone in (settings.landing, settings.scoring_inbox))


def _same_folder(source: str, zone: str) -> bool:
    local, local_zone = _local_path(source), _local_path(zone)
    if local is not None and local_zone is not None:
        return os.path.realpath(local) == os.path.realpath(local_zone)
    return source.rstrip("/") == zone.rstrip("/")


def detect_format(source: str) -> str:
    lowered = source.lower()
    if lowered.startswith("sklearn:"):
        return "sklearn"
    if lowered.endswith(".npz"):
        return "npz"
    if lowered.endswith(".parquet"):
        return "parquet"
    if lowered.endswith((".csv", ".csv.gz")):
        return "csv"
    if lowered.endswith((".tfrecord", ".tfrecords", ".tfrec")):
        return "tfrecord"
    if "idx3-ubyte" in lowered or "idx1-ubyte" in lowered:
        return "idx"
    if storage.is_dir(source):
        from lepton_tasks.data.image_formats import is_image_folder

        return "images" if is_image_folder(source) else "folder"
    if not storage.exists(source):
        raise InputDataError("source not found", where=source)
    raise UnknownSourceError(
        "cannot tell the format from the name; pass --format idx|npz|parquet", where=source
    )


def open_source(source: str, fmt: str = "auto", as_of: datetime | None = None) -> list[Batch]:
    """Resolve a source into batches; a folder of datasets (a landing zone) gives one per entry
    (with `as_of`, one per entry landed by then)."""
    if fmt not in FORMATS:
        raise UnknownSourceError(f"unknown format '{fmt}'; choose one of {', '.join(FORMATS)}")
    special = storage.special_file(source)
    if special:
        raise InputDataError(f"{special}, not a regular file or folder", where=source)
    if fmt == "auto":
        fmt = detect_format(source)
        if fmt == "images" and (as_of is not None or _is_landing_zone(source)):
            fmt = "folder"  # a zone's folders are batches (`2026-01-01/`), never classes
    if fmt == "sklearn":
        return [sklearn_batch(source)]
    if fmt == "idx":
        return idx_batches(source)
    if fmt == "npz":
        return [npz_batch(source)]
    if fmt == "parquet":
        return [parquet_batch(source)]
    if fmt in ("csv", "tfrecord", "images"):
        from lepton_tasks.data import image_formats

        reader = {
            "csv": image_formats.csv_batch,
            "tfrecord": image_formats.tfrecord_batch,
            "images": image_formats.image_folder_batch,
        }[fmt]
        return [reader(source)]
    return folder_batches(source, as_of)


# Landing zones -------------------------------------------------------------------------------
#
# The landing protocol: a producer writes a batch under a name starting with '.' or '_' (or
# any name without a dataset extension) and renames it when it is complete; Lepton reads only
# dataset files (.npz, .parquet, IDX) and folders of them, and ignores everything else.
# A batch landed at the date (and time) its name carries, `2026-01-03` or `2026-01-03T0400`
# (UTC), else at its modification time: a run "as of" D reads the batches landed by D.

_LANDING_DATE = re.compile(r"(\d{4})-(\d{2})-(\d{2})(?:[T_ ](\d{2})[:-]?(\d{2}))?")

DATASET_SUFFIXES = (".npz", ".parquet", ".csv", ".csv.gz", ".tfrecord", ".tfrecords", ".tfrec")
# What a read of a batch raises on malformed content besides InputDataError (pyarrow's errors
# subclass ValueError, TypeError and NotImplementedError; a truncated gzip stream raises
# EOFError, a corrupt one zlib.error, a broken zip BadZipFile, a cut binary header struct.error:
# none of those is an OSError).
READ_ERRORS = (
    ValueError,
    TypeError,
    AttributeError,
    KeyError,
    IndexError,
    OSError,
    MemoryError,
    NotImplementedError,
    EOFError,
    zlib.error,
    zipfile.BadZipFile,
    struct.error,
)


def unreadable(exc: BaseException, where: str, what: str = "batch") -> InputDataError:
    """A read error of malformed content as the named input error, its cause in words (a
    library's own error class by its full name: `zlib.error`, not `error`)."""
    cls = type(exc)
    kind = cls.__name__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__name__}"
    return InputDataError(f"unreadable {what}: {kind}: {exc}", where=where)


def _is_dataset_file(name: str) -> bool:
    return name.endswith(DATASET_SUFFIXES) or "idx3-ubyte" in name


def _local_path(uri: str) -> str | None:
    return uri.removeprefix("file://") if storage.is_local(uri) else None


def _walk(folder: str, root: str, seen: set[str]) -> Iterator[tuple[str, bool]]:
    """(entry, is_folder) for each visible entry of `folder`, following no link out of the
    zone `root` and none that leads back to a folder already walked."""
    for entry in storage.list_dir(folder):
        name = storage.basename(entry)
        if name.startswith((".", "_")):
            continue  # in progress, or Lepton's own (_quarantine)
        special = storage.special_file(entry)
        if special:
            log.warning("skipping %s: %s, not a regular file", entry, special)
            continue
        local = _local_path(entry)
        if local is not None and (
            _link_out_of(local, _local_path(root) or root)
            or (os.path.islink(local) and os.path.realpath(local) in seen)
        ):
            log.warning("skipping link %s: it leads out of the zone or round a loop", entry)
            continue
        is_folder = storage.is_dir(entry)
        if is_folder and local is not None:
            real = os.path.realpath(local)
            if real in seen:
                log.warning("skipping %s: already read through another path", entry)
                continue
            seen.add(real)
        yield entry, is_folder


def landed_at(entry: str, zone: str) -> datetime | None:
    """When a batch landed: the date its path in the zone names, else its modification time.

    Only the path within the zone counts: a zone named `landing-2027-01-01` dates nothing.
    """
    local_entry, local_zone = _local_path(entry), _local_path(zone)
    if local_entry is not None and local_zone is not None:
        entry_path, zone_path = os.path.abspath(local_entry), os.path.abspath(local_zone)
    else:
        entry_path, zone_path = entry, zone
    prefix = zone_path.rstrip("/") + "/"
    relative = (
        entry_path[len(prefix) :] if entry_path.startswith(prefix) else storage.basename(entry)
    )
    match = _LANDING_DATE.search(relative)
    if match:
        year, month, day, hour, minute = (int(part) if part else 0 for part in match.groups())
        try:
            return datetime(year, month, day, hour, minute, tzinfo=UTC)
        except ValueError:
            pass  # "2026-13-45" is not a date: fall back to the file's own time
    return storage.modified_time(entry)


def dataset_entries(zone: str, as_of: datetime | None = None, *, quiet: bool = False) -> list[str]:
    """The zone's top-level entries that hold a dataset: its batches, in name order.

    With `as_of`, only those landed by then (`landed_at`); `quiet` drops the warnings about
    entries that are not datasets (for a watcher that looks every few seconds).
    """
    seen = _seen_from(zone)
    entries, later = [], []
    for entry, is_folder in list(_walk(zone, zone, seen)):
        if (is_folder and _holds_dataset(entry, zone, seen)) or (
            not is_folder and _is_dataset_file(storage.basename(entry))
        ):
            landed = landed_at(entry, zone) if as_of is not None else None
            if as_of is not None and landed is None:
                log.warning("%s: no date in its name and no modification time; read", entry)
            (later if landed is not None and landed > as_of else entries).append(entry)
        elif not quiet:
            log.warning("skipping %s: not a dataset (see the landing protocol)", entry)
    if later and not quiet:
        log.info("as of %s, leaving out %d later batches: %s", as_of, len(later), later)
    return entries


def _holds_dataset(folder: str, zone: str, seen: set[str]) -> bool:
    from lepton_tasks.data.image_formats import is_image_folder

    if is_image_folder(folder):
        return True
    return any(
        _holds_dataset(entry, zone, seen)
        if is_folder
        else _is_dataset_file(storage.basename(entry))
        for entry, is_folder in list(_walk(folder, zone, seen))
    )


def _seen_from(zone: str) -> set[str]:
    """The real paths already walked, starting with the zone's own (local zones only)."""
    local = _local_path(zone)
    return {os.path.realpath(local)} if local is not None else set()


def is_empty_landing_zone(source: str, as_of: datetime | None = None) -> bool:
    """A folder source that is missing or holds no dataset yet (hidden, in-progress and
    non-dataset entries do not count). Other sources are never empty here: reading them says
    whether they are good."""
    if source.startswith("sklearn:") or "," in source:
        return False
    if not storage.exists(source):
        return True
    if not storage.is_dir(source) or _find_idx_pairs(source):
        return False
    return not dataset_entries(source, as_of)


def folder_batches(folder: str, as_of: datetime | None = None) -> list[Batch]:
    """A folder of datasets (a landing zone): each dataset file or sub-folder is a batch;
    with `as_of`, each one landed by then.

    Batches are named by their path in the folder ("2026-01-01/data"), so same-named files in
    different folders stay apart. A batch that cannot be read raises InputDataError naming it
    (`batch_uri`: the entry to quarantine).
    """
    if _find_idx_pairs(folder):
        return idx_batches(folder)
    batches: list[Batch] = []
    for _, found in zone_entries(folder, as_of):
        if isinstance(found, InputDataError):
            raise found
        batches.extend(found)
    if not batches:
        landed = f"landed by {as_of:%Y-%m-%dT%H:%M}Z " if as_of else ""
        raise InputDataError(
            f"no dataset {landed}in folder (expected .npz, .parquet or IDX files, or batch "
            "folders)",
            where=folder,
        )
    return batches


def zone_entries(
    zone: str, as_of: datetime | None = None
) -> Iterator[tuple[str, list[Batch] | InputDataError]]:
    """Each entry of a zone with its batches (origin: the entry; names: paths in the zone),
    or the InputDataError that reading it raised (`batch_uri`: the entry), entry by entry.

    IDX files at the top of a zone are refused: a zone's batches are entries it can move
    whole, and an IDX pair is two files (put them in a batch folder).
    """
    if _find_idx_pairs(zone):
        yield (
            zone,
            InputDataError(
                "IDX files at the top of the folder: put each pair in a batch folder", where=zone
            ),
        )
        return
    seen = _seen_from(zone)
    for entry in dataset_entries(zone, as_of):
        try:
            found = _entry_batches(entry, zone, seen)
        except InputDataError as exc:
            exc.batch_uri = entry
            yield entry, exc
            continue
        except READ_ERRORS as exc:
            error = unreadable(exc, entry)
            error.batch_uri = entry
            yield entry, error
            continue
        for batch in found:
            batch.origin = entry
            batch.name = _relative_name(batch.uri, zone)
        yield entry, found


def _entry_batches(entry: str, zone: str, seen: set[str]) -> list[Batch]:
    from lepton_tasks.data.image_formats import image_folder_batch, is_image_folder

    if not storage.is_dir(entry):
        return open_source(entry)
    if _find_idx_pairs(entry):
        return idx_batches(entry)
    if is_image_folder(entry):  # a batch of class folders of images
        return [image_folder_batch(entry)]
    local = _local_path(entry)
    if local is not None:
        seen.add(os.path.realpath(local))
    found: list[Batch] = []
    for child, is_folder in list(_walk(entry, zone, seen)):
        if is_folder:
            found += _entry_batches(child, zone, seen)
        elif _is_dataset_file(storage.basename(child)):
            found += open_source(child)
    return found


def _relative_name(uri: str, folder: str) -> str:
    relative = uri[len(folder.rstrip("/")) + 1 :] if uri.startswith(folder.rstrip("/")) else uri
    for suffix in DATASET_SUFFIXES:
        relative = relative.removesuffix(suffix)
    return storage.as_text(relative)
