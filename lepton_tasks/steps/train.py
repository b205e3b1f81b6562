"""Train: fit a Keras 3 model on the snapshot's train split, early-stopped on its val split.

Resumable: a backup is written every epoch under `<run-dir>/train/backup`, so re-running the
same run (an Airflow retry, a restarted pod) continues from the last finished epoch, and a run
that already finished with the same settings returns its result without training again.
"""

from __future__ import annotations

import hashlib
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

from lepton_tasks import content_cache, storage, tracking
from lepton_tasks.data.snapshot import load_split, read_manifest
from lepton_tasks.errors import InputDataError, TrainingError, UsageError
from lepton_tasks.model_catalog import model_code_version
from lepton_tasks.models import DEFAULT_ARCHITECTURE, get_architecture, save_keras
from lepton_tasks.results import TrainResult, records_result
from lepton_tasks.run_folder import RunFolder

log = logging.getLogger(__name__)


class TrainParams(BaseModel):
    """How to train: the architecture, its schedule and the devices (the train CLI's options)."""

    architecture: str = DEFAULT_ARCHITECTURE
    epochs: int | None = None  # None: auto_epochs(); the cosine schedule spans them
    batch_size: int = 64
    learning_rate: float | None = None
    patience: int = 3
    seed: int = 42
    mixed_precision: str = "auto"  # auto: on when a GPU is visible
    jit_compile: str = "auto"  # auto: Keras' own choice (XLA on GPU)
    deterministic: bool = False
    augment: str = "none"  # none, shift-rotate, or shift-rotate-flip (see AUGMENTATIONS)


# Random shifts (10 % of a side), rotations (±18°) and, where mirrored images are still the
# same class (not digits), horizontal flips: Keras preprocessing layers, active in training only.
AUGMENTATIONS = ("none", "shift-rotate", "shift-rotate-flip")


def augmented(model: Any, input_shape: tuple[int, ...], augment: str, seed: int) -> Any:
    """`model` with seeded augmentation layers in front (saved with it, idle at inference)."""
    import keras
    from keras import layers

    if augment not in AUGMENTATIONS:
        raise UsageError(f"--augment takes one of {', '.join(AUGMENTATIONS)}, not '{augment}'")
    if augment == "none":
        return model
    steps = [
        layers.RandomTranslation(0.1, 0.1, fill_mode="constant", seed=seed),
        layers.RandomRotation(0.05, fill_mode="constant", seed=seed + 1),
    ]
    if augment.endswith("flip"):
        steps.append(layers.RandomFlip("horizontal", seed=seed + 2))
    return keras.Sequential([keras.Input(shape=input_shape), *steps, model], name=model.name)


def _with_channels(images: np.ndarray) -> np.ndarray:
    return images[..., np.newaxis] if images.ndim == 3 else images


# Without --epochs: at least MIN_STEPS optimizer steps and MIN_EPOCHS epochs, so a few hundred
# examples train as well as a few thousand (5 epochs of 8 steps would leave a model half-trained).
MIN_STEPS = 500
MIN_EPOCHS = 5


def auto_epochs(steps_per_epoch: int) -> int:
    """Epochs enough for MIN_STEPS optimizer steps, at least MIN_EPOCHS."""
    return max(MIN_EPOCHS, math.ceil(MIN_STEPS / max(steps_per_epoch, 1)))


def make_dataset(
    images: np.ndarray, labels: np.ndarray, batch_size: int, seed: int, training: bool
) -> Any:
    """A cached, batched, prefetched `tf.data` pipeline; shuffled (seeded) for training."""
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
        """A reporter for a fit of `epochs` epochs; its Keras callback is `self.callback`."""
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
        self.started = self.epoch_started = time.perf_counter()


class Schedule(BaseModel):
    """How long and how fast to train, resolved from the params and the data size."""

    epochs: int
    steps_per_epoch: int
    learning_rate: float


def resolve_schedule(params: TrainParams, train_examples: int, default_rate: float) -> Schedule:
    """Epochs (params' or `auto_epochs`), steps per epoch and the peak learning rate."""
    steps_per_epoch = math.ceil(train_examples / params.batch_size)
    return Schedule(
        epochs=params.epochs or auto_epochs(steps_per_epoch),
        steps_per_epoch=steps_per_epoch,
        learning_rate=params.learning_rate or default_rate,
    )


def load_training_data(
    snapshot_uri: str,
) -> tuple[dict[str, Any], tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """The snapshot's manifest, train split and val split.

    A snapshot without a val split gives the last tenth of its train split.
    """
    manifest = read_manifest(snapshot_uri)
    x_train, y_train = load_split(snapshot_uri, "train")
    x_val, y_val = load_split(snapshot_uri, "val")
    if len(x_train) == 0:
        raise InputDataError("the snapshot's train split is empty", where=snapshot_uri)
    if len(x_val) == 0:
        cut = max(1, len(x_train) // 10)
        x_train, x_val = x_train[:-cut], x_train[-cut:]
        y_train, y_val = y_train[:-cut], y_train[-cut:]
    return manifest, (x_train, y_train), (x_val, y_val)


def build_and_compile(
    params: TrainParams, schedule: Schedule, input_shape: tuple[int, ...], num_classes: int
) -> tuple[Any, str, bool]:
    """The architecture built and compiled under the device strategy, with a cosine schedule.

    Returns the model, the device it trains on, and whether mixed precision is on.
    """
    import keras

    strategy, device, mixed = configure_devices(params)
    with strategy.scope():
        model = get_architecture(params.architecture).build(input_shape, num_classes)
        model = augmented(model, input_shape, params.augment, params.seed)
        decay = keras.optimizers.schedules.CosineDecay(
            schedule.learning_rate,
            decay_steps=schedule.steps_per_epoch * schedule.epochs,
            alpha=0.05,
        )
        model.compile(
            optimizer=keras.optimizers.Adam(decay),
            loss="sparse_categorical_crossentropy",
            metrics=["accuracy"],
            jit_compile={"auto": "auto", "on": True, "off": False}[params.jit_compile],
            # several batches per graph call: less Python overhead per step for small models
            steps_per_execution=min(32, schedule.steps_per_epoch),
        )
    return model, device, mixed


def _quiet_keras(params: TrainParams) -> None:
    """Seeded, deterministic if asked, and no progress bars on stdout."""
    import keras
    import tensorflow as tf

    keras.config.disable_interactive_logging()  # progress bars would land on stdout
    # ...and go to absl's INFO log instead: MLflow's check of the logged model calls predict()
    # with Keras' default verbosity, which would put two bars into the task log.
    logging.getLogger("absl").setLevel(logging.WARNING)
    keras.utils.set_random_seed(params.seed)
    if params.deterministic:
        tf.config.experimental.enable_op_determinism()


def _finished(folder: RunFolder, params: TrainParams, snapshot_uri: str) -> TrainResult | None:
    """The run's earlier result, if it trained on the same snapshot with the same params."""
    previous = folder.saved_result("train", TrainResult)
    if previous is None or not storage.exists(folder.training_params_uri):
        return None
    if previous.snapshot_uri != snapshot_uri:
        return None
    if storage.read_json(folder.training_params_uri) != params.model_dump():
        return None
    log.info("this run already trained with the same settings; reusing its model")
    return previous


def _backup_dir(folder: RunFolder, snapshot_id: str, params: TrainParams) -> str:
    """Where Keras' per-epoch backup goes, keyed by snapshot and params.

    A backup only resumes the same training. A local run folder keeps it; a remote one gets a
    local scratch folder, since Keras writes its checkpoints with plain file I/O.
    """
    digest = hashlib.sha256(params.model_dump_json().encode()).hexdigest()[:8]
    key = f"{snapshot_id}-{digest}"
    if storage.is_local(folder.uri):
        return folder.training_backup_uri(key)
    return os.path.join(tempfile.gettempdir(), "lepton-backup", key)


def _resume_run_id(folder: RunFolder, backup_dir: str) -> str | None:
    """The MLflow run of an interrupted try, to continue it rather than open a second one."""
    if storage.exists(folder.training_run_id_uri) and storage.exists(backup_dir):
        return storage.open_uri(folder.training_run_id_uri, "rb").read().decode().strip()
    return None


@records_result
def train(
    snapshot_uri: str,
    run_dir: str,
    params: TrainParams | None = None,
    parent_run_id: str | None = None,
    force: bool = False,
) -> TrainResult:
    """Train `params.architecture` on the snapshot's train split, in an MLflow run.

    Args:
        snapshot_uri: the snapshot to train on (validate's `snapshot_uri`).
        run_dir: the run folder; the model, its backup and params go to its `train/`.
        params: architecture, epochs, batch size, learning rate, patience, seed, devices.
        parent_run_id: the MLflow pipeline run to nest under.
        force: train even if an earlier run trained the same content (the content cache).

    Returns:
        The model's file and MLflow URIs, its run, the best epoch's metrics and the speed.

    Raises:
        UsageError, InputDataError, TrainingError (NaN, no epoch), TrackingUnavailableError.
    """
    params = params or TrainParams()
    architecture = _checked(params)
    folder = RunFolder(run_dir)
    if (earlier := _earlier(folder, params, snapshot_uri, force)) is not None:
        return earlier
    tracking.check_tracking()
    manifest, train_split, val_split = load_training_data(snapshot_uri)
    _quiet_keras(params)
    schedule = resolve_schedule(params, len(train_split[0]), architecture.learning_rate)
    input_shape = tuple(_with_channels(train_split[0][:1]).shape[1:])
    model, device, mixed = build_and_compile(
        params, schedule, input_shape, len(manifest["class_names"])
    )
    backup_dir = _backup_dir(folder, manifest["snapshot_id"], params)
    resume_run_id = _resume_run_id(folder, backup_dir)
    tags = {"lepton.snapshot_id": manifest["snapshot_id"], "lepton.run_dir": run_dir}
    with tracking.step_run("train", parent_run_id, run_id=resume_run_id, tags=tags) as run:
        storage.write_bytes(folder.training_run_id_uri, run.info.run_id.encode())
        if resume_run_id is None:
            _log_params(params, schedule, device, mixed, snapshot_uri, train_split, val_split)
        fitted = fit(model, train_split, val_split, schedule, params, backup_dir)
        _log_fit(fitted)
        save_keras(model, folder.model_file_uri)
        result = TrainResult(
            run_dir=run_dir,
            snapshot_uri=snapshot_uri,
            model_uri=folder.model_file_uri,
            mlflow_model_uri=_log_model(model, val_split[0][:5], manifest["class_names"]),
            mlflow_run_id=run.info.run_id,
            mlflow_experiment_id=run.info.experiment_id,
            architecture=params.architecture,
            device=device,
            **fitted.result_fields(),
        )
    storage.write_json(folder.training_params_uri, params.model_dump())
    content_cache.store("train", _cache_key(snapshot_uri, params), result)
    log.info("trained: %s", json.dumps(fitted.metrics))
    return result


def _checked(params: TrainParams) -> Any:
    if (params.epochs is not None and params.epochs < 1) or params.batch_size < 1:
        raise UsageError("--epochs and --batch-size must be at least 1")
    return get_architecture(params.architecture)


def _earlier(
    folder: RunFolder, params: TrainParams, snapshot_uri: str, force: bool
) -> TrainResult | None:
    """This run's own finished training, else (unless forced) an earlier run's of the same.

    An interrupted run resumes instead, and anything else trains.
    """
    if (previous := _finished(folder, params, snapshot_uri)) is not None:
        return previous
    return None if force else _reuse(_cache_key(snapshot_uri, params), folder.uri)


def _cache_key(snapshot_uri: str, params: TrainParams) -> str:
    """What a training depends on: the data's content, the params, the code."""
    manifest = read_manifest(snapshot_uri)
    return content_cache.cache_key(
        data=manifest["sha256"],
        params=params.model_dump(),
        code=tracking.code_version(),
        model_code=model_code_version(params.architecture),
    )


def _reuse(key: str, run_dir: str) -> TrainResult | None:
    """An earlier run's training of the same content, if its model is still there."""
    earlier = content_cache.lookup("train", key, TrainResult)
    if earlier is None or not storage.exists(earlier.model_uri):
        return None
    log.info(
        "unchanged: the same data, params and code trained MLflow run %s in %s; reusing it "
        "(force a retrain with --force-retrain)",
        earlier.mlflow_run_id,
        earlier.run_dir,
    )
    return earlier.model_copy(
        update={"run_dir": run_dir, "result_uri": None, "reused_from_run": earlier.run_dir}
    )


Split = tuple[np.ndarray, np.ndarray]


def _log_params(
    params: TrainParams,
    schedule: Schedule,
    device: str,
    mixed: bool,
    snapshot_uri: str,
    train_split: Split,
    val_split: Split,
) -> None:
    import mlflow

    mlflow.log_params(
        {
            **params.model_dump(),
            "epochs": schedule.epochs,
            "learning_rate": schedule.learning_rate,
            "device": device,
            "mixed_precision_active": mixed,
            "train_examples": len(train_split[0]),
            "val_examples": len(val_split[0]),
            "snapshot_uri": snapshot_uri,
        }
    )
    log.info(
        "training %s on %d examples (%s, batch %d, lr %g)",
        params.architecture,
        len(train_split[0]),
        device,
        params.batch_size,
        schedule.learning_rate,
    )


class Fitted(BaseModel):
    """What one `model.fit` call gave: the history, its best epoch, its speed."""

    history: dict[str, list[float]]
    initial_epoch: int
    best: int
    seconds: float
    images_per_second: float

    @property
    def epochs_this_try(self) -> int:
        """Epochs run by this call (not counting those restored from a backup)."""
        return len(self.history["val_loss"])

    @property
    def metrics(self) -> dict[str, float]:
        """Validation loss and accuracy and train accuracy at the best epoch."""
        return {
            "val_loss": self.history["val_loss"][self.best],
            "val_accuracy": self.history["val_accuracy"][self.best],
            "train_accuracy": self.history["accuracy"][self.best],
        }

    def result_fields(self) -> dict[str, Any]:
        """The fields of `TrainResult` this fit decides."""
        return {
            "epochs_run": self.initial_epoch + self.epochs_this_try,
            "best_epoch": self.initial_epoch + self.best + 1,
            "metrics": self.metrics,
            "train_seconds": round(self.seconds, 3),
            "images_per_second": round(self.images_per_second, 1),
            "resumed_from_epoch": self.initial_epoch,
        }


def fit(
    model: Any,
    train_split: Split,
    val_split: Split,
    schedule: Schedule,
    params: TrainParams,
    backup_dir: str,
) -> Fitted:
    """Fit the compiled model on the two splits.

    With a per-epoch backup (an interrupted try resumes), early stopping on val loss (best
    weights restored), and one log line and MLflow metrics per epoch.
    """
    import keras

    reporter = EpochReporter(schedule.epochs)
    callbacks = [
        # two checkpoints: a kill while one is written leaves the other to resume from
        keras.callbacks.BackupAndRestore(backup_dir, double_checkpoint=True),
        reporter.callback,
        keras.callbacks.EarlyStopping(
            monitor="val_loss", patience=params.patience, restore_best_weights=True
        ),
    ]
    started = time.perf_counter()
    history = model.fit(
        make_dataset(*train_split, params.batch_size, params.seed, training=True),
        validation_data=make_dataset(*val_split, params.batch_size, params.seed, training=False),
        epochs=schedule.epochs,
        callbacks=callbacks,
        shuffle=False,  # the dataset shuffles itself, seeded
        verbose=0,
    )
    seconds = time.perf_counter() - started
    curves = {k: [float(v) for v in values] for k, values in history.history.items()}
    if not curves.get("val_loss"):
        raise TrainingError("training ran no epoch (was the backup from a finished run?)")
    epochs_this_try = len(curves["val_loss"])
    return Fitted(
        history=curves,
        initial_epoch=reporter.initial_epoch,
        best=int(np.argmin(curves["val_loss"])),
        seconds=seconds,
        images_per_second=len(train_split[0]) * epochs_this_try / seconds,
    )


def _log_fit(fitted: Fitted) -> None:
    import mlflow

    mlflow.log_metrics(
        {
            "best_val_loss": fitted.metrics["val_loss"],
            "best_val_accuracy": fitted.metrics["val_accuracy"],
            "train_seconds": fitted.seconds,
            "images_per_second": fitted.images_per_second,
        }
    )
    mlflow.log_figure(learning_curves(fitted.history), "learning_curves.png")


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


def _log_model(model: Any, example: np.ndarray, class_names: list[str]) -> str:
    """The model in MLflow with its signature and an input example.

    Its class names (the meaning of each output, in order) go in the model's metadata.
    """
    from mlflow.models import infer_signature

    example = _with_channels(example).astype(np.float32)
    signature = infer_signature(example, np.asarray(model.predict(example, verbose=0)))
    return tracking.log_keras_model(
        model, signature, example, metadata={"class_names": list(class_names)}
    )
