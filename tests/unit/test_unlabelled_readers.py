"""Data without labels (what scoring reads): every format reads its images with labels None
inside `labels_optional()`, and is refused as before outside it (training needs labels)."""

from __future__ import annotations

import gzip
import shutil
import struct
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lepton_tasks.data.readers import labels_optional, open_source
from lepton_tasks.errors import InputDataError
from tests.conftest import digits
from tests.unit.test_formats import png_bytes, write_csv

IMAGES = digits()[0][:40]


def idx_images_only(folder: Path) -> Path:
    folder.mkdir()
    header = struct.pack(">iiii", 0x00000803, len(IMAGES), 8, 8)
    with gzip.open(folder / "new-images-idx3-ubyte.gz", "wb") as out:
        out.write(header + IMAGES.tobytes())
    return folder


def parquet_without_labels(path: Path) -> Path:
    table = pa.table(
        {"image": pa.array(IMAGES.reshape(len(IMAGES), -1).tolist(), pa.list_(pa.uint8()))}
    )
    pq.write_table(table, path)
    return path


def csv_without_labels(path: Path) -> Path:
    write_csv(path, IMAGES, np.zeros(len(IMAGES), int))
    text = path.read_text().splitlines()
    path.write_text("\n".join(line.split(",", 1)[1] for line in text) + "\n")
    return path


def flat_image_folder(folder: Path) -> Path:
    folder.mkdir()
    for i, image in enumerate(IMAGES):
        (folder / f"{i:03d}.png").write_bytes(png_bytes(image))
    return folder


def npz_without_labels(path: Path) -> Path:
    np.savez(path, x=IMAGES)
    return path


WRITERS = {
    "idx": lambda root: idx_images_only(root / "idx"),
    "parquet": lambda root: parquet_without_labels(root / "new.parquet"),
    "csv": lambda root: csv_without_labels(root / "new.csv"),
    "images": lambda root: flat_image_folder(root / "pictures"),
    "npz": lambda root: npz_without_labels(root / "new.npz"),
}


@pytest.mark.parametrize("kind", sorted(WRITERS))
def test_unlabelled_data_reads_for_scoring_and_is_refused_for_training(
    tmp_path: Path, kind: str
) -> None:
    source = str(WRITERS[kind](tmp_path))
    with labels_optional():
        (batch,) = open_source(source)
        chunks = list(batch.read_chunks(16))
    images = np.concatenate([c[0] for c in chunks])
    labels = np.concatenate([c[1] for c in chunks])
    assert not batch.labelled and batch.count == len(IMAGES)
    assert np.array_equal(images.reshape(IMAGES.shape), IMAGES)
    assert all(label is None for label in labels)
    with pytest.raises(InputDataError):
        list(open_source(source)[0].read_chunks(16))


def test_labelled_data_keeps_its_labels_when_labels_are_optional(tmp_path: Path) -> None:
    images, labels = digits()
    np.savez(tmp_path / "fed.npz", x=images[:10], y=labels[:10])
    with labels_optional():
        (batch,) = open_source(str(tmp_path / "fed.npz"))
    assert batch.labelled and list(next(batch.read_chunks(10))[1]) == list(labels[:10])


def test_an_image_folder_is_flat_only_for_scoring(tmp_path: Path) -> None:
    from lepton_tasks.data.image_formats import is_image_folder

    folder = flat_image_folder(tmp_path / "flat")
    assert not is_image_folder(str(folder))  # training: no class folders, no classes
    with labels_optional():
        assert is_image_folder(str(folder))
    shutil.rmtree(folder)
