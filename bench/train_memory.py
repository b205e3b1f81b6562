"""Train's peak memory and speed on a big snapshot: streaming (the step) vs the split in memory.

`python bench/train_memory.py in_memory SNAPSHOT STEPS` fits Lepton's default model for STEPS
batches of 64 the way train did before it streamed: the whole train split loaded into numpy,
then `from_tensor_slices`, cast, cache, shuffle, batch. It prints one JSON line (seconds,
images/s); its peak memory is measured from outside (`bench/run.py`, GNU time). The streaming
side is the real step: `lepton-tasks train --epochs 1 --steps-per-epoch STEPS`.
"""

from __future__ import annotations

import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def in_memory(snapshot_uri: str, steps: int) -> dict:
    import numpy as np
    import tensorflow as tf

    from lepton_tasks.data.snapshot import load_split, read_manifest
    from lepton_tasks.steps.train import TrainParams, build_and_compile, resolve_schedule

    images, labels = load_split(snapshot_uri, "train")
    val_images, val_labels = load_split(snapshot_uri, "val")
    classes = len(read_manifest(snapshot_uri)["class_names"])
    params = TrainParams(epochs=1, steps_per_epoch=steps, seed=1)
    schedule = resolve_schedule(params, len(images), 3e-3)
    model, _, _ = build_and_compile(params, schedule, (*images.shape[1:], 1), classes)
    dataset = (
        tf.data.Dataset.from_tensor_slices((images[..., np.newaxis], labels.astype(np.int32)))
        .map(lambda x, y: (tf.cast(x, tf.float32), y), num_parallel_calls=tf.data.AUTOTUNE)
        .cache()
        .shuffle(min(len(images), 50_000), seed=1)
        .batch(64)
        .prefetch(tf.data.AUTOTUNE)
        .repeat()
    )
    validation = (
        tf.data.Dataset.from_tensor_slices(
            (val_images[..., np.newaxis], val_labels.astype(np.int32))
        )
        .map(lambda x, y: (tf.cast(x, tf.float32), y))
        .cache()
        .batch(64)
    )
    started = time.perf_counter()  # as the step's fit: the steps and one validation pass
    model.fit(dataset, validation_data=validation, epochs=1, steps_per_epoch=steps, verbose=0)
    seconds = time.perf_counter() - started
    return {"train_seconds": seconds, "images_per_second": steps * 64 / seconds}


if __name__ == "__main__":
    print(json.dumps(in_memory(sys.argv[2], int(sys.argv[3]))))
