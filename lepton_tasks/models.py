"""Keras models: architectures by name, and `.keras` files saved to and loaded from any URI.

Every architecture takes raw 0..255 pixels (H, W, C).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from lepton_tasks import storage
from lepton_tasks.errors import UsageError


@dataclass(frozen=True)
class Architecture:
    build: Callable[[tuple[int, ...], int], Any]
    learning_rate: float


def _seed_cnn(input_shape: tuple[int, ...], num_classes: int) -> Any:
    """The article's network: Conv32 - MaxPool - Flatten - Dense softmax."""
    import keras
    from keras import layers

    return keras.Sequential(
        [
            keras.Input(shape=input_shape),
            layers.Rescaling(1.0 / 255),
            layers.Conv2D(32, 3, activation="relu"),
            layers.MaxPooling2D(2),
            layers.Flatten(),
            layers.Dense(num_classes, activation="softmax", dtype="float32"),
        ],
        name="seed_cnn",
    )


def _conv_block(x: Any, filters: int, padding: str) -> Any:
    from keras import layers

    x = layers.Conv2D(filters, 3, padding=padding, use_bias=False)(x)
    # momentum 0.9: small datasets give few steps per epoch for the moving statistics
    x = layers.BatchNormalization(momentum=0.9)(x)
    x = layers.Activation("relu")(x)
    return layers.MaxPooling2D(2)(x)


def _lepton_cnn(input_shape: tuple[int, ...], num_classes: int) -> Any:
    """Lepton's default: two batch-normalized conv blocks, dropout, softmax.

    About the Keras reference convnet's cost per image, but batch normalization lets it train
    at a higher learning rate with a short cosine schedule, so it passes that network's test
    accuracy in a third of the epochs (see bench/RESULTS.md).
    """
    import keras
    from keras import layers

    inputs = keras.Input(shape=input_shape)
    x = layers.Rescaling(1.0 / 255)(inputs)
    # 'valid' convolutions where the image is large enough keep the cost near the Keras
    # reference convnet's; tiny images (8x8 digits) need 'same' to survive two poolings.
    padding = "valid" if min(input_shape[:2]) >= 16 else "same"
    x = _conv_block(x, 32, padding)
    x = _conv_block(x, 64, padding)
    x = layers.Flatten()(x)
    x = layers.Dropout(0.3)(x)
    outputs = layers.Dense(num_classes, activation="softmax", dtype="float32")(x)
    return keras.Model(inputs, outputs, name="lepton_cnn")


ARCHITECTURES: dict[str, Architecture] = {
    "seed_cnn": Architecture(_seed_cnn, learning_rate=1e-3),
    "lepton_cnn": Architecture(_lepton_cnn, learning_rate=3e-3),
}
DEFAULT_ARCHITECTURE = "lepton_cnn"


def get_architecture(name: str) -> Architecture:
    try:
        return ARCHITECTURES[name]
    except KeyError:
        raise UsageError(
            f"unknown model '{name}'; choose one of {', '.join(sorted(ARCHITECTURES))}"
        ) from None


def load_keras(uri: str) -> Any:
    """A `.keras` file from any URI the storage layer reads (copied locally first if remote)."""
    import keras

    if storage.is_local(uri):
        return keras.models.load_model(uri.removeprefix("file://"))
    with tempfile.TemporaryDirectory() as scratch:
        local = os.path.join(scratch, "model.keras")
        storage.copy_tree(uri, local)
        return keras.models.load_model(local)


def save_keras(model: Any, uri: str) -> None:
    """Save `model` as a `.keras` file at any URI the storage layer writes."""
    if storage.is_local(uri):
        storage.makedirs(uri.rsplit("/", 1)[0])
        model.save(uri.removeprefix("file://"))
        return
    with tempfile.TemporaryDirectory() as scratch:
        local = os.path.join(scratch, "model.keras")
        model.save(local)
        storage.copy_tree(local, uri)


def load_registered_keras(model_uri: str) -> Any:
    """A Keras model from MLflow (`models:/<name>@<alias>`, `runs:/...`)."""
    import mlflow

    return mlflow.keras.load_model(model_uri)
