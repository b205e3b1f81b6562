"""The formats people already have: a folder of class folders of images (Keras'
`image_dataset_from_directory` layout), CSV with a label column and pixel columns (Kaggle's
MNIST), and TFRecord files of `tf.train.Example` (TFDS, TFX).

Each gives a `Batch` read in chunks, with the same guarantees as the other readers: sizes are
checked before anything large is decoded, and every mistake is an `InputDataError` naming the
file. Images of one dataset must share one size: a different one is refused, naming the file
and both sizes (Lepton does not resize behind your back).
"""

from __future__ import annotations

import io
import logging
import math
import os
import re
from collections.abc import Iterator
from typing import Any

import numpy as np

from lepton_tasks import storage
from lepton_tasks.data.readers import (
    Batch,
    Chunk,
    check_declared_size,
    labels_are_optional,
    no_labels,
    to_uint8,
)
from lepton_tasks.errors import InputDataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
CSV_SUFFIXES = (".csv", ".csv.gz")
TFRECORD_SUFFIXES = (".tfrecord", ".tfrecords", ".tfrec")
# Feature names TFDS, TFX and most exporters use, in the order they are tried.
TFRECORD_IMAGE_KEYS = ("image", "image/encoded", "image_raw", "image_bytes")
TFRECORD_LABEL_KEYS = ("label", "image/class/label", "image/class/text", "class")


def _visible(uri: str) -> list[str]:
    """The folder's entries but hidden ones and what is not a regular file or folder (a FIFO
    would block the read that opens it), the latter with a warning."""
    visible = []
    for entry in storage.list_dir(uri):
        if storage.basename(entry).startswith((".", "_")):
            continue
        special = storage.special_file(entry)
        if special:
            log.warning("skipping %s: %s, not a regular file", entry, special)
            continue
        visible.append(entry)
    return visible


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_SUFFIXES)


def is_image_folder(folder: str) -> bool:
    """A folder whose sub-folders (the classes) hold image files, and nothing else counts;
    where labels are optional (scoring), also a folder of image files with no sub-folder."""
    if not storage.is_dir(folder):
        return False
    entries = _visible(folder)
    classes = [e for e in entries if storage.is_dir(e)]
    if not classes and labels_are_optional():
        return any(_is_image(storage.basename(e)) for e in entries)
    return bool(classes) and all(
        any(_is_image(storage.basename(f)) for f in _visible(c)) for c in classes
    )


def _inside(path: str, root: str) -> bool:
    """Whether a local path, links resolved, stays inside `root` (remote paths have no links)."""
    if not storage.is_local(path):
        return True
    real = os.path.realpath(path.removeprefix("file://"))
    base = os.path.realpath(root.removeprefix("file://"))
    return real == base or real.startswith(base + os.sep)


def _decode(data: bytes, where: str, mode: str | None = None) -> np.ndarray:
    """One encoded image as uint8 (H, W) or (H, W, 3), its size checked before decoding."""
    from PIL import Image, UnidentifiedImageError

    side = _bound_pillow()
    try:
        image = Image.open(io.BytesIO(data))
        if max(image.size) > side:
            raise InputDataError(
                f"image of {image.size[0]}x{image.size[1]} pixels: more than "
                f"LEPTON_MAX_IMAGE_SIDE={side} on a side",
                where=where,
            )
        if image.mode in ("I", "I;16", "I;16B", "I;16L"):  # 16-bit grey: scale, do not clip
            pixels = np.asarray(image, dtype=np.uint32) >> 8
            image = Image.fromarray(pixels.clip(0, 255).astype(np.uint8), mode="L")
        image = image.convert(mode or _mode_of_image(image))
        return np.asarray(image, dtype=np.uint8)
    except (
        UnidentifiedImageError,
        OSError,
        ValueError,
        SyntaxError,
        Image.DecompressionBombError,
    ) as exc:
        raise _unreadable_image(exc, where, len(data)) from exc


def _bound_pillow() -> int:
    """Pillow's own bomb check (a process-wide setting) at Lepton's bound, before any open."""
    from PIL import Image

    from lepton_tasks.settings import get_settings

    side = get_settings().max_image_side
    Image.MAX_IMAGE_PIXELS = side * side
    return side


def _mode_of_image(image: Any) -> str:
    """Grey stays grey; any other mode (palette, alpha, CMYK) becomes RGB."""
    return "L" if image.mode in ("1", "L", "I", "I;16", "I;16B", "I;16L") else "RGB"


def _same_shape(image: np.ndarray, shape: tuple[int, ...], where: str) -> np.ndarray:
    if image.shape != shape:
        raise InputDataError(
            f"image of shape {image.shape} among images of shape {shape}: a dataset has one "
            "image size (resize them before landing)",
            where=where,
        )
    return image


def _mode_of(image: np.ndarray) -> str:
    return "L" if image.ndim == 2 else "RGB"


log = logging.getLogger(__name__)


# Image folders ---------------------------------------------------------------------------------


def image_folder_batch(folder: str) -> Batch:
    """`folder/<class>/<image>`: the class is the sub-folder's name. Links that lead out of
    the folder are skipped, with a warning. Where labels are optional, `folder/<image>` too."""
    files: list[tuple[str, str | None]] = []
    entries = _visible(folder)
    if labels_are_optional() and not any(storage.is_dir(e) for e in entries):
        files = [
            (e, None)
            for e in sorted(entries)
            if _is_image(storage.basename(e)) and _inside(e, folder)
        ]
    for class_folder in sorted(e for e in _visible(folder) if storage.is_dir(e)):
        if not _inside(class_folder, folder):
            log.warning("skipping %s: a link out of %s", class_folder, folder)
            continue
        for entry in _visible(class_folder):
            if not _is_image(storage.basename(entry)):
                continue
            if _inside(entry, folder):
                # the class is text (a name in the model, the registry, MLflow)
                files.append((entry, storage.as_text(storage.basename(class_folder))))
            else:
                log.warning("skipping %s: a link out of %s", entry, folder)
    if not files:
        raise InputDataError("no image files in the class folders", where=folder)
    mode = _common_mode([uri for uri, _ in files])  # colour if any image is in colour
    shape = _decode(_read(files[0][0]), files[0][0], mode).shape
    check_declared_size((len(files), *shape), 1, folder)

    def read(chunk_size: int) -> Iterator[Chunk]:
        for start in range(0, len(files), chunk_size):
            part = files[start : start + chunk_size]
            images = [_same_shape(_decode(_read(uri), uri, mode), shape, uri) for uri, _ in part]
            yield np.stack(images), np.asarray([label for _, label in part], dtype=object)

    def read_labels() -> np.ndarray:
        return np.asarray([label for _, label in files], dtype=object)

    name = storage.basename(folder)
    uris = [uri for uri, _ in files]
    labelled = files[0][1] is not None
    return Batch(
        name,
        folder,
        "images",
        len(files),
        shape,
        read,
        uris,
        read_labels=read_labels,
        labelled=labelled,
    )


def _common_mode(uris: list[str]) -> str:
    """ "RGB" if any image is in colour, else "L": from the headers alone."""
    from PIL import Image, UnidentifiedImageError

    _bound_pillow()
    for uri in uris:
        try:
            with storage.open_uri(uri, "rb") as handle, Image.open(handle) as image:
                if _mode_of_image(image) == "RGB":
                    return "RGB"
        except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
            fs, path = storage.filesystem(uri)
            raise _unreadable_image(exc, uri, fs.size(path)) from exc
    return "L"


def _unreadable_image(exc: BaseException, where: str, size: int | None) -> InputDataError:
    """Pillow's refusal in words a person can act on: never the repr of a file object."""
    from PIL import Image, UnidentifiedImageError

    if isinstance(exc, Image.DecompressionBombError):
        return InputDataError(f"image too large to decode: {exc}", where=where)
    if size == 0:
        why = "the file is empty (0 bytes)"
    elif isinstance(exc, UnidentifiedImageError):
        why = f"not an image format Pillow reads ({size} bytes; PNG, JPEG, BMP, GIF, TIFF, WebP)"
    else:
        why = re.sub(r"<[^<>]* object at 0x[0-9a-fA-F]+>", "the file", str(exc))
    return InputDataError(f"not a readable image: {why or type(exc).__name__}", where=where)


def _read(uri: str) -> bytes:
    """One image file, refused before it is read if it is larger than a batch may be."""
    from lepton_tasks.settings import get_settings

    limit = get_settings().max_batch_bytes
    fs, path = storage.filesystem(uri)
    if (fs.size(path) or 0) > limit:
        raise InputDataError(f"file larger than LEPTON_MAX_BATCH_BYTES={limit}", where=uri)
    with storage.open_uri(uri, "rb") as handle:
        return handle.read()


# CSV -------------------------------------------------------------------------------------------


def _csv_layout(uri: str) -> tuple[str | None, list[str], tuple[int, ...]]:
    """(label column, pixel columns, image shape) from the header."""
    import pandas as pd

    try:
        header = pd.read_csv(uri, nrows=0)
    except (ValueError, OSError, UnicodeDecodeError) as exc:
        raise InputDataError(f"not a readable CSV file: {exc}", where=uri) from exc
    columns = [str(c) for c in header.columns]
    label = next((c for c in columns if c.strip().lower() in ("label", "class")), None)
    if label is None and not labels_are_optional():
        raise InputDataError(
            f"no 'label' column; a CSV dataset has a label column and pixel columns, found "
            f"{columns[:5]}{'...' if len(columns) > 5 else ''}",
            where=uri,
        )
    pixels = [c for c in columns if c != label]
    side = math.isqrt(len(pixels))
    if side * side == len(pixels) and side > 1:
        return label, pixels, (side, side)
    side = math.isqrt(len(pixels) // 3)
    if len(pixels) % 3 == 0 and side * side * 3 == len(pixels) and side > 1:
        return label, pixels, (side, side, 3)
    raise InputDataError(
        f"{len(pixels)} pixel columns are neither a square grey image nor a square RGB one",
        where=uri,
    )


def _csv_rows(uri: str) -> int:
    """Data rows: lines after the header, a last line without a newline counted too."""
    import fsspec

    newlines, last = 0, b"\n"
    with fsspec.open(uri, "rb", compression="infer") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            newlines += block.count(b"\n")
            last = block[-1:]
    return max(newlines + (last != b"\n") - 1, 0)


def _csv_scale(uri: str, pixels: list[str]) -> float:
    """255 for 0..255 pixels, 1 for 0..1 floats: decided once, from the first rows."""
    import pandas as pd

    try:
        first = pd.read_csv(uri, nrows=1000, dtype=dict.fromkeys(pixels, "float64"))[pixels]
    except (ValueError, pd.errors.ParserError) as exc:
        raise InputDataError(f"malformed CSV: {exc}", where=uri) from exc
    values = first.to_numpy()
    fractional = bool((values != np.round(values)).any())
    return 1.0 if fractional and np.nanmax(values, initial=0.0) <= 1.0 else 255.0


def csv_batch(uri: str) -> Batch:
    """A CSV file: a `label` column, and one column per pixel (row-major, channels last)."""
    import pandas as pd

    if not storage.exists(uri):
        raise InputDataError("file not found", where=uri)
    label, pixels, shape = _csv_layout(uri)
    rows = _csv_rows(uri)
    check_declared_size((rows, *shape), 1, uri)
    scale = _csv_scale(uri, pixels)

    def read(chunk_size: int) -> Iterator[Chunk]:
        dtypes = dict.fromkeys(pixels, "float64")  # one type for every chunk
        try:
            for frame in pd.read_csv(uri, chunksize=chunk_size, dtype=dtypes):
                values = frame[pixels].to_numpy()
                if np.isnan(values).any():
                    raise InputDataError("empty pixel cells", where=uri)
                images = values.reshape(len(frame), *shape)
                labels = frame[label].to_numpy() if label else no_labels(len(frame))
                yield to_uint8(images, uri, source_max=scale), labels
        except (ValueError, pd.errors.ParserError) as exc:
            raise InputDataError(f"malformed CSV: {exc}", where=uri) from exc

    def read_labels() -> np.ndarray:
        if label is None:
            return no_labels(rows)
        try:
            return pd.read_csv(uri, usecols=[label])[label].to_numpy()
        except (ValueError, pd.errors.ParserError) as exc:
            raise InputDataError(f"malformed CSV: {exc}", where=uri) from exc

    name = storage.basename(uri).removesuffix(".gz").removesuffix(".csv")
    return Batch(
        name,
        uri,
        "csv",
        rows,
        shape,
        read,
        [uri],
        read_labels=read_labels,
        labelled=label is not None,
    )


# TFRecord --------------------------------------------------------------------------------------


def _examples(uri: str) -> Iterator[Any]:
    """The file's records as `tf.train.Example`s (TensorFlow reads the framing and CRCs)."""
    import tensorflow as tf
    from google.protobuf.message import DecodeError

    try:
        for number, record in enumerate(tf.data.TFRecordDataset(uri.removeprefix("file://"))):
            try:
                yield tf.train.Example.FromString(record.numpy())
            except DecodeError as exc:
                raise InputDataError(
                    f"record {number + 1} is not a tf.train.Example ({exc})", where=uri
                ) from exc
    except (tf.errors.OpError, ValueError) as exc:
        raise InputDataError(f"not a readable TFRecord file: {exc}", where=uri) from exc


# A TFRecord frame: length (uint64, little-endian), its masked CRC (uint32), the data, the
# data's masked CRC (uint32).
TFRECORD_FRAME_OVERHEAD = 16


def tfrecord_count(uri: str) -> int:
    """The number of records, from the framing alone (headers read, data skipped).

    TensorFlow ends a file that stops inside a record's header as if it had ended there, so a
    file cut short would read as fewer examples: here any byte count that is not a whole
    number of frames is an error naming where the file stops.
    """
    fs, path = storage.filesystem(uri)
    size = fs.size(path)
    count, offset = 0, 0
    with fs.open(path, "rb") as handle:
        while offset < size:
            header = handle.read(8)
            length = int.from_bytes(header, "little") if len(header) == 8 else size
            end = offset + length + TFRECORD_FRAME_OVERHEAD
            if end > size:
                raise InputDataError(
                    f"truncated: the file ends inside record {count + 1}, at byte {size} of the "
                    f"{end} its framing needs",
                    where=uri,
                )
            handle.seek(end)
            offset, count = end, count + 1
    return count


def _feature(example: Any, keys: tuple[str, ...], uri: str) -> tuple[str, Any]:
    features = example.features.feature
    for key in keys:
        if key in features:
            return key, features[key]
    raise InputDataError(
        f"an example has none of the features {list(keys)}; found {sorted(features)}", where=uri
    )


def _label(example: Any, uri: str) -> Any:
    if labels_are_optional() and not any(
        key in example.features.feature for key in TFRECORD_LABEL_KEYS
    ):
        return None
    _, feature = _feature(example, TFRECORD_LABEL_KEYS, uri)
    if feature.int64_list.value:
        return int(feature.int64_list.value[0])
    if feature.bytes_list.value:
        return feature.bytes_list.value[0].decode()
    raise InputDataError("a label feature is empty", where=uri)


def _image(example: Any, uri: str, mode: str | None = None) -> np.ndarray:
    _, feature = _feature(example, TFRECORD_IMAGE_KEYS, uri)
    if not feature.bytes_list.value:
        raise InputDataError("an image feature holds no encoded bytes", where=uri)
    return _decode(feature.bytes_list.value[0], uri, mode)


def tfrecord_batch(uri: str) -> Batch:
    """A TFRecord file of `tf.train.Example`s: encoded image bytes (PNG, JPEG) and a label."""
    if not storage.exists(uri):
        raise InputDataError("file not found", where=uri)
    first = next(_examples(uri), None)
    if first is None:
        raise InputDataError("the TFRecord file holds no example", where=uri)
    count = tfrecord_count(uri)  # before any example is trusted: a cut file is refused whole
    image = _image(first, uri)
    shape, mode = image.shape, _mode_of(image)
    check_declared_size((count, *shape), 1, uri)

    def read(chunk_size: int) -> Iterator[Chunk]:
        images, labels = [], []
        for example in _examples(uri):
            images.append(_same_shape(_image(example, uri, mode), shape, uri))
            labels.append(_label(example, uri))
            if len(images) == chunk_size:
                yield np.stack(images), np.asarray(labels, dtype=object)
                images, labels = [], []
        if images:
            yield np.stack(images), np.asarray(labels, dtype=object)

    def read_labels() -> np.ndarray:
        return np.asarray([_label(example, uri) for example in _examples(uri)])

    name = storage.basename(uri)
    for suffix in TFRECORD_SUFFIXES:
        name = name.removesuffix(suffix)
    return Batch(
        name,
        uri,
        "tfrecord",
        count,
        shape,
        read,
        [uri],
        read_labels=read_labels,
        labelled=_label(first, uri) is not None,
    )
