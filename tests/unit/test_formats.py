"""The formats people already have (issue 14): image class folders, Kaggle-style CSV and
TFRecord files of `tf.train.Example`, read from real MNIST images with no format or class
flags; and class sets read from the labels."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lepton_tasks.data.readers import open_source
from lepton_tasks.data.snapshot import class_names_from_labels
from lepton_tasks.errors import InputDataError
from lepton_tasks.steps.ingest import ingest
from tests.conftest import digits, write_npz

NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


@pytest.fixture(scope="module")
def mnist_sample() -> tuple[np.ndarray, np.ndarray]:
    from tests.conftest import MNIST_DIR

    if not (MNIST_DIR / "t10k-images-idx3-ubyte.gz").exists():
        pytest.skip(f"real MNIST not found at {MNIST_DIR}")
    (batch,) = open_source(str(MNIST_DIR))
    return next(batch.read_chunks(300))


def png_bytes(image: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def write_image_folder(root: Path, images: np.ndarray, labels: np.ndarray) -> Path:
    for i, (image, label) in enumerate(zip(images, labels, strict=True)):
        folder = root / NAMES[label]
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{i:05d}.png").write_bytes(png_bytes(image))
    return root


def write_csv(path: Path, images: np.ndarray, labels: np.ndarray) -> Path:
    import pandas as pd

    frame = pd.DataFrame(
        images.reshape(len(images), -1), columns=[f"pixel{i}" for i in range(images[0].size)]
    )
    frame.insert(0, "label", labels)
    frame.to_csv(path, index=False)
    return path


def write_tfrecord(path: Path, images: np.ndarray, labels: np.ndarray) -> Path:
    import tensorflow as tf

    with tf.io.TFRecordWriter(str(path)) as writer:
        for image, label in zip(images, labels, strict=True):
            feature = {
                "image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[png_bytes(image)])),
                "label": tf.train.Feature(
                    bytes_list=tf.train.BytesList(value=[NAMES[label].encode()])
                ),
            }
            example = tf.train.Example(features=tf.train.Features(feature=feature))
            writer.write(example.SerializeToString())
    return path


def read_all(source: str) -> tuple[np.ndarray, np.ndarray]:
    (batch,) = open_source(source)
    chunks = list(batch.read_chunks(128))
    return np.concatenate([c[0] for c in chunks]), np.concatenate([c[1] for c in chunks])


def test_class_folders_of_pngs_read_back_the_same_pixels(tmp_path: Path, mnist_sample) -> None:
    images, labels = mnist_sample
    folder = write_image_folder(tmp_path / "pngs", images, labels)
    got_images, got_labels = read_all(str(folder))
    # files are read class by class: compare as sets of (pixels, class name)
    expected = sorted((NAMES[y], x.tobytes()) for x, y in zip(images, labels, strict=True))
    assert sorted((y, x.tobytes()) for x, y in zip(got_images, got_labels, strict=True)) == expected


def test_kaggle_csv_and_tfrecord_read_back_the_same_pixels(tmp_path: Path, mnist_sample) -> None:
    images, labels = mnist_sample
    csv_images, csv_labels = read_all(str(write_csv(tmp_path / "train.csv", images, labels)))
    assert np.array_equal(csv_images, images) and np.array_equal(csv_labels, labels)
    record_images, record_labels = read_all(
        str(write_tfrecord(tmp_path / "train.tfrecord", images, labels))
    )
    assert np.array_equal(record_images, images)
    assert list(record_labels) == [NAMES[y] for y in labels]


def test_the_same_images_in_any_format_are_the_same_snapshot(
    tmp_path: Path, lepton_env: Path, mnist_sample
) -> None:
    """No format or class flag: the class set is the labels' (the folder names here)."""
    images, labels = mnist_sample
    folder = ingest(str(write_image_folder(tmp_path / "pngs", images, labels)), str(tmp_path / "a"))
    record = ingest(
        str(write_tfrecord(tmp_path / "t.tfrecord", images, labels)), str(tmp_path / "b")
    )
    assert folder.format == "images" and record.format == "tfrecord"
    assert folder.class_names == sorted(NAMES) and folder.image_shape == [28, 28]
    assert folder.snapshot_id == record.snapshot_id
    numbered = ingest(str(write_csv(tmp_path / "t.csv", images, labels)), str(tmp_path / "c"))
    assert numbered.class_names == [str(d) for d in range(10)]  # numbers in numeric order


def test_rgb_images_with_named_classes_need_no_flags(tmp_path: Path, lepton_env: Path) -> None:
    """Before (issue 14): three classes failed validate with seven "class '3' observed 0"."""
    x, y = digits()
    pick = np.flatnonzero(y < 3)[:300]
    rgb = np.stack([np.kron(x[pick], np.ones((4, 4), dtype=np.uint8))] * 3, axis=-1)
    names = np.asarray(["cat", "dog", "bird"])[y[pick]]
    result = ingest(str(write_npz(tmp_path / "pets.npz", rgb, names)), str(tmp_path / "run"))
    assert result.class_names == ["bird", "cat", "dog"]
    assert result.image_shape == [32, 32, 3]


def test_an_image_of_another_size_is_refused_naming_it(tmp_path: Path, mnist_sample) -> None:
    from PIL import Image

    images, labels = mnist_sample
    folder = write_image_folder(tmp_path / "pngs", images[:20], labels[:20])
    odd = folder / NAMES[labels[0]] / "odd.png"
    Image.fromarray(np.zeros((30, 30), dtype=np.uint8)).save(odd)
    with pytest.raises(InputDataError, match=r"shape \(30, 30\) among images of shape \(28, 28\)"):
        read_all(str(folder))


@pytest.mark.parametrize(
    ("columns", "error"),
    [
        ("pixel0,pixel1,pixel2,pixel3\n1,2,3,4\n", "no 'label' column"),
        ("label,p0,p1,p2\n1,2,3,4\n", "neither a square grey image nor a square RGB one"),
    ],
)
def test_a_csv_that_is_not_a_dataset_says_why(tmp_path: Path, columns: str, error: str) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(columns)
    with pytest.raises(InputDataError, match=error):
        read_all(str(path))


def test_a_broken_png_is_a_named_input_error(tmp_path: Path, mnist_sample) -> None:
    images, labels = mnist_sample
    folder = write_image_folder(tmp_path / "pngs", images[:10], labels[:10])
    broken = folder / NAMES[labels[3]] / "broken.png"
    broken.write_bytes(png_bytes(images[0])[:40])
    with pytest.raises(InputDataError, match="not a readable image") as caught:
        read_all(str(folder))
    assert "broken.png" in str(caught.value.where)


def test_class_sets_from_labels() -> None:
    assert class_names_from_labels([np.asarray([10, 2, 2]), np.asarray([1])], "x") == [
        "1",
        "2",
        "10",
    ]
    assert class_names_from_labels([np.asarray([b"dog", b"cat"])], "x") == ["cat", "dog"]
    with pytest.raises(InputDataError, match="a classifier needs two or more"):
        class_names_from_labels([np.asarray(["cat", "cat"])], "x")
    with pytest.raises(InputDataError, match="more than 1000 classes"):
        class_names_from_labels([np.arange(5000)], "x")


def test_numbers_as_text_are_in_numeric_order() -> None:
    """Class folders `0`..`11`, CSV or TFRecord text labels: "2" before "10"."""
    assert class_names_from_labels([np.asarray(["10", "2", "1"])], "x") == ["1", "2", "10"]


def test_a_landing_zone_is_never_one_image_folder(lepton_env: Path, mnist_sample) -> None:
    """Date folders of loose images in the zone are not classes named after dates."""
    images, _ = mnist_sample
    zone = lepton_env / "landing"
    for day in ("2026-01-01", "2026-01-02"):
        (zone / day).mkdir(parents=True)
        (zone / day / "a.png").write_bytes(png_bytes(images[0]))
    with pytest.raises(InputDataError, match="no dataset"):
        open_source(str(zone))


def test_sixteen_bit_and_mixed_colour_images_keep_their_content(tmp_path: Path) -> None:
    from PIL import Image

    folder = tmp_path / "imgs"
    (folder / "grey").mkdir(parents=True)
    (folder / "colour").mkdir()
    ramp = (np.arange(64, dtype=np.uint16).reshape(8, 8) * 1024).astype(np.uint16)
    Image.fromarray(ramp).save(folder / "grey" / "deep.png")  # a 16-bit grey PNG
    Image.fromarray(np.full((8, 8, 3), (200, 10, 10), dtype=np.uint8)).save(
        folder / "colour" / "red.png"
    )
    images, labels = read_all(str(folder))
    deep = images[list(labels).index("grey")]
    assert deep.shape == (8, 8, 3)  # one colour image makes the dataset RGB
    assert deep[..., 0].max() == (63 * 1024) >> 8 and deep[..., 0].min() == 0  # scaled, not clipped


def test_a_class_folder_linked_from_outside_is_not_read(tmp_path: Path, mnist_sample) -> None:
    images, labels = mnist_sample
    folder = write_image_folder(tmp_path / "pngs", images[:20], labels[:20])
    outside = write_image_folder(tmp_path / "private", images[20:25], labels[20:25])
    (folder / "secret").symlink_to(next(outside.iterdir()), target_is_directory=True)
    _, got = read_all(str(folder))
    assert "secret" not in set(got)


def test_gzipped_and_fractional_csv(tmp_path: Path) -> None:
    import gzip

    rows = "\n".join(f"{i % 2},{','.join(['0.5'] * 3 + ['1.0'])}" for i in range(5))
    path = tmp_path / "small.csv.gz"
    path.write_bytes(gzip.compress(f"label,p0,p1,p2,p3\n{rows}".encode()))  # no final newline
    (batch,) = open_source(str(path))
    assert batch.count == 5
    images, _ = read_all(str(path))
    assert images.shape == (5, 2, 2) and images.max() == 255 and images.min() == 128


def test_a_decompression_bomb_is_a_named_input_error(tmp_path: Path, monkeypatch) -> None:
    from lepton_tasks.settings import get_settings

    monkeypatch.setenv("LEPTON_MAX_IMAGE_SIDE", "16")
    get_settings.cache_clear()
    try:
        folder = tmp_path / "imgs" / "big"
        folder.mkdir(parents=True)
        from PIL import Image

        Image.new("L", (64, 64)).save(folder / "big.png")
        with pytest.raises(InputDataError, match="too large to decode|MAX_IMAGE_SIDE=16"):
            read_all(str(tmp_path / "imgs"))
    finally:
        get_settings.cache_clear()


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"", "the file is empty (0 bytes)"),
        (b"GIF87a but then nothing an image needs", "not an image format Pillow reads (38 bytes"),
    ],
)
def test_an_unreadable_image_says_why_in_words(
    tmp_path: Path, mnist_sample, content: bytes, reason: str
) -> None:
    """Before: `cannot identify image file <fsspec...LocalFileOpener object at 0x7f...>`."""
    images, labels = mnist_sample
    folder = write_image_folder(tmp_path / "pngs", images[:10], labels[:10])
    (folder / NAMES[labels[0]] / "bad.png").write_bytes(content)
    with pytest.raises(InputDataError) as caught:
        read_all(str(folder))
    assert caught.value.message.startswith(f"not a readable image: {reason}")
    assert "object at 0x" not in caught.value.message
    assert caught.value.where.endswith("bad.png")


def run_ingest(
    source: Path, run_dir: Path, home: Path, landing: bool = True
) -> subprocess.CompletedProcess[str]:
    """The CLI in a process of its own, under a timeout: a read that blocks must fail the test,
    not hang it. With `landing`, the source is the landing zone."""
    return subprocess.run(
        [sys.executable, "-m", "lepton_tasks", "ingest", "--source", str(source),
         "--run-dir", str(run_dir)],
        capture_output=True, text=True, timeout=120,
        env={**os.environ, "LEPTON_HOME": str(home), "LEPTON_LANDING_URI": str(source if landing else home / "landing")},
    )  # fmt: skip


def test_fifos_in_a_landing_zone_or_a_class_folder_are_skipped_not_opened(
    tmp_path: Path, mnist_sample
) -> None:
    """Before: a FIFO named like a batch, or inside a class folder, blocked ingest on its
    open() until the task's 4-hour timeout."""
    images, labels = mnist_sample
    landing = tmp_path / "landing"
    write_image_folder(landing / "batch-2026-01-01", images[:20], labels[:20])
    os.mkfifo(landing / "batch-2026-01-02.npz")
    os.mkfifo(landing / "batch-2026-01-01" / NAMES[labels[0]] / "pipe.png")
    done = run_ingest(landing, tmp_path / "run", tmp_path / "home")
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.splitlines()[-1])["count"] == 20
    assert "batch-2026-01-02.npz: a FIFO, not a regular file" in done.stderr
    assert "pipe.png: a FIFO, not a regular file" in done.stderr
    assert (landing / "batch-2026-01-02.npz").is_fifo()  # left alone, not quarantined


def test_a_fifo_named_as_the_source_is_refused_unopened(tmp_path: Path) -> None:
    """Before: open_source blocked on the FIFO's open() (here: the CLI, under a timeout)."""
    os.mkfifo(tmp_path / "night.npz")
    done = run_ingest(tmp_path / "night.npz", tmp_path / "run", tmp_path / "home")
    assert done.returncode == 3, done.stderr[-2000:]
    assert "InputDataError: a FIFO, not a regular file or folder" in done.stderr


def test_a_class_folder_whose_name_is_not_utf8_is_a_class_named_in_text(
    tmp_path: Path, mnist_sample
) -> None:
    """Before: the snapshot was written and result.json said ok, then printing the result
    failed on the name's lone surrogate: exit 1, a traceback."""
    images, _ = mnist_sample
    root = os.path.join(os.fsencode(tmp_path), b"pictures")
    for folder in (b"ca\xfft", b"dog"):
        os.makedirs(os.path.join(root, folder))
        for i in range(6):
            path = os.path.join(root, folder, b"%d.png" % i)
            Path(os.fsdecode(path)).write_bytes(png_bytes(images[i]))
    done = run_ingest(Path(os.fsdecode(root)), tmp_path / "run", tmp_path / "home", landing=False)
    assert done.returncode == 0, done.stderr[-2000:]
    printed = json.loads(done.stdout.splitlines()[-1])
    assert printed["class_names"] == ["ca\\xfft", "dog"] and printed["count"] == 12
    kept = json.loads((tmp_path / "run" / "ingest" / "result.json").read_text())
    assert kept["class_names"] == printed["class_names"] and kept["ok"] is True
