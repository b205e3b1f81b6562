"""`train` across two worker processes on loopback (TF_CONFIG, MultiWorkerMirroredStrategy)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
from pathlib import Path

import numpy as np
import pytest

from lepton_tasks.data.snapshot import load_split
from lepton_tasks.distributed import Cluster, cluster_from_env, indexed_job_tf_config
from lepton_tasks.errors import UsageError
from lepton_tasks.models import load_keras
from lepton_tasks.steps.evaluate import predict
from lepton_tasks.steps.ingest import ingest
from tests.conftest import CLI, digits, run_cli, write_npz

EPOCHS = "6"


def free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def tf_config(hosts: list[str], index: int) -> str:
    return json.dumps({"cluster": {"worker": hosts}, "task": {"type": "worker", "index": index}})


def test_the_cluster_comes_from_tf_config_or_an_indexed_job(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("TF_CONFIG", raising=False)
    monkeypatch.delenv("JOB_COMPLETION_INDEX", raising=False)
    assert cluster_from_env() == Cluster()
    monkeypatch.setenv("TF_CONFIG", tf_config(["a:1", "b:2", "c:3"], 2))
    assert cluster_from_env() == Cluster(workers=3, index=2, is_chief=False)
    chief = {
        "cluster": {"chief": ["a:1"], "worker": ["b:2"]},
        "task": {"type": "chief", "index": 0},
    }
    monkeypatch.setenv("TF_CONFIG", json.dumps(chief))
    assert cluster_from_env() == Cluster(workers=2, index=0, is_chief=True)
    monkeypatch.setenv("TF_CONFIG", tf_config(["a:1"], 3))
    with pytest.raises(UsageError, match="not in its cluster"):
        cluster_from_env()
    monkeypatch.setenv("TF_CONFIG", "{not json")
    with pytest.raises(UsageError, match="TF_CONFIG must be JSON"):
        cluster_from_env()
    config = json.loads(indexed_job_tf_config(3, 1, "lepton-train-x7k2p-1", "lepton-train-workers"))
    assert config["cluster"]["worker"] == [
        f"lepton-train-x7k2p-{i}.lepton-train-workers:12345" for i in range(3)
    ]
    assert config["task"] == {"type": "worker", "index": 1}
    with pytest.raises(UsageError, match="indexed Job"):
        indexed_job_tf_config(3, 1, "some-pod-0", "svc")
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": {"worker": "a:1"}, "task": {}}))
    with pytest.raises(UsageError, match="TF_CONFIG must be JSON"):
        cluster_from_env()


def test_an_indexed_job_pod_builds_its_tf_config(monkeypatch: pytest.MonkeyPatch) -> None:
    # set (empty), not deleted: the TF_CONFIG the step exports must not outlive the test
    monkeypatch.setenv("TF_CONFIG", "")
    monkeypatch.setenv("LEPTON_TRAIN_WORKERS", "2")
    monkeypatch.setenv("JOB_COMPLETION_INDEX", "1")
    monkeypatch.setattr(socket, "gethostname", lambda: "job-lepton-train-ab12-1")
    assert cluster_from_env() == Cluster(workers=2, index=1, is_chief=False)
    config = json.loads(os.environ["TF_CONFIG"])  # exported for TensorFlow
    assert config["cluster"]["worker"][0] == "job-lepton-train-ab12-0.lepton-train-workers:12345"
    monkeypatch.setenv("TF_CONFIG", "")
    monkeypatch.setenv("JOB_COMPLETION_INDEX", "one")
    with pytest.raises(UsageError, match="are numbers"):
        cluster_from_env()


def _accuracy(model_uri: str, snapshot_uri: str) -> float:
    images, labels = load_split(snapshot_uri, "test")
    return float((predict(load_keras(model_uri), images) == labels).mean())


def test_two_workers_on_loopback_reach_the_single_workers_accuracy(
    tmp_path: Path, lepton_env: Path
) -> None:
    x, y = digits()
    snapshot = ingest(str(write_npz(tmp_path / "d.npz", x, y)), str(tmp_path / "ingest"))
    common = ["--snapshot", snapshot.snapshot_uri, "--epochs", EPOCHS, "--seed", "3"]

    single = run_cli("train", "--run-dir", str(tmp_path / "single"), *common, env={"TF_CONFIG": ""})
    assert single.code == 0, single.stderr[-2000:]

    hosts = [f"127.0.0.1:{port}" for port in free_ports(2)]
    run_dir = str(tmp_path / "two")
    workers = [
        subprocess.Popen(
            [CLI, "train", "--run-dir", run_dir, *common],
            env={**os.environ, "TF_CONFIG": tf_config(hosts, index)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for index in range(2)
    ]
    try:
        outputs = [worker.communicate(timeout=600) for worker in workers]
    finally:  # a worker left waiting for a dead one would outlive the test
        for worker in workers:
            worker.kill()
    for worker, (_, stderr) in zip(workers, outputs, strict=True):
        assert worker.returncode == 0, stderr[-2000:]
    chief, other = (json.loads(out.strip().splitlines()[-1]) for out, _ in outputs)

    assert chief["step"] == "train" and "2 workers (MultiWorkerMirroredStrategy)" in chief["device"]
    assert other == {**other, "step": "train-worker", "worker": 1, "workers": 2}
    assert chief["epochs_run"] == other["epochs_run"]  # lockstep, early stopping included
    saved = json.loads((Path(run_dir) / "train" / "result.json").read_text())
    assert saved["mlflow_run_id"] == chief["mlflow_run_id"]  # the chief's, never the worker's
    one, two = (
        _accuracy(result["model_uri"], snapshot.snapshot_uri) for result in (single.result, chief)
    )
    assert two >= one - 0.02, f"two workers {two:.4f} vs one {one:.4f}"
    assert two > 0.9
    assert np.isfinite(chief["metrics"]["val_loss"])
