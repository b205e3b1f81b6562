"""Training contenders for the time-to-accuracy benchmark, each run in a fresh process.

`python bench/contenders.py NAME` trains on the first 8,000 images of the real MNIST test set,
scores the last 2,000, and prints one JSON line: train seconds, images/s, test accuracy.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = Path(__file__).resolve().parents[1]
MNIST = Path(os.environ.get("LEPTON_BENCH_MNIST", REPO.parent / "shared" / "data" / "mnist"))
TRAIN, TEST = 8_000, 2_000


def mnist() -> tuple[np.ndarray, np.ndarray]:
    from lepton_tasks.data.readers import open_source

    (batch,) = open_source(str(MNIST))
    images, labels = next(batch.read_chunks(20_000))
    return images, labels.astype(np.int64)


def keras_convnet() -> dict:
    """The Keras 'simple MNIST convnet' example, as published."""
    import keras
    from keras import layers

    images, labels = mnist()
    x = images.astype("float32")[..., None] / 255.0
    x_train, y_train, x_test, y_test = x[:TRAIN], labels[:TRAIN], x[-TEST:], labels[-TEST:]
    keras.utils.set_random_seed(int(os.environ.get("BENCH_SEED", "1")))
    model = keras.Sequential(
        [
            keras.Input(shape=(28, 28, 1)),
            layers.Conv2D(32, kernel_size=(3, 3), activation="relu"),
            layers.MaxPooling2D(pool_size=(2, 2)),
            layers.Conv2D(64, kernel_size=(3, 3), activation="relu"),
            layers.MaxPooling2D(pool_size=(2, 2)),
            layers.Flatten(),
            layers.Dropout(0.5),
            layers.Dense(10, activation="softmax"),
        ]
    )
    model.compile(loss="categorical_crossentropy", optimizer="adam", metrics=["accuracy"])
    y_onehot = keras.utils.to_categorical(y_train, 10)
    started = time.perf_counter()
    model.fit(x_train, y_onehot, batch_size=128, epochs=15, validation_split=0.1, verbose=0)
    seconds = time.perf_counter() - started
    accuracy = float((model.predict(x_test, verbose=0).argmax(1) == y_test).mean())
    return {
        "train_seconds": seconds,
        "images_per_second": TRAIN * 0.9 * 15 / seconds,
        "test_accuracy": accuracy,
    }


def article_recipe() -> dict:
    """The article's recipe: seed_cnn, Adam 1e-3, batch 64, fit(10 epochs) called 10 times."""
    import keras

    from lepton_tasks.models import get_architecture

    images, labels = mnist()
    x = images[..., None].astype("float32")
    x_train, y_train, x_test, y_test = x[:TRAIN], labels[:TRAIN], x[-TEST:], labels[-TEST:]
    keras.utils.set_random_seed(int(os.environ.get("BENCH_SEED", "1")))
    model = get_architecture("seed_cnn").build((28, 28, 1), 10)
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    started = time.perf_counter()
    for _ in range(10):
        model.fit(x_train, y_train, batch_size=64, epochs=10, validation_split=0.2, verbose=0)
    seconds = time.perf_counter() - started
    accuracy = float((model.predict(x_test, verbose=0).argmax(1) == y_test).mean())
    return {
        "train_seconds": seconds,
        "images_per_second": TRAIN * 0.8 * 100 / seconds,
        "test_accuracy": accuracy,
    }


def lepton_train_step() -> dict:
    """Lepton's train step, default model and settings, on a snapshot of the 8,000 images."""
    images, labels = mnist()
    with tempfile.TemporaryDirectory() as scratch:
        os.environ["LEPTON_HOME"] = scratch
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{scratch}/mlflow.db"
        # The first 8,000 are all for training: Lepton holds out its own validation tenth (as
        # (a) does with validation_split=0.1) and scores on the external last 2,000.
        os.environ["LEPTON_TEST_FRACTION"] = "0.0001"
        from lepton_tasks.models import load_keras
        from lepton_tasks.steps.evaluate import predict
        from lepton_tasks.steps.ingest import ingest
        from lepton_tasks.steps.train import TrainParams, train

        np.savez(f"{scratch}/train.npz", x=images[:TRAIN], y=labels[:TRAIN])
        run = f"{scratch}/run"
        ingested = ingest(f"{scratch}/train.npz", run)
        overrides = json.loads(os.environ.get("BENCH_TRAIN_PARAMS", "{}"))
        params = TrainParams(seed=int(os.environ.get("BENCH_SEED", "1")), **overrides)
        result = train(ingested.snapshot_uri, run, params=params)
        model = load_keras(result.model_uri)
        accuracy = float((predict(model, images[-TEST:]) == labels[-TEST:]).mean())
        return {
            "train_seconds": result.train_seconds,
            "images_per_second": result.images_per_second,
            "test_accuracy": accuracy,
            "epochs": result.epochs_run,
        }


def previous_lepton_cnn(input_shape: tuple[int, ...], num_classes: int) -> object:
    """Lepton's default model before this round: BatchNorm after both convolutions (a lever)."""
    import keras
    from keras import layers

    inputs = keras.Input(shape=input_shape)
    x = layers.Rescaling(1.0 / 255)(inputs)
    for filters in (32, 64):
        x = layers.Conv2D(filters, 3, use_bias=False)(x)
        x = layers.BatchNormalization(momentum=0.9)(x)
        x = layers.Activation("relu")(x)
        x = layers.MaxPooling2D(2)(x)
    x = layers.Flatten()(x)
    x = layers.Dropout(0.3)(x)
    outputs = layers.Dense(num_classes, activation="softmax", dtype="float32")(x)
    return keras.Model(inputs, outputs, name="previous_lepton_cnn")


CONTENDERS = {
    "keras_convnet": keras_convnet,
    "article_recipe": article_recipe,
    "lepton": lepton_train_step,
}

if __name__ == "__main__":
    print(json.dumps({"contender": sys.argv[1], **CONTENDERS[sys.argv[1]]()}))
