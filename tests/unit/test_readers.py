"""Readers on real data, and every malformed input they must refuse by name."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lepton_tasks.data import readers
from lepton_tasks.errors import InputDataError, UnknownSourceError
from tests.conftest import digits, write_npz


def read_all(batches: list[readers.Batch]) -> tuple[np.ndarray, np.ndarray]:
    chunks = [chunk for batch in batches for chunk in batch.read_chunks(4096)]
    return np.concatenate([c[0] for c in chunks]), np.concatenate([c[1] for c in chunks])


def write_idx(folder: Path, images: np.ndarray, labels: np.ndarray, *, gz: bool = True) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    opener = gzip.open if gz else open
    suffix = ".gz" if gz else ""
    n, rows, cols = images.shape
    with opener(folder / f"x-images-idx3-ubyte{suffix}", "wb") as handle:
        handle.write(struct.pack(">iiii", readers.IDX_IMAGES_MAGIC, n, rows, cols))
        handle.write(images.astype(np.uint8).tobytes())
    with opener(folder / f"x-labels-idx1-ubyte{suffix}", "wb") as handle:
        handle.write(struct.pack(">ii", readers.IDX_LABELS_MAGIC, len(labels)))
        handle.write(labels.astype(np.uint8).tobytes())
    return folder


def test_sklearn_digits_are_the_bundled_set_scaled_to_uint8() -> None:
    images, labels = read_all(readers.open_source("sklearn:digits"))
    assert images.shape == (1797, 8, 8) and images.dtype == np.uint8
    assert images.max() == 255 and images.min() == 0
    assert sorted(set(labels.tolist())) == list(range(10))


def test_idx_reader_on_real_mnist(mnist_dir: Path) -> None:
    batches = readers.open_source(str(mnist_dir))
    assert [b.format for b in batches] == ["idx"] and batches[0].count == 10_000
    images, labels = read_all(batches)
    assert images.shape == (10_000, 28, 28)
    # The first three MNIST test digits are 7, 2, 1; every class appears.
    assert labels[:3].tolist() == [7, 2, 1]
    assert np.bincount(labels).min() > 800


def test_idx_explicit_files_and_uncompressed(tmp_path: Path, mnist_dir: Path) -> None:
    pair = f"{mnist_dir}/t10k-images-idx3-ubyte.gz,{mnist_dir}/t10k-labels-idx1-ubyte.gz"
    from_pair, _ = read_all(readers.open_source(pair))
    images, labels = digits()
    raw = write_idx(tmp_path / "raw", images, labels, gz=False)
    plain, plain_labels = read_all(readers.open_source(str(raw), "idx"))
    assert from_pair.shape == (10_000, 28, 28)
    np.testing.assert_array_equal(plain, images)
    np.testing.assert_array_equal(plain_labels, labels)


def test_npz_and_parquet_roundtrip(tmp_path: Path) -> None:
    images, labels = digits()
    npz = write_npz(tmp_path / "d.npz", images.astype(np.float32) / 255.0, labels)
    table = pa.table({"image": [row.ravel().tolist() for row in images], "label": labels})
    pq.write_table(table, tmp_path / "d.parquet", row_group_size=500)
    from_npz, _ = read_all(readers.open_source(str(npz)))
    from_parquet, parquet_labels = read_all(readers.open_source(str(tmp_path / "d.parquet")))
    np.testing.assert_array_equal(from_npz, images)  # floats in [0, 1] come back as 0..255
    np.testing.assert_array_equal(from_parquet, images)
    np.testing.assert_array_equal(parquet_labels, labels)


def test_landing_zone_folder_reads_batches_in_order_and_skips_quarantine(tmp_path: Path) -> None:
    images, labels = digits()
    write_npz(tmp_path / "batch-2026-01-02" / "data.npz", images[100:200], labels[100:200])
    write_npz(tmp_path / "batch-2026-01-01.npz", images[:100], labels[:100])
    write_npz(tmp_path / "_quarantine" / "old" / "bad.npz", images[:5], labels[:5])
    batches = readers.open_source(str(tmp_path))
    assert [b.count for b in batches] == [100, 100]
    assert batches[0].origin.endswith("batch-2026-01-01.npz")
    assert batches[1].origin.endswith("batch-2026-01-02")


# Bad input ------------------------------------------------------------------------------------


def test_unknown_format_and_source(tmp_path: Path) -> None:
    with pytest.raises(UnknownSourceError, match="unknown format 'hdf5'"):
        readers.open_source("sklearn:digits", "hdf5")
    with pytest.raises(UnknownSourceError, match="unknown bundled dataset 'iris'"):
        readers.open_source("sklearn:iris")
    (tmp_path / "data.bin").write_bytes(b"123")
    with pytest.raises(UnknownSourceError, match="cannot tell the format"):
        readers.open_source(str(tmp_path / "data.bin"))


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InputDataError, match="not found") as caught:
        readers.open_source(str(tmp_path / "nope.npz"))
    assert caught.value.where == str(tmp_path / "nope.npz")
    with pytest.raises(InputDataError, match="source not found"):
        readers.open_source(str(tmp_path / "nothing-here"))


def test_truncated_gzip(tmp_path: Path, mnist_dir: Path) -> None:
    folder = tmp_path / "mnist"
    folder.mkdir()
    data = (mnist_dir / "t10k-images-idx3-ubyte.gz").read_bytes()
    (folder / "t10k-images-idx3-ubyte.gz").write_bytes(data[: len(data) // 2])
    (folder / "t10k-labels-idx1-ubyte.gz").write_bytes(
        (mnist_dir / "t10k-labels-idx1-ubyte.gz").read_bytes()
    )
    with pytest.raises(InputDataError, match="truncated") as caught:
        read_all(readers.open_source(str(folder)))
    assert "t10k-images-idx3-ubyte.gz" in caught.value.where


def test_corrupt_gzip(tmp_path: Path) -> None:
    images, labels = digits()
    folder = write_idx(tmp_path / "idx", images, labels)
    path = folder / "x-images-idx3-ubyte.gz"
    data = bytearray(path.read_bytes())
    data[20:60] = b"\x00" * 40  # scribble over the deflate stream
    path.write_bytes(bytes(data))
    with pytest.raises(InputDataError, match="corrupt or truncated gzip|truncated"):
        read_all(readers.open_source(str(folder)))


def test_wrong_idx_magic(tmp_path: Path) -> None:
    images, labels = digits()
    folder = write_idx(tmp_path / "idx", images, labels, gz=False)
    path = folder / "x-images-idx3-ubyte"
    data = bytearray(path.read_bytes())
    data[:4] = struct.pack(">i", 0x0801)  # a labels magic where images belong
    path.write_bytes(bytes(data))
    with pytest.raises(InputDataError, match="wrong IDX magic 0x00000801, expected 0x00000803"):
        readers.open_source(str(folder))


def test_image_and_label_counts_differ(tmp_path: Path) -> None:
    images, labels = digits()
    folder = write_idx(tmp_path / "idx", images, labels[:-7])
    with pytest.raises(InputDataError, match="1797 images but 1790 labels"):
        readers.open_source(str(folder))
    with pytest.raises(InputDataError, match="10 images but 9 labels"):
        readers.open_source(str(write_npz(tmp_path / "a.npz", images[:10], labels[:9])))


def test_nan_pixels_and_out_of_range(tmp_path: Path) -> None:
    images, labels = digits()
    floats = images.astype(np.float32)
    floats[3, 2, 2] = np.nan
    # NPZ arrays are read lazily: pixel values are checked when the batch is read
    with pytest.raises(InputDataError, match="1 NaN pixel.*first at index 3"):
        read_all(readers.open_source(str(write_npz(tmp_path / "nan.npz", floats, labels))))
    with pytest.raises(InputDataError, match=r"pixel values span \[-1, 255\]"):
        read_all(
            readers.open_source(
                str(write_npz(tmp_path / "neg.npz", images.astype(int) - 1 + (images > 0), labels))
            )
        )


def test_wrong_and_mixed_shapes(tmp_path: Path) -> None:
    images, labels = digits()
    with pytest.raises(InputDataError, match=r"shape \(N, H, W\)"):
        readers.open_source(str(write_npz(tmp_path / "flat.npz", images.reshape(-1, 64), labels)))
    rows = [row.ravel().tolist() for row in images[:10]]
    rows[4] = rows[4][:-3]
    pq.write_table(pa.table({"image": rows, "label": labels[:10]}), tmp_path / "mixed.parquet")
    with pytest.raises(InputDataError, match="mixed image sizes: row 4 has 61 pixels"):
        read_all(readers.open_source(str(tmp_path / "mixed.parquet")))


def test_npz_and_parquet_missing_fields(tmp_path: Path) -> None:
    images, labels = digits()
    np.savez(tmp_path / "keys.npz", images=images, labels=labels)
    with pytest.raises(InputDataError, match=r"missing array\(s\) \['x', 'y'\]"):
        readers.open_source(str(tmp_path / "keys.npz"))
    pq.write_table(pa.table({"pixels": [[1, 2, 3, 4]], "label": [1]}), tmp_path / "c.parquet")
    with pytest.raises(InputDataError, match=r"missing column\(s\) \['image'\]"):
        readers.open_source(str(tmp_path / "c.parquet"))
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(InputDataError, match="not a readable .npz"):
        readers.open_source(str(tmp_path / "junk.npz"))


def test_empty_folder(tmp_path: Path) -> None:
    with pytest.raises(InputDataError, match="no dataset in folder"):
        readers.open_source(str(tmp_path))
