"""`make bench-formats`: each dataset layout through all five steps with no format or class flag.

From the real MNIST images of ../shared/data/mnist (issue 14's "done when"):
  - an RGB 32x32 NPZ of three classes with names for labels (the digits 0, 1, 2, padded to
    32x32 and tinted with a random colour per image), 900 images;
  - the first 6,000 images as PNG files in class folders named after the digit;
  - the same images as a TFRecord file of tf.train.Example (PNG bytes, the name as label);
  - the same images as a Kaggle-style CSV (label, pixel0..pixel783).
Each runs `lepton-tasks ingest, validate, train, evaluate, register` in a fresh home (default
training), as a user would. Prints the test accuracy and the time of each step; writes
bench/formats.json. No test asserts on these numbers.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.run import MNIST, machine  # noqa: E402

CLI = str(Path(sys.executable).with_name("lepton-tasks"))
NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
STEPS = ("ingest", "validate", "train", "evaluate", "register")


def mnist(count: int) -> tuple[np.ndarray, np.ndarray]:
    from lepton_tasks.data.readers import open_source

    (batch,) = open_source(str(MNIST))
    images, labels = next(batch.read_chunks(10_000))
    return images[:count], labels[:count]


def png(image: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def rgb_three_classes(root: Path) -> Path:
    images, labels = mnist(10_000)
    pick = np.concatenate([np.flatnonzero(labels == d)[:300] for d in (0, 1, 2)])
    rng = np.random.default_rng(0)
    padded = np.pad(images[pick], ((0, 0), (2, 2), (2, 2))).astype(np.float32) / 255
    ink = rng.uniform(0.4, 1.0, (len(pick), 1, 1, 3))
    paper = rng.uniform(0.0, 0.3, (len(pick), 1, 1, 3))
    rgb = (paper + (ink - paper) * padded[..., None]) * 255
    path = root / "colours.npz"
    np.savez(path, x=rgb.astype(np.uint8), y=np.asarray(NAMES)[labels[pick]])
    return path


def class_folders(root: Path, images: np.ndarray, labels: np.ndarray) -> Path:
    for i, (image, label) in enumerate(zip(images, labels, strict=True)):
        folder = root / "pngs" / NAMES[label]
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{i:05d}.png").write_bytes(png(image))
    return root / "pngs"


def tfrecord(root: Path, images: np.ndarray, labels: np.ndarray) -> Path:
    import tensorflow as tf

    path = root / "mnist.tfrecord"
    with tf.io.TFRecordWriter(str(path)) as writer:
        for image, label in zip(images, labels, strict=True):
            feature = {
                "image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[png(image)])),
                "label": tf.train.Feature(
                    bytes_list=tf.train.BytesList(value=[NAMES[label].encode()])
                ),
            }
            writer.write(
                tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()
            )
    return path


def kaggle_csv(root: Path, images: np.ndarray, labels: np.ndarray) -> Path:
    import pandas as pd

    frame = pd.DataFrame(images.reshape(len(images), -1), columns=[f"pixel{i}" for i in range(784)])
    frame.insert(0, "label", labels)
    path = root / "train.csv"
    frame.to_csv(path, index=False)
    return path


def five_steps(source: Path, home: Path) -> dict:
    env = {
        **os.environ,
        "LEPTON_HOME": str(home),
        "MLFLOW_TRACKING_URI": f"sqlite:///{home}/mlflow.db",
        "TF_CPP_MIN_LOG_LEVEL": "2",
        "GX_ANALYTICS_ENABLED": "False",
    }
    env.pop("LEPTON_CLASSES", None)
    run = str(home / "run")
    seconds, results = {}, {}
    for step in STEPS:
        extra = ["--source", str(source)] if step == "ingest" else []
        started = time.perf_counter()
        done = subprocess.run(
            [CLI, step, "--run-dir", run, *extra], capture_output=True, text=True, env=env
        )
        seconds[step] = round(time.perf_counter() - started, 1)
        if done.returncode != 0:
            raise RuntimeError(f"{step} on {source.name} failed:\n{done.stderr[-2000:]}")
        results[step] = json.loads(done.stdout.strip().splitlines()[-1])
    return {
        "format": results["ingest"]["format"],
        "examples": results["ingest"]["count"],
        "image_shape": results["ingest"]["image_shape"],
        "classes": results["ingest"]["class_names"],
        "test_accuracy": results["evaluate"]["metrics"]["accuracy"],
        "registered": results["register"]["version"],
        "seconds": seconds,
    }


def main() -> None:
    host = machine()
    print(f"CPU: {host['cpu']}", flush=True)
    figures = {"machine": host, "datasets": {}}
    with tempfile.TemporaryDirectory(prefix="lepton-formats-") as scratch:
        root = Path(scratch)
        images, labels = mnist(6000)
        sources = {
            "RGB 32x32 NPZ, 3 named classes": rgb_three_classes(root),
            "PNG class folders (MNIST)": class_folders(root, images, labels),
            "TFRecord (MNIST)": tfrecord(root, images, labels),
            "CSV, Kaggle layout (MNIST)": kaggle_csv(root, images, labels),
        }
        for name, source in sources.items():
            figures["datasets"][name] = five_steps(
                source, root / f"home-{len(figures['datasets'])}"
            )
            print(name, json.dumps(figures["datasets"][name]), flush=True)
    (REPO / "bench" / "formats.json").write_text(json.dumps(figures, indent=2))
    section = report(figures)
    print(section)
    results = REPO / "bench" / "RESULTS.md"
    text = results.read_text()
    if SECTION in text:
        before, after = text.split(SECTION, 1)
        rest = after.split("\n## ", 1)
        text = f"{before}{section}" + (f"\n## {rest[1]}" if len(rest) > 1 else "")
    else:
        text = f"{text.rstrip()}\n\n{section}"
    results.write_text(text)


SECTION = "## 6. Your data, no flags"


def report(figures: dict) -> str:
    host = figures["machine"]
    rows = []
    for name, row in figures["datasets"].items():
        s = row["seconds"]
        classes = ", ".join(row["classes"][:3]) + (", ..." if len(row["classes"]) > 3 else "")
        rows.append(
            f"| {name} | {row['format']} | {row['examples']} | {row['image_shape']} | "
            f"{len(row['classes'])} ({classes}) | {row['test_accuracy']:.4f} | "
            f"{' / '.join(str(s[k]) for k in STEPS)} |"
        )
    table = "\n".join(rows)
    return f"""{SECTION}

Machine: {host["cpu"]}. Date: {host["date"]}. Command: `make bench-formats`
(`python bench/formats.py`): each layout through `lepton-tasks ingest, validate, train,
evaluate, register` in a fresh home, default training, no format or class flag. Target
(issue 14): test accuracy at least 0.9 on each.

| dataset | format | examples | shape | classes (from the labels) | test accuracy | seconds: ingest / validate / train / evaluate / register |
|---|---|---|---|---|---|---|
{table}
"""


if __name__ == "__main__":
    main()
