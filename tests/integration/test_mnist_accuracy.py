"""The default model on the real MNIST test set (10,000 images): at least 97 % test accuracy; and
batch scoring with the registered champion gives exactly evaluate's accuracy."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from lepton_tasks.data.snapshot import load_split
from lepton_tasks.steps.evaluate import evaluate
from lepton_tasks.steps.ingest import ingest
from lepton_tasks.steps.register import register
from lepton_tasks.steps.score import score
from lepton_tasks.steps.train import train
from lepton_tasks.steps.validate import validate

pytestmark = pytest.mark.slow


def test_default_model_reaches_97_percent_on_real_mnist(
    tmp_path: Path, lepton_env: Path, mnist_dir: Path
) -> None:
    run = str(tmp_path / "run")
    ingested = ingest(str(mnist_dir), run)
    assert ingested.count == 10_000 and ingested.image_shape == [28, 28]
    validated = validate(ingested.snapshot_uri, run, data_docs=False)
    assert validated.success
    trained = train(validated.snapshot_uri, run)  # default architecture and settings
    evaluated = evaluate(trained, run)
    print(
        f"MNIST: {trained.architecture} {trained.epochs_run} epochs in {trained.train_seconds:.1f}s "
        f"({trained.images_per_second:.0f} img/s), test accuracy {evaluated.metrics['accuracy']:.4f}"
    )
    assert evaluated.metrics["accuracy"] >= 0.97
    assert evaluated.decision.promote

    # The champion in use: the test split, unlabelled, through the scoring step's Parquet.
    registered = register(evaluated, run, validated)
    assert registered.promoted
    images, labels = load_split(validated.snapshot_uri, "test")
    np.savez(tmp_path / "test-split.npz", x=images)
    scored = score(registered.model_name, str(tmp_path / "test-split.npz"), str(tmp_path / "p"))
    predicted = pq.read_table(scored.batches[0].output_uri).column("predicted_class").to_pylist()
    names = np.asarray(ingested.class_names)[labels]
    accuracy = float(np.mean(np.asarray(predicted) == names))
    print(
        f"scored {scored.count} test images with v{scored.model_version}: accuracy {accuracy:.4f}"
    )
    assert scored.count == len(labels) and scored.model_version == registered.version
    assert accuracy == pytest.approx(evaluated.metrics["accuracy"], abs=1e-6)
