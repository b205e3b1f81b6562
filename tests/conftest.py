"""Shared fixtures: an isolated Lepton home and MLflow store per test, real data, the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
MNIST_DIR = REPO.parent / "shared" / "data" / "mnist"
CLI = str(Path(sys.executable).with_name("lepton-tasks"))


@pytest.fixture
def lepton_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh LEPTON_HOME with its own SQLite MLflow store; settings re-read."""
    from lepton_tasks.settings import get_settings

    home = tmp_path / "home"
    monkeypatch.setenv("LEPTON_HOME", str(home))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{home}/mlflow.db")
    monkeypatch.delenv("LEPTON_QUARANTINE_URI", raising=False)
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "2")
    monkeypatch.setenv("GX_ANALYTICS_ENABLED", "False")
    get_settings.cache_clear()
    import mlflow

    # mlflow.set_tracking_uri() is process-global and beats the environment variable: pin it to
    # this test's store so no in-process client reads another test's registry.
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(f"sqlite:///{home}/mlflow.db")
    yield home
    mlflow.set_tracking_uri(previous)
    get_settings.cache_clear()


@pytest.fixture
def digit_classes(lepton_env: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The class set given (LEPTON_CLASSES), not read from the labels: a label outside it is
    then a bad batch, the simplest bad input for tests of what happens to bad batches."""
    from lepton_tasks.settings import get_settings

    classes = [str(d) for d in range(10)]
    monkeypatch.setenv("LEPTON_CLASSES", json.dumps(classes))
    get_settings.cache_clear()
    return classes


@pytest.fixture
def mnist_dir() -> Path:
    if not (MNIST_DIR / "t10k-images-idx3-ubyte.gz").exists():
        pytest.skip(f"real MNIST not found at {MNIST_DIR}")
    return MNIST_DIR


def digits() -> tuple[np.ndarray, np.ndarray]:
    """The real bundled handwritten digits as uint8 (n, 8, 8) and int labels."""
    from lepton_tasks.data.readers import sklearn_batch

    images, labels = next(sklearn_batch("sklearn:digits").read_chunks(10_000))
    return images, labels


def write_npz(path: Path, x: Any, y: Any, **extra: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, x=x, y=y, **extra)
    return path


@dataclass
class CliResult:
    code: int
    stdout: str
    stderr: str

    @property
    def result(self) -> dict[str, Any]:
        return json.loads(self.stdout.strip().splitlines()[-1])

    @property
    def error_line(self) -> str:
        lines = [line for line in self.stderr.splitlines() if line.startswith("lepton-tasks ")]
        return lines[-1] if lines else ""


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: int = 600) -> CliResult:
    merged = {**os.environ, **(env or {})}
    done = subprocess.run(
        [CLI, *args], capture_output=True, text=True, env=merged, timeout=timeout, check=False
    )
    return CliResult(done.returncode, done.stdout, done.stderr)


def ingested_snapshot(run: str | Path) -> str:
    """The snapshot that ingest recorded in the run folder `run`."""
    from lepton_tasks.results import IngestResult, read_result
    from lepton_tasks.run_folder import RunFolder

    return read_result(RunFolder(str(run)).result_uri("ingest"), IngestResult).snapshot_uri
