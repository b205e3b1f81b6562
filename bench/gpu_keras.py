"""GPU throughput of Lepton's Keras models and the Keras reference convnet, one short run.

Backend-agnostic Keras 3: on a TensorFlow GPU machine it runs on TensorFlow; the lent H100 here
has JAX but no TensorFlow, so it runs there with KERAS_BACKEND=jax. For each model, with and
without mixed precision and XLA, it trains on the real MNIST images (tiled to 60,000) and
prints one JSON line: images per second after a warm-up epoch, and test accuracy.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
MNIST = Path(os.environ.get("LEPTON_BENCH_MNIST", REPO.parent / "shared" / "data" / "mnist"))
EXAMPLES = int(os.environ.get("BENCH_GPU_EXAMPLES", "60000"))


def load() -> tuple[np.ndarray, np.ndarray]:
    """The MNIST images (n, 28, 28, 1) and labels, through Lepton's own IDX reader."""
    from lepton_tasks.data.readers import open_source

    (batch,) = open_source(str(MNIST), "idx")
    images, labels = next(batch.read_chunks(batch.count))
    return images[..., np.newaxis], labels.astype(np.int32)


def keras_convnet(input_shape, num_classes):
    import keras
    from keras import layers

    return keras.Sequential(
        [
            keras.Input(shape=input_shape),
            layers.Rescaling(1 / 255),
            layers.Conv2D(32, 3, activation="relu"),
            layers.MaxPooling2D(2),
            layers.Conv2D(64, 3, activation="relu"),
            layers.MaxPooling2D(2),
            layers.Flatten(),
            layers.Dropout(0.5),
            layers.Dense(num_classes, activation="softmax", dtype="float32"),
        ]
    )


def run(model_name: str, mixed: bool, jit: bool, batch: int, epochs: int) -> dict:
    import keras

    from lepton_tasks.models import get_architecture

    keras.mixed_precision.set_global_policy("mixed_float16" if mixed else "float32")
    keras.utils.set_random_seed(0)
    x, y = load()
    x_train = np.concatenate([x[:8000]] * 8)[:EXAMPLES].astype("float32")
    y_train = np.concatenate([y[:8000]] * 8)[:EXAMPLES]
    build = keras_convnet if model_name == "keras_convnet" else get_architecture(model_name).build
    model = build((28, 28, 1), 10)
    model.compile(
        optimizer="adam",
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
        jit_compile=jit,
    )
    model.fit(x_train[: batch * 20], y_train[: batch * 20], batch_size=batch, epochs=1, verbose=0)
    started = time.perf_counter()
    model.fit(x_train, y_train, batch_size=batch, epochs=epochs, verbose=0)
    seconds = time.perf_counter() - started
    accuracy = float(
        (model.predict(x[-2000:].astype("float32"), verbose=0).argmax(1) == y[-2000:]).mean()
    )
    return {
        "model": model_name,
        "mixed_precision": mixed,
        "xla": jit,
        "batch": batch,
        "images_per_second": round(EXAMPLES * epochs / seconds),
        "test_accuracy": accuracy,
    }


def main() -> None:
    import keras

    print(
        json.dumps(
            {"backend": keras.backend.backend(), "keras": keras.__version__, "devices": _devices()}
        ),
        flush=True,
    )
    for model_name in ("lepton_cnn", "keras_convnet", "seed_cnn"):
        for mixed in (False, True):
            for jit in (True, False):
                if not jit and model_name != "lepton_cnn":
                    continue
                epochs = 3 if jit else 1
                print(json.dumps(run(model_name, mixed, jit, 128, epochs)), flush=True)


def _devices() -> str:
    import keras

    if keras.backend.backend() == "jax":
        import jax

        return ", ".join(d.device_kind for d in jax.devices())
    import tensorflow as tf

    return ", ".join(d.name for d in tf.config.list_physical_devices("GPU")) or "CPU"


if __name__ == "__main__":
    main()
