"""The default model on the real MNIST test set (10,000 images): at least 97 % test accuracy."""

from __future__ import annotations

from pathlib import Path

import pytest

from lepton_tasks.steps.evaluate import evaluate
from lepton_tasks.steps.ingest import ingest
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
