"""Evaluate predicts with the model's verified LiteRT copy, never a changed one."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest

from lepton_tasks import litert
from lepton_tasks.data.snapshot import load_split
from lepton_tasks.models import load_keras
from lepton_tasks.registry import champion_version
from lepton_tasks.steps.evaluate import EvaluateParams, evaluate, predict
from lepton_tasks.steps.ingest import ingest
from lepton_tasks.steps.register import register
from lepton_tasks.steps.train import TrainParams, train


@pytest.fixture
def trained(tmp_path: Path, lepton_env: Path):
    run = str(tmp_path / "run")
    snapshot = ingest("sklearn:digits", run).snapshot_uri
    return train(snapshot, run, params=TrainParams(epochs=3, seed=1))


def test_train_keeps_a_litert_copy_that_predicts_as_keras_does(trained) -> None:
    assert trained.litert_model_uri and Path(trained.litert_model_uri).is_file()
    copy = litert.load_verified(trained.litert_model_uri, trained.litert_sha256)
    assert copy is not None
    images, labels = load_split(trained.snapshot_uri, "test")
    x = images[..., np.newaxis].astype(np.float32)
    keras_model = load_keras(trained.model_uri)
    ours, theirs = copy.predict(x), np.asarray(keras_model.predict(x, verbose=0))
    assert np.abs(ours - theirs).max() <= litert.TOLERANCE
    assert np.array_equal(predict(copy, images), predict(keras_model, images))
    assert (predict(copy, images) == labels).mean() > 0.8


def test_evaluate_uses_the_copy_and_register_records_it(trained, tmp_path: Path) -> None:
    evaluated = evaluate(trained, trained.run_dir, EvaluateParams.with_defaults())
    assert evaluated.predicted_with == "litert"
    registered = register(evaluated, trained.run_dir)
    version = champion_version(registered.model_name)
    assert version.tags[litert.URI_TAG] == trained.litert_model_uri
    assert version.tags[litert.SHA_TAG] == trained.litert_sha256

    from mlflow import MlflowClient

    tags = MlflowClient().get_run(evaluated.mlflow_run_id).data.tags
    assert tags["lepton.predicted_with"] == "litert"


def test_a_changed_copy_is_refused_and_keras_predicts(
    trained,
    caplog: pytest.LogCaptureFixture,
) -> None:
    path = Path(trained.litert_model_uri)
    path.write_bytes(path.read_bytes()[:-16] + b"\0" * 16)  # tampered, or a torn write
    with caplog.at_level(logging.WARNING):
        assert litert.load_verified(trained.litert_model_uri, trained.litert_sha256) is None
    assert "changed since training" in caplog.text
    evaluated = evaluate(trained, trained.run_dir, EvaluateParams.with_defaults())
    assert evaluated.predicted_with == "keras"
    assert evaluated.litert_model_uri is None  # so register records no copy either
    assert evaluated.metrics["accuracy"] > 0.8


def test_a_model_litert_cannot_match_gets_no_copy(tmp_path: Path, trained) -> None:
    class Drifting:
        """A model whose Keras predictions differ from what its export computes."""

        def __init__(self, model: object) -> None:
            self.model = model

        def export(self, *args: object, **kwargs: object) -> None:
            self.model.export(*args, **kwargs)  # type: ignore[attr-defined]

        def predict(self, x: np.ndarray, verbose: int = 0) -> np.ndarray:
            return np.roll(np.asarray(self.model.predict(x, verbose=0)), 1, axis=1)  # type: ignore[attr-defined]

    images, _ = load_split(trained.snapshot_uri, "val")
    target = tmp_path / "copy.tflite"
    assert (
        litert.export_verified(Drifting(load_keras(trained.model_uri)), str(target), images) is None
    )
    assert not target.exists()


def test_the_champion_is_scored_with_its_copy_only_if_its_train_run_vouches_for_it(
    trained,
    tmp_path: Path,
) -> None:
    from mlflow import MlflowClient

    register(evaluate(trained, trained.run_dir, EvaluateParams.with_defaults()), trained.run_dir)
    version = champion_version("lepton-digits")
    run = str(tmp_path / "second")
    second = train(trained.snapshot_uri, run, params=TrainParams(epochs=3, seed=2))

    def champion_runtime() -> str:
        evaluated = evaluate(second, run, EvaluateParams.with_defaults())
        assert evaluated.champion is not None and evaluated.champion.version == str(version.version)
        tags = MlflowClient().get_run(evaluated.mlflow_run_id).data.tags
        return tags["lepton.champion_predicted_with"]

    assert champion_runtime() == "litert"
    # a registry user points the tags at another copy, with its own sha256: refused
    other = tmp_path / "other.tflite"
    other.write_bytes(Path(second.litert_model_uri).read_bytes())
    client = MlflowClient()
    client.set_model_version_tag("lepton-digits", version.version, litert.URI_TAG, str(other))
    client.set_model_version_tag(
        "lepton-digits", version.version, litert.SHA_TAG, second.litert_sha256
    )
    assert champion_runtime() == "keras"


def test_the_setting_turns_the_copy_off_for_train_and_evaluate(
    tmp_path: Path, lepton_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lepton_tasks.settings import get_settings

    run = str(tmp_path / "run")
    snapshot = ingest("sklearn:digits", run).snapshot_uri
    on = train(snapshot, run, params=TrainParams(epochs=2, seed=1))
    monkeypatch.setenv("LEPTON_LITERT_COPY", "false")
    get_settings.cache_clear()
    assert litert.load_verified(on.litert_model_uri, on.litert_sha256) is None
    assert evaluate(on, run, EvaluateParams.with_defaults()).predicted_with == "keras"
    off = train(snapshot, str(tmp_path / "off"), params=TrainParams(epochs=2, seed=3))
    assert off.litert_model_uri is None and off.litert_sha256 is None


EVALUATE_IN_A_FRESH_PROCESS = """
import json, sys
from lepton_tasks.results import TrainResult, read_result
from lepton_tasks.steps.evaluate import EvaluateParams, evaluate
trained = read_result(sys.argv[1], TrainResult)
evaluated = evaluate(trained, sys.argv[2], EvaluateParams.with_defaults())
print(json.dumps([evaluated.predicted_with, "tensorflow" in sys.modules, "keras" in sys.modules]))
"""


def test_evaluating_with_the_copy_never_imports_tensorflow(trained) -> None:
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-c", EVALUATE_IN_A_FRESH_PROCESS, trained.result_uri, trained.run_dir],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    predicted_with, tensorflow, keras = json.loads(done.stdout.strip().splitlines()[-1])
    assert predicted_with == "litert"
    assert not tensorflow and not keras
