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
from lepton_tasks.model_catalog import installed_models


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


def _lepton_cnn(input_shape: tuple[int, ...], num_classes: int) -> Any:
    """Lepton's default: two conv blocks (batch-normalized second), a dense layer, softmax.

    The Keras reference convnet's cost per image, plus a small dense layer; batch normalization
    after the second convolution lets it train at a higher learning rate with a short cosine
    schedule, so it passes that network's test accuracy in a third of its epochs. Batch
    normalization after the first convolution too cost ~40 % more per image for no accuracy
    (see bench/RESULTS.md): its activations are the largest and it is memory-bound on CPUs.
    """
    import keras
    from keras import layers

    inputs = keras.Input(shape=input_shape)
    x = layers.Rescaling(1.0 / 255)(inputs)
    # 'valid' convolutions where the image is large enough keep the cost near the Keras
    # reference convnet's; tiny images (8x8 digits) need 'same' to survive two poolings.
    padding = "valid" if min(input_shape[:2]) >= 16 else "same"
    x = layers.Conv2D(32, 3, padding=padding, activation="relu")(x)
    x = layers.MaxPooling2D(2)(x)
    x = layers.Conv2D(64, 3, padding=padding, use_bias=False)(x)
    # momentum 0.9: small datasets give few steps per epoch for the moving statistics
    x = layers.BatchNormalization(momentum=0.9)(x)
    x = layers.Activation("relu")(x)
    x = layers.MaxPooling2D(2)(x)
    x = layers.Flatten()(x)
    x = layers.Dropout(0.3)(x)
    x = layers.Dense(128, activation="relu")(x)
    x = layers.Dropout(0.3)(x)
    outputs = layers.Dense(num_classes, activation="softmax", dtype="float32")(x)
    return keras.Model(inputs, outputs, name="lepton_cnn")


ARCHITECTURES: dict[str, Architecture] = {
    "seed_cnn": Architecture(_seed_cnn, learning_rate=1e-3),
    "lepton_cnn": Architecture(_lepton_cnn, learning_rate=3e-3),
}
DEFAULT_ARCHITECTURE = "lepton_cnn"


# A model of your own trains at this peak learning rate unless --learning-rate says otherwise.
CUSTOM_LEARNING_RATE = 1e-3


def get_architecture(name: str) -> Architecture:
    """A built-in architecture, an installed `lepton.models` entry point, or "module:function"
    (a function of (input shape, class count) returning an uncompiled `keras.Model`)."""
    if name in ARCHITECTURES:
        return ARCHITECTURES[name]
    target = installed_models().get(name) or (name if ":" in name else None)
    if target is None:
        raise UsageError(
            f"unknown model '{name}'; choose one of {', '.join(sorted(installed_models()))}, "
            "or give your own as module:function"
        )
    return Architecture(_checked(_import(target), target), CUSTOM_LEARNING_RATE)


def _import(target: str) -> Callable[..., Any]:
    import importlib

    module_name, _, function_name = target.partition(":")
    try:
        build = getattr(importlib.import_module(module_name), function_name)
    except Exception as exc:  # any failure of someone else's module on import
        raise UsageError(
            f"cannot import the model function {target}: {type(exc).__name__}: {exc}"
        ) from exc
    if not callable(build):
        raise UsageError(f"{target} is not a function")
    return build


def _checked(build: Callable[..., Any], target: str) -> Callable[[tuple[int, ...], int], Any]:
    """`build`, with what it returns checked: a Keras model whose output is one probability
    per class (logits get a softmax on top, so every model's outputs mean the same)."""

    def checked_build(input_shape: tuple[int, ...], num_classes: int) -> Any:
        import keras
        import numpy as np

        try:
            model = build(input_shape, num_classes)
        except Exception as exc:
            raise UsageError(f"{target}{(input_shape, num_classes)} failed: {exc}") from exc
        if not isinstance(model, keras.Model):
            raise UsageError(f"{target} returned {type(model).__name__}, not a keras.Model")
        probe = np.random.default_rng(0).integers(0, 256, (2, *input_shape)).astype("float32")
        try:
            outputs = np.asarray(model(probe, training=False))
        except Exception as exc:
            raise UsageError(
                f"{target}: the model cannot take images of shape {input_shape}: "
                f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            ) from exc
        if outputs.shape != (2, num_classes):
            raise UsageError(
                f"{target}: the output has shape {outputs.shape[1:]} per image; it must be "
                f"({num_classes},), one value per class"
            )
        if (outputs < 0).any() or not np.allclose(outputs.sum(axis=1), 1.0, atol=1e-3):
            return keras.Sequential([model, keras.layers.Softmax(dtype="float32")], name=model.name)
        return model

    return checked_build


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
