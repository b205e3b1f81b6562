"""Train: fit a Keras 3 model on the snapshot's train split, early-stopped on its val split.

Resumable: a backup is written every epoch under `<run-dir>/train/backup`, so re-running the
same run (an Airflow retry, a restarted pod) continues from the last finished epoch, and a run
that already finished with the same settings returns its result without training again.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import tempfile
import time
from typing import Any

import numpy as np
from pydantic import BaseModel

from lepton_tasks import storage, tracking
from lepton_tasks.data.snapshot import load_split, read_manifest
from lepton_tasks.errors import InputDataError, TrainingError, UsageError
from lepton_tasks.models import DEFAULT_ARCHITECTURE, get_architecture
from lepton_tasks.results import IngestResult, TrainResult, load_result, records_result, step_dir

log = logging.getLogger(__name__)


class TrainParams(BaseModel):
    architecture: str = DEFAULT_ARCHITECTURE
    epochs: int | None = None  # None: auto_epochs(); the cosine schedule spans them
    batch_size: int = 64
    learning_rate: float | None = None
    patience: int = 3
    seed: int = 42
    mixed_precision: str = "auto"  # auto: on when a GPU is visible
    jit_compile: str = "auto"  # auto: Keras' own choice (XLA on GPU)
    deterministic: bool = False


def _with_channels(images: np.ndarray) -> np.ndarray:
    return images[..., np.newaxis] if images.ndim == 3 else images


# Without --epochs: at least MIN_STEPS optimizer steps and MIN_EPOCHS epochs, so a few hundred
# examples train as well as a few thousand (5 epochs of 8 steps would leave a model half-trained).
MIN_STEPS = 500
MIN_EPOCHS = 5


def auto_epochs(steps_per_epoch: int) -> int:
    return max(MIN_EPOCHS, math.ceil(MIN_STEPS / max(steps_per_epoch, 1)))


def make_dataset(
    images: np.ndarray, labels: np.ndarray, batch_size: int, seed: int, training: bool
) -> Any:
    import tensorflow as tf

    dataset = tf.data.Dataset.from_tensor_slices((_with_channels(images), labels.astype(np.int32)))
    dataset = dataset.map(
        lambda x, y: (tf.cast(x, tf.float32), y), num_parallel_calls=tf.data.AUTOTUNE
    ).cache()
    if training:
        dataset = dataset.shuffle(
            min(len(images), 50_000), seed=seed, reshuffle_each_iteration=True
        )
    return dataset.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def configure_devices(params: TrainParams) -> tuple[Any, str, bool]:
    """Pick the distribution strategy and precision from the visible hardware."""
    import keras
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if params.mixed_precision not in ("auto", "on", "off"):
        raise UsageError("--mixed-precision takes auto, on or off")
    mixed = params.mixed_precision == "on" or (params.mixed_precision == "auto" and bool(gpus))
    keras.mixed_precision.set_global_policy("mixed_float16" if mixed else "float32")
    if len(gpus) > 1:
        strategy = tf.distribute.MirroredStrategy()
        device = f"{len(gpus)} GPUs (MirroredStrategy)"
    else:
        strategy = tf.distribute.get_strategy()
        device = "GPU" if gpus else "CPU"
    return strategy, device, mixed


class EpochReporter:
    """One log line per epoch (no progress bars in task logs) and per-epoch MLflow metrics."""

    def __init__(self, epochs: int) -> None:
        import keras

        reporter = self

        class Callback(keras.callbacks.Callback):
            def on_train_begin(self, logs: dict | None = None) -> None:
                reporter.initial_epoch = int(getattr(self.model, "_initial_epoch", 0) or 0)
                reporter.started = time.perf_counter()
                if reporter.initial_epoch:
                    log.info("resuming from the backup after epoch %d", reporter.initial_epoch)

            def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
                reporter.epoch_started = time.perf_counter()
                reporter.epoch = epoch + 1

            def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
                if reporter.interactive:  # a terminal gets a live line; task logs do not
                    sys.stderr.write(f"\repoch {reporter.epoch}/{epochs} batch {batch + 1}")
                    sys.stderr.flush()

            def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
                import mlflow

                logs = {k: float(v) for k, v in (logs or {}).items() if np.isscalar(v)}
                if any(math.isnan(v) for v in logs.values()):
                    raise TrainingError(f"training diverged: NaN metric at epoch {epoch + 1}")
                took = time.perf_counter() - reporter.epoch_started
                reporter.epochs_run = epoch + 1
                if reporter.interactive:
                    sys.stderr.write("\r")
                log.info(
                    "epoch %d/%d %s %.1fs",
                    epoch + 1,
                    epochs,
                    " ".join(f"{k}={v:.4f}" for k, v in sorted(logs.items())),
                    took,
                )
                mlflow.log_metrics({**logs, "epoch_seconds": took}, step=epoch + 1)

        self.callback = Callback()
        self.interactive = sys.stderr.isatty()
        self.epoch = 0
        self.initial_epoch = 0
        self.epochs_run = 0
        self.started = self.epoch_started = time.perf_counter()


def _train_inputs(run_dir: str, snapshot_uri: str | None) -> str:
    if snapshot_uri is None:
        snapshot_uri = load_result(run_dir, "ingest", IngestResult).snapshot_uri
    return snapshot_uri


def _finished(out_dir: str, params: TrainParams) -> TrainResult | None:
    params_uri = storage.join(out_dir, "params.json")
    done = storage.join(out_dir, "result.json")
    if not (storage.exists(done) and storage.exists(params_uri)):
        return None
    if storage.read_json(params_uri) != params.model_dump():
        return None
    log.info("this run already trained with the same settings; reusing its model")
    return TrainResult.model_validate(storage.read_json(done))


@records_result
def train(
    run_dir: str,
    snapshot_uri: str | None = None,
    params: TrainParams | None = None,
    parent_run_id: str | None = None,
) -> TrainResult:
    params = params or TrainParams()
    architecture = get_architecture(params.architecture)
    if (params.epochs is not None and params.epochs < 1) or params.batch_size < 1:
        raise UsageError("--epochs and --batch-size must be at least 1")
    snapshot_uri = _train_inputs(run_dir, snapshot_uri)
    out_dir = step_dir(run_dir, "train")
    if (previous := _finished(out_dir, params)) is not None:
        return previous
    tracking.check_tracking()

    manifest = read_manifest(snapshot_uri)
    x_train, y_train = load_split(snapshot_uri, "train")
    x_val, y_val = load_split(snapshot_uri, "val")
    if len(x_train) == 0:
        raise InputDataError("the snapshot's train split is empty", where=snapshot_uri)
    if len(x_val) == 0:  # no val split configured: hold out the last tenth of train
        cut = max(1, len(x_train) // 10)
        x_train, x_val = x_train[:-cut], x_train[-cut:]
        y_train, y_val = y_train[:-cut], y_train[-cut:]

    import keras
    import tensorflow as tf

    keras.config.disable_interactive_logging()  # progress bars would land on stdout
    # ...and go to absl's INFO log instead: MLflow's check of the logged model calls predict()
    # with Keras' default verbosity, which would put two bars into the task log.
    logging.getLogger("absl").setLevel(logging.WARNING)
    keras.utils.set_random_seed(params.seed)
    if params.deterministic:
        tf.config.experimental.enable_op_determinism()
    strategy, device, mixed = configure_devices(params)
    num_classes = len(manifest["class_names"])
    input_shape = tuple(_with_channels(x_train[:1]).shape[1:])
    learning_rate = params.learning_rate or architecture.learning_rate
    steps_per_epoch = math.ceil(len(x_train) / params.batch_size)
    epochs = params.epochs or auto_epochs(steps_per_epoch)
    with strategy.scope():
        model = architecture.build(input_shape, num_classes)
        schedule = keras.optimizers.schedules.CosineDecay(
            learning_rate, decay_steps=steps_per_epoch * epochs, alpha=0.05
        )
        model.compile(
            optimizer=keras.optimizers.Adam(schedule),
            loss="sparse_categorical_crossentropy",
            metrics=["accuracy"],
            jit_compile={"auto": "auto", "on": True, "off": False}[params.jit_compile],
            # several batches per graph call: less Python overhead per step for small models
            steps_per_execution=min(32, steps_per_epoch),
        )
    train_ds = make_dataset(x_train, y_train, params.batch_size, params.seed, training=True)
    val_ds = make_dataset(x_val, y_val, params.batch_size, params.seed, training=False)

    backup_dir = (
        storage.join(out_dir, "backup")
        if storage.is_local(out_dir)
        else os.path.join(tempfile.gettempdir(), "lepton-backup", manifest["snapshot_id"])
    )
    run_id_uri = storage.join(out_dir, "mlflow_run_id")
    resume_run_id = (
        storage.open_uri(run_id_uri, "rb").read().decode().strip()
        if storage.exists(run_id_uri) and storage.exists(backup_dir)
        else None
    )
    reporter = EpochReporter(epochs)
    tags = {"lepton.snapshot_id": manifest["snapshot_id"], "lepton.run_dir": run_dir}
    with tracking.step_run("train", parent_run_id, run_id=resume_run_id, tags=tags) as run:
        import mlflow

        storage.write_bytes(run_id_uri, run.info.run_id.encode())
        if resume_run_id is None:
            mlflow.log_params(
                {
                    **params.model_dump(),
                    "epochs": epochs,
                    "learning_rate": learning_rate,
                    "device": device,
                    "mixed_precision_active": mixed,
                    "train_examples": len(x_train),
                    "val_examples": len(x_val),
                    "snapshot_uri": snapshot_uri,
                }
            )
        callbacks = [
            keras.callbacks.BackupAndRestore(backup_dir),
            reporter.callback,
            keras.callbacks.EarlyStopping(
                monitor="val_loss", patience=params.patience, restore_best_weights=True
            ),
        ]
        started = time.perf_counter()
        log.info(
            "training %s on %d examples (%s, batch %d, lr %g)",
            params.architecture,
            len(x_train),
            device,
            params.batch_size,
            learning_rate,
        )
        history = model.fit(
            train_ds,
            validation_data=val_ds,
            epochs=epochs,
            callbacks=callbacks,
            shuffle=False,  # the dataset shuffles itself, seeded
            verbose=0,
        )
        train_seconds = time.perf_counter() - started
        val_losses = history.history.get("val_loss", [])
        if not val_losses:
            raise TrainingError("training ran no epoch (was the backup from a finished run?)")
        best = int(np.argmin(val_losses))
        metrics = {
            "val_loss": float(val_losses[best]),
            "val_accuracy": float(history.history["val_accuracy"][best]),
            "train_accuracy": float(history.history["accuracy"][best]),
        }
        images_per_second = len(x_train) * len(val_losses) / train_seconds
        mlflow.log_metrics(
            {
                "best_val_loss": metrics["val_loss"],
                "best_val_accuracy": metrics["val_accuracy"],
                "train_seconds": train_seconds,
                "images_per_second": images_per_second,
            }
        )
        mlflow.log_figure(learning_curves(history.history), "learning_curves.png")
        model_uri = storage.join(out_dir, "model.keras")
        _save_keras(model, model_uri)
        mlflow_model_uri = _log_model(model, x_val[:5])
        result = TrainResult(
            run_dir=run_dir,
            snapshot_uri=snapshot_uri,
            model_uri=model_uri,
            mlflow_model_uri=mlflow_model_uri,
            mlflow_run_id=run.info.run_id,
            mlflow_experiment_id=run.info.experiment_id,
            architecture=params.architecture,
            epochs_run=reporter.initial_epoch + len(val_losses),
            best_epoch=reporter.initial_epoch + best + 1,
            metrics=metrics,
            train_seconds=round(train_seconds, 3),
            images_per_second=round(images_per_second, 1),
            resumed_from_epoch=reporter.initial_epoch,
            device=device,
        )
    storage.write_json(storage.join(out_dir, "params.json"), params.model_dump())
    log.info("trained: %s", json.dumps(metrics))
    return result


def learning_curves(history: dict[str, list[float]]) -> Any:
    """Loss and accuracy per epoch, train and validation, as one matplotlib figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    for ax, metric in zip(axes, ("loss", "accuracy"), strict=True):
        epochs = range(1, len(history.get(metric, [])) + 1)
        ax.plot(epochs, history.get(metric, []), marker="o", label="train")
        ax.plot(epochs, history.get(f"val_{metric}", []), marker="o", label="validation")
        ax.set_xlabel("epoch")
        ax.set_title(metric)
        ax.legend()
    figure.tight_layout()
    plt.close(figure)
    return figure


def _save_keras(model: Any, uri: str) -> None:
    if storage.is_local(uri):
        storage.makedirs(uri.rsplit("/", 1)[0])
        model.save(uri.removeprefix("file://"))
        return
    with tempfile.TemporaryDirectory() as scratch:
        local = os.path.join(scratch, "model.keras")
        model.save(local)
        storage.copy_tree(local, uri)


def _log_model(model: Any, example: np.ndarray) -> str:
    from mlflow.models import infer_signature

    example = _with_channels(example).astype(np.float32)
    signature = infer_signature(example, np.asarray(model.predict(example, verbose=0)))
    return tracking.log_keras_model(model, signature, example)
