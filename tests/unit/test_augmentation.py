"""Augmentation, a train option (issue 14): off by default, seeded, idle at inference."""

from __future__ import annotations

import numpy as np
import pytest

from lepton_tasks.errors import UsageError
from lepton_tasks.models import get_architecture
from lepton_tasks.steps.train import TrainParams, augmented


def layer_names(model) -> list[str]:
    return [type(layer).__name__ for layer in model.layers]


def test_augmentation_layers_train_only_and_are_seeded() -> None:
    base = get_architecture("seed_cnn").build((8, 8, 1), 10)
    assert augmented(base, (8, 8, 1), "none", 1) is base
    assert TrainParams().augment == "none"
    shifted = augmented(base, (8, 8, 1), "shift-rotate", 1)
    assert layer_names(shifted)[:2] == ["RandomTranslation", "RandomRotation"]
    assert "RandomFlip" not in layer_names(shifted)  # digits mirrored are other digits
    flipped = augmented(base, (8, 8, 1), "shift-rotate-flip", 1)
    assert "RandomFlip" in layer_names(flipped)
    images = np.random.default_rng(0).integers(0, 256, (4, 8, 8, 1)).astype("float32")
    # idle at inference: the same outputs as the model itself
    assert np.allclose(shifted(images, training=False), base(images, training=False), atol=1e-6)
    # seeded: two builds with one seed move the same images the same way
    again = augmented(base, (8, 8, 1), "shift-rotate", 1)
    moved = [m.layers[0](images, training=True) for m in (shifted, again)]
    assert np.allclose(moved[0], moved[1])


def test_an_unknown_augmentation_is_a_usage_error() -> None:
    base = get_architecture("seed_cnn").build((8, 8, 1), 10)
    with pytest.raises(UsageError, match="--augment takes one of none, shift-rotate"):
        augmented(base, (8, 8, 1), "mixup", 1)
