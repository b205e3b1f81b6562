"""Bring your own model (issue 14): `module:function` or a `lepton.models` entry point of an
installed package; what the function returns is checked, and its source is in the lineage."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest

from lepton_tasks.errors import UsageError
from lepton_tasks.model_catalog import installed_models, model_source
from lepton_tasks.models import get_architecture

PACKAGE = '''
import keras
from keras import layers


def build(input_shape, num_classes):
    """A small MLP: the ten-line custom model of the README."""
    return keras.Sequential(
        [
            keras.Input(shape=input_shape),
            layers.Rescaling(1.0 / 255),
            layers.Flatten(),
            layers.Dense(64, activation="relu"),
            layers.Dense(num_classes),  # logits: Lepton adds the softmax
        ]
    )


def not_a_model(input_shape, num_classes):
    return "a string"


def fixed_input(input_shape, num_classes):
    return keras.Sequential(
        [keras.Input(shape=(28, 28, 1)), layers.Flatten(), layers.Dense(num_classes)]
    )


def wrong_width(input_shape, num_classes):
    return keras.Sequential([keras.Input(shape=input_shape), layers.Flatten(), layers.Dense(3)])
'''


def install_package(site: Path) -> Path:
    """`my_models` installed into `site`, as `pip install --target` lays it out: the module
    and its dist-info with a `lepton.models` entry point."""
    (site / "my_models").mkdir(parents=True)
    (site / "my_models" / "__init__.py").write_text(textwrap.dedent(PACKAGE))
    info = site / "my_models-1.2.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: my-models\nVersion: 1.2.0\n")
    (info / "top_level.txt").write_text("my_models\n")
    (info / "entry_points.txt").write_text("[lepton.models]\nmy_mlp = my_models:build\n")
    return site


@pytest.fixture
def installed_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The package on this process's path and its steps' (PYTHONPATH)."""
    site = install_package(tmp_path / "site")
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setenv("PYTHONPATH", str(site))
    yield site
    sys.modules.pop("my_models", None)


def test_an_installed_entry_point_is_listed_and_traced(installed_package: Path) -> None:
    assert installed_models()["my_mlp"] == "my_models:build"
    assert model_source("my_mlp").startswith("my_models:build (my-models 1.2.0, code ")


def test_what_the_function_returns_is_checked(installed_package: Path) -> None:
    model = get_architecture("my_mlp").build((8, 8, 1), 10)
    assert model.layers[-1].__class__.__name__ == "Softmax"  # logits got a softmax
    with pytest.raises(UsageError, match="returned str, not a keras.Model"):
        get_architecture("my_models:not_a_model").build((8, 8, 1), 10)
    with pytest.raises(UsageError, match=r"output has shape \(3,\) per image; it must be \(10,\)"):
        get_architecture("my_models:wrong_width").build((8, 8, 1), 10)
    with pytest.raises(UsageError, match="cannot import the model function nowhere:build"):
        get_architecture("nowhere:build")


def test_an_edit_of_your_model_changes_its_code_version(installed_package: Path) -> None:
    """The cache keys hold it: an edited model is never served from an earlier training."""
    from lepton_tasks.model_catalog import model_code_version

    before = model_code_version("my_mlp")
    source = installed_package / "my_models" / "__init__.py"
    source.write_text(source.read_text().replace("Dense(64", "Dense(32"))
    assert model_code_version("my_mlp") not in (before, "", "unknown")
    assert model_code_version("lepton_cnn") == ""  # Lepton's own: Lepton's code version


def test_a_model_that_cannot_take_the_images_says_so(installed_package: Path) -> None:
    with pytest.raises(UsageError, match=r"cannot take images of shape \(32, 32, 3\)"):
        get_architecture("my_models:fixed_input").build((32, 32, 3), 10)
