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

from lepton_tasks import content_cache, litert, storage, tracking
from lepton_tasks.data.snapshot import read_manifest
from lepton_tasks.data.stream import SplitStream, make_dataset
from lepton_tasks.distributed import Cluster
from lepton_tasks.errors import InputDataError, TrainingError, UsageError
from lepton_tasks.model_catalog import model_code_version
from lepton_tasks.models import DEFAULT_ARCHITECTURE, get_architecture, load_keras, save_keras
from lepton_tasks.results import TrainResult, TrainWorkerResult, records_result
from lepton_tasks.run_folder import RunFolder
from lepton_tasks.settings import get_settings

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
    steps_per_execution: int = 32  # batches per compiled call (1 with several workers)
    steps_per_epoch: int | None = None  # None: one pass over the train split per epoch


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


def _input_shape(image_shape: tuple[int, ...]) -> tuple[int, ...]:
    """The model's input shape: (H, W, C), a channel added to grey images."""
    return (*image_shape, 1) if len(image_shape) == 2 else tuple(image_shape)


# Without --epochs: at least MIN_STEPS optimizer steps and MIN_EPOCHS epochs, so a few hundred
# examples train as well as a few thousand (5 epochs of 8 steps would leave a model half-trained).
MIN_STEPS = 500
MIN_EPOCHS = 5


def auto_epochs(steps_per_epoch: int) -> int:
    """Epochs enough for MIN_STEPS optimizer steps, at least MIN_EPOCHS."""
    return max(MIN_EPOCHS, math.ceil(MIN_STEPS / max(steps_per_epoch, 1)))


def configure_devices(params: TrainParams, cluster: Cluster | None = None) -> tuple[Any, str, bool]:
    """Pick the distribution strategy and precision from the cluster and visible hardware."""
    import keras
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if params.mixed_precision not in ("auto", "on", "off"):
        raise UsageError("--mixed-precision takes auto, on or off")
    mixed = params.mixed_precision == "on" or (params.mixed_precision == "auto" and bool(gpus))
    # float16 on GPUs; bfloat16 on CPUs, which oneDNN runs natively with AMX or AVX-512 BF16
    half = "mixed_float16" if gpus else "mixed_bfloat16"
    keras.mixed_precision.set_global_policy(half if mixed else "float32")
    if cluster is not None and cluster.distributed:
        # all-reduce of the gradients every step, across the TF_CONFIG cluster
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
        device = (
            f"{cluster.workers} workers (MultiWorkerMirroredStrategy), {len(gpus) or 'no'} GPU each"
        )
    elif len(gpus) > 1:
        strategy = tf.distribute.MirroredStrategy()
        device = f"{len(gpus)} GPUs (MirroredStrategy)"
    else:
        strategy = tf.distribute.get_strategy()
        device = "GPU" if gpus else "CPU"
    return strategy, device, mixed


class EpochReporter:
    """One log line per epoch (no progress bars in task logs) and per-epoch MLflow metrics."""

    def __init__(self, epochs: int, track: bool = True) -> None:
        """A reporter for a fit of `epochs` epochs; its Keras callback is `self.callback`.

        `track`: log each epoch's metrics to the active MLflow run (off on a worker, not chief).
        """
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
                if track:
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
    steps_per_epoch = params.steps_per_epoch or math.ceil(train_examples / params.batch_size)
    return Schedule(
        epochs=params.epochs or auto_epochs(steps_per_epoch),
        steps_per_epoch=steps_per_epoch,
        learning_rate=params.learning_rate or default_rate,
    )


def load_training_data(
    snapshot_uri: str, seed: int
) -> tuple[dict[str, Any], SplitStream, SplitStream]:
    """The snapshot's manifest, and its train and val splits as streams (nothing loaded yet).

    A snapshot without a val split lends every tenth train example to validation.
    """
    manifest = read_manifest(snapshot_uri)
    train_split = SplitStream(snapshot_uri, "train", shuffle_seed=seed)
    val_split = SplitStream(snapshot_uri, "val")
    if train_split.count == 0:
        raise InputDataError("the snapshot's train split is empty", where=snapshot_uri)
    if val_split.count == 0:
        train_split = SplitStream(snapshot_uri, "train", holdout="keep", shuffle_seed=seed)
        val_split = SplitStream(snapshot_uri, "train", holdout="held_out")
    return manifest, train_split, val_split


def build_and_compile(
    params: TrainParams,
    schedule: Schedule,
    input_shape: tuple[int, ...],
    num_classes: int,
    cluster: Cluster | None = None,
) -> tuple[Any, str, bool]:
    """The architecture built and compiled under the device strategy, with a cosine schedule.

    Returns the model, the device it trains on, and whether mixed precision is on.
    """
    import keras

    strategy, device, mixed = configure_devices(params, cluster)
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
            # (Keras 3.15's multi-step loop fails under MultiWorkerMirroredStrategy: one there)
            steps_per_execution=(
                1
                if cluster is not None and cluster.distributed
                else min(params.steps_per_execution, schedule.steps_per_epoch)
            ),
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


def _backup_dir(
    folder: RunFolder, snapshot_id: str, params: TrainParams, cluster: Cluster
) -> str | None:
    """Where Keras' per-epoch backup goes, keyed by snapshot and params.

    A backup only resumes the same training. A local run folder keeps it; a remote one gets a
    local scratch folder, since Keras writes its checkpoints with plain file I/O. Several
    workers get none: each would resume on its own, out of lockstep.
    """
    if cluster.distributed:
        return None
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
    cluster: Cluster | None = None,
) -> TrainResult:
    """Train `params.architecture` on the snapshot's train split, in an MLflow run.

    Args:
        snapshot_uri: the snapshot to train on (validate's `snapshot_uri`).
        run_dir: the run folder; the model, its backup and params go to its `train/`.
        params: architecture, epochs, batch size, learning rate, patience, seed, devices.
        parent_run_id: the MLflow pipeline run to nest under.
        force: train even if an earlier run trained the same content (the content cache).
        cluster: the chief's place in a multi-worker cluster; the others run `train_worker`.

    Returns:
        The model's file and MLflow URIs, its run, the best epoch's metrics and the speed.

    Raises:
        UsageError, InputDataError, TrainingError (NaN, no epoch), TrackingUnavailableError.
    """
    params, cluster = params or TrainParams(), cluster or Cluster()
    folder = RunFolder(run_dir)
    if (earlier := _earlier(folder, params, snapshot_uri, force, cluster)) is not None:
        return earlier
    tracking.check_tracking()
    manifest, train_split, val_split, schedule, (model, device, mixed) = _prepare(
        snapshot_uri, params, cluster
    )
    backup_dir = _backup_dir(folder, manifest["snapshot_id"], params, cluster)
    resume_run_id = _resume_run_id(folder, backup_dir) if backup_dir else None
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
            **_exported(model, folder, val_split, manifest["class_names"], cluster),
            mlflow_run_id=run.info.run_id,
            mlflow_experiment_id=run.info.experiment_id,
            architecture=params.architecture,
            device=device,
            **fitted.result_fields(),
        )
    _keep(folder, params, snapshot_uri, result)
    return result


def _exported(
    model: Any, folder: RunFolder, val_split: SplitStream, class_names: list[str], cluster: Cluster
) -> dict[str, Any]:
    """The model logged to MLflow, and its LiteRT copy if it predicts the same (for evaluate).

    A multi-worker model predicts only in lockstep with the other workers: its saved copy
    stands in for it.
    """
    servable = load_keras(folder.model_file_uri) if cluster.distributed else model
    examples = val_split.head(512)  # the copy must predict as the model does on all of them
    sha256 = (
        litert.export_verified(servable, folder.litert_model_uri, examples)
        if get_settings().litert_copy
        else None
    )
    if sha256:
        import mlflow
        from mlflow.exceptions import MlflowException

        try:
            mlflow.log_param(litert.SHA_PARAM, sha256)  # write-once: what evaluate trusts
        except MlflowException as exc:  # a resumed run that logged another copy's: none then
            log.warning("no LiteRT copy recorded: %s", exc)
            sha256 = None
    return {
        "mlflow_model_uri": _log_model(servable, examples[:5], class_names),
        "litert_model_uri": folder.litert_model_uri if sha256 else None,
        "litert_sha256": sha256,
    }


def _keep(folder: RunFolder, params: TrainParams, snapshot_uri: str, result: TrainResult) -> None:
    """The params beside the model, and the result in the content cache."""
    storage.write_json(folder.training_params_uri, params.model_dump())
    content_cache.store("train", _cache_key(snapshot_uri, params), result)
    log.info("trained: %s", json.dumps(result.metrics))


def _prepare(
    snapshot_uri: str, params: TrainParams, cluster: Cluster
) -> tuple[dict[str, Any], SplitStream, SplitStream, Schedule, tuple[Any, str, bool]]:
    """The data streams, the schedule and the compiled model (with its device and precision)."""
    architecture = _checked(params)
    manifest, train_split, val_split = load_training_data(snapshot_uri, params.seed)
    _quiet_keras(params)
    schedule = resolve_schedule(params, train_split.count, architecture.learning_rate)
    compiled = build_and_compile(
        params,
        schedule,
        _input_shape(train_split.image_shape),
        len(manifest["class_names"]),
        cluster,
    )
    return manifest, train_split, val_split, schedule, compiled


def train_worker(
    snapshot_uri: str, run_dir: str, params: TrainParams, cluster: Cluster
) -> TrainWorkerResult:
    """A worker other than the chief: the same training in lockstep, nothing logged or kept.

    The chief (`train`) logs to MLflow and writes the model and the step's result.
    """
    _, train_split, val_split, schedule, (model, _, _) = _prepare(snapshot_uri, params, cluster)
    fitted = fit(model, train_split, val_split, schedule, params, None, track=False)
    with tempfile.TemporaryDirectory() as scratch:  # every worker saves, as TF asks; only the
        model.save(os.path.join(scratch, "model.keras"))  # chief's copy is kept
    return TrainWorkerResult(
        run_dir=run_dir,
        worker=cluster.index,
        workers=cluster.workers,
        epochs_run=fitted.epochs_this_try,
        train_seconds=round(fitted.seconds, 3),
        images_per_second=round(fitted.images_per_second, 1),
    )


def _checked(params: TrainParams) -> Any:
    if (params.epochs is not None and params.epochs < 1) or params.batch_size < 1:
        raise UsageError("--epochs and --batch-size must be at least 1")
    return get_architecture(params.architecture)


def _earlier(
    folder: RunFolder, params: TrainParams, snapshot_uri: str, force: bool, cluster: Cluster
) -> TrainResult | None:
    """This run's own finished training, else (unless forced) an earlier run's of the same.

    An interrupted run resumes instead, and anything else trains. Several workers must all
    train or all stop, so none of them reuses anything on its own.
    """
    if cluster.distributed:
        return None
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


Split = SplitStream


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
            "train_examples": train_split.count,
            "val_examples": val_split.count,
            "snapshot_uri": snapshot_uri,
        }
    )
    log.info(
        "training %s on %d examples (%s, batch %d, lr %g)",
        params.architecture,
        train_split.count,
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
    backup_dir: str | None,
    track: bool = True,
) -> Fitted:
    """Fit the compiled model on the two splits.

    With a per-epoch backup (an interrupted try resumes), early stopping on val loss (best
    weights restored), and one log line and MLflow metrics per epoch.
    """
    import keras

    reporter = EpochReporter(schedule.epochs, track=track)
    callbacks = [
        reporter.callback,
        keras.callbacks.EarlyStopping(
            monitor="val_loss", patience=params.patience, restore_best_weights=True
        ),
    ]
    if backup_dir is not None:
        # two checkpoints: a kill while one is written leaves the other to resume from
        callbacks.insert(0, keras.callbacks.BackupAndRestore(backup_dir, double_checkpoint=True))
    train_data = make_dataset(train_split, params.batch_size, params.seed, training=True)
    if params.steps_per_epoch:  # epochs of a set number of batches, the data cycled through
        train_data = train_data.repeat()
    if isinstance(model.distribute_strategy, _multi_worker_strategy()):
        _build_for_multi_worker(model, train_data)
    started = time.perf_counter()
    history = model.fit(
        train_data,
        validation_data=make_dataset(val_split, params.batch_size, params.seed, training=False),
        epochs=schedule.epochs,
        callbacks=callbacks,
        steps_per_epoch=params.steps_per_epoch,
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
        images_per_second=_examples_per_epoch(train_split, params) * epochs_this_try / seconds,
    )


def _examples_per_epoch(train_split: SplitStream, params: TrainParams) -> int:
    if params.steps_per_epoch:
        return params.steps_per_epoch * params.batch_size
    return train_split.count


def _multi_worker_strategy() -> type:
    import tensorflow as tf

    return tf.distribute.MultiWorkerMirroredStrategy


def _build_for_multi_worker(model: Any, dataset: Any) -> None:
    """Build the model's training state from one local batch, before `fit`.

    Keras 3.15's `fit` builds it from the first distributed batch, which it reduces across
    replicas first; under MultiWorkerMirroredStrategy that reduce fails on the (x, y) pair
    (keras-team/keras#20585). Building here, then skipping that step, is the same build.
    """
    x, y = next(iter(dataset))
    with model.distribute_strategy.scope():
        model._symbolic_build(data_batch=(x, y, None))
    model._maybe_symbolic_build = lambda iterator=None, data_batch=None: None
    _reduce_scalars_across_workers()


def _reduce_scalars_across_workers() -> None:
    """Average each step's loss and metrics across workers as scalars.

    Keras 3.15 reduces them with `strategy.reduce("MEAN", value, axis=0)` under
    MultiWorkerMirroredStrategy, which fails on a scalar ("Invalid reduction dimension 0");
    `axis=None` is the mean across replicas it means. Patched once, for multi-worker only.
    """
    from keras.src import tree
    from keras.src.backend.tensorflow import trainer as tf_trainer

    original = tf_trainer.reduce_per_replica
    if getattr(original, "lepton_patched", False):
        return

    def reduce_per_replica(values: Any, strategy: Any, reduction: str) -> Any:
        if reduction not in ("auto", "mean") or not isinstance(strategy, _multi_worker_strategy()):
            return original(values, strategy, reduction)

        def mean(value: Any) -> Any:
            local = strategy.experimental_local_results(value)[0]
            return strategy.reduce("MEAN", value, axis=None if local.shape.rank == 0 else 0)

        return tree.map_structure(mean, values)

    reduce_per_replica.lepton_patched = True  # type: ignore[attr-defined]
    tf_trainer.reduce_per_replica = reduce_per_replica


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
