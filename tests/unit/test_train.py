"""Train: real Keras training on the bundled digits, resumable after a crash."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lepton_tasks.errors import UsageError
from lepton_tasks.models import ARCHITECTURES, get_architecture
from lepton_tasks.results import TrainResult
from lepton_tasks.steps import train as train_module
from lepton_tasks.steps.ingest import ingest
from lepton_tasks.steps.train import TrainParams, auto_epochs, train
from tests.conftest import ingested_snapshot


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
@pytest.mark.parametrize("shape", [(8, 8, 1), (28, 28, 1)])
def test_architectures_build_for_digits_and_mnist(name: str, shape: tuple[int, ...]) -> None:
    model = get_architecture(name).build(shape, 10)
    assert model.output_shape == (None, 10)


def test_unknown_model_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="unknown model 'resnet9000'; choose one of"):
        get_architecture("resnet9000")


class CrashingReporter(train_module.EpochReporter):
    """Dies after the second epoch, as a killed worker would."""

    def __init__(self, epochs: int, track: bool = True) -> None:
        super().__init__(epochs, track)
        finish_epoch = self.callback.on_epoch_end

        def on_epoch_end(epoch: int, logs: dict | None = None) -> None:
            finish_epoch(epoch, logs)
            if epoch == 1:
                raise RuntimeError("simulated worker crash")

        self.callback.on_epoch_end = on_epoch_end


def train_run(run: str, params: TrainParams, force: bool = False) -> TrainResult:
    """Train on the snapshot that ingest left in the run folder `run`."""
    return train(ingested_snapshot(run), run, params=params, force=force)


def test_rerunning_a_crashed_run_resumes_from_the_last_epoch(
    tmp_path: Path, lepton_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = str(tmp_path / "run")
    ingest("sklearn:digits", run)
    params = TrainParams(architecture="seed_cnn", epochs=4, patience=10)
    with monkeypatch.context() as patch:
        patch.setattr(train_module, "EpochReporter", CrashingReporter)
        with pytest.raises(RuntimeError, match="simulated worker crash"):
            train_run(run, params=params)
    # two checkpoints (issue 12): a kill while one is written leaves the other to resume from
    (backup,) = (tmp_path / "run" / "train" / "backup").iterdir()  # one per snapshot and params
    assert {p.name for p in backup.iterdir()} >= {"latest.weights.h5", "latest.weights.h5.bkp"}

    resumed = train_run(run, params=params)
    assert resumed.resumed_from_epoch == 2
    assert resumed.epochs_run == 4
    assert resumed.metrics["val_accuracy"] > 0.5  # chance is 0.1
    assert Path(resumed.model_uri).is_file()
    assert resumed.mlflow_model_uri.startswith("models:/")

    again = train_run(run, params=params)  # finished with the same settings: nothing to redo
    assert again.mlflow_run_id == resumed.mlflow_run_id

    from mlflow import MlflowClient

    client = MlflowClient()
    assert "learning_curves.png" in {a.path for a in client.list_artifacts(resumed.mlflow_run_id)}
    history = client.get_metric_history(resumed.mlflow_run_id, "val_loss")
    assert [m.step for m in history] == [1, 2, 3, 4]  # one point per epoch, across the crash


def test_training_is_reproducible_with_a_seed(tmp_path: Path, lepton_env: Path) -> None:
    ingest("sklearn:digits", str(tmp_path / "a"))
    ingest("sklearn:digits", str(tmp_path / "b"))
    params = TrainParams(architecture="seed_cnn", epochs=2)
    first = train_run(str(tmp_path / "a"), params=params)
    second = train_run(str(tmp_path / "b"), params=params, force=True)  # not the cached one
    assert first.metrics["val_loss"] == pytest.approx(second.metrics["val_loss"], rel=1e-4)


def test_default_epochs_give_small_datasets_enough_steps() -> None:
    assert auto_epochs(125) == 5  # MNIST-sized: 8,000 examples at batch 64
    assert auto_epochs(23) == 22  # the bundled digits' train split
    assert auto_epochs(8) == 63  # one landing batch of 600 digits


def test_the_same_content_is_trained_once(tmp_path: Path, lepton_env: Path) -> None:
    """Issue 13's content cache: the same data, params and code reuse the earlier training;
    other params, or --force-retrain, train again."""
    import time

    for run in ("a", "b", "c"):
        ingest("sklearn:digits", str(tmp_path / run))
    params = TrainParams(architecture="seed_cnn", epochs=1)
    first = train_run(str(tmp_path / "a"), params)
    started = time.perf_counter()
    again = train_run(str(tmp_path / "b"), params)
    assert time.perf_counter() - started < first.train_seconds + 1  # no training, no model log
    assert again.mlflow_run_id == first.mlflow_run_id and again.model_uri == first.model_uri
    assert again.reused_from_run == str(tmp_path / "a") and again.run_dir == str(tmp_path / "b")
    assert (tmp_path / "b" / "train" / "result.json").is_file()
    assert json.loads((tmp_path / "a" / "train" / "result.json").read_text())["run_dir"] == str(
        tmp_path / "a"
    )  # the earlier run's own result is untouched
    other = train_run(str(tmp_path / "c"), TrainParams(architecture="seed_cnn", epochs=2))
    assert other.mlflow_run_id != first.mlflow_run_id
    forced = train_run(str(tmp_path / "c"), params, force=True)
    assert forced.mlflow_run_id != first.mlflow_run_id and forced.reused_from_run is None
