"""A registry with two real versions of a digits model, built once, copied per test.

v1 (6 epochs) is the champion, v2 (3 epochs) is registered beside it, not promoted. Each test
gets its own copy of the MLflow database (the artifacts are shared, read-only in practice), so a
test may move the champion without touching another's.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from tests.airflow_env import airflow_db, fresh_runtime_settings  # noqa: F401  fixtures
from tests.conftest import digits

MODEL = "lepton-digits"


@dataclass(frozen=True)
class Registry:
    home: Path
    images: np.ndarray  # the bundled digits, 0..255
    labels: np.ndarray

    @property
    def tracking_uri(self) -> str:
        return f"sqlite:///{self.home}/mlflow.db"


@pytest.fixture(scope="session")
def digits_registry(tmp_path_factory: pytest.TempPathFactory) -> Registry:
    from lepton_tasks.settings import get_settings
    from lepton_tasks.steps.evaluate import evaluate
    from lepton_tasks.steps.ingest import ingest
    from lepton_tasks.steps.register import register
    from lepton_tasks.steps.train import TrainParams, train
    from lepton_tasks.steps.validate import validate

    home = tmp_path_factory.mktemp("registry") / "home"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LEPTON_HOME", str(home))
        patch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{home}/mlflow.db")
        patch.setenv("TF_CPP_MIN_LOG_LEVEL", "2")
        patch.setenv("GX_ANALYTICS_ENABLED", "False")
        get_settings.cache_clear()
        import mlflow

        previous = mlflow.get_tracking_uri()
        mlflow.set_tracking_uri(f"sqlite:///{home}/mlflow.db")
        try:
            for i, epochs in enumerate((6, 3)):
                run = str(home.parent / f"run-{i}")
                ingested = ingest("sklearn:digits", run)
                validated = validate(ingested.snapshot_uri, run, data_docs=False)
                params = TrainParams(architecture="seed_cnn", epochs=epochs)
                registered = register(
                    evaluate(train(validated.snapshot_uri, run, params), run), run
                )
                assert registered.version == str(i + 1) and registered.promoted == (i == 0)
        finally:
            mlflow.set_tracking_uri(previous)
            get_settings.cache_clear()
    images, labels = digits()
    return Registry(home, images, labels)


@pytest.fixture
def production_home(
    digits_registry: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Registry:
    """This test's own copy of the registry database, as LEPTON_HOME / MLFLOW_TRACKING_URI."""
    from lepton_tasks.settings import get_settings

    home = tmp_path / "home"
    home.mkdir()
    shutil.copy(digits_registry.home / "mlflow.db", home / "mlflow.db")
    uri = f"sqlite:///{home}/mlflow.db"
    monkeypatch.setenv("LEPTON_HOME", str(home))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.delenv("LEPTON_QUARANTINE_URI", raising=False)
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "2")
    get_settings.cache_clear()
    import mlflow

    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    yield Registry(home, digits_registry.images, digits_registry.labels)
    mlflow.set_tracking_uri(previous)
    get_settings.cache_clear()


def champion_predictions(version: str, images: np.ndarray) -> np.ndarray:
    """What the registered version itself predicts (class indices), for comparisons."""
    from lepton_tasks.models import load_registered_keras

    model = load_registered_keras(f"models:/{MODEL}/{version}")
    x = images.reshape(len(images), *model.input_shape[1:]).astype(np.float32)
    return np.asarray(model.predict(x, verbose=0)).argmax(axis=1)


def write_json(path: Path, payload: object) -> Path:
    path.write_text(json.dumps(payload))
    return path
