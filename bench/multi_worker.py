"""One worker against two on loopback: `python bench/multi_worker.py` prints one JSON line.

The first 8,000 real MNIST images (as in part 1 of `make bench`), ingested once; then the train
step three ways, each in fresh processes, same seed and epochs: one worker (defaults), one worker
with one batch per graph call (what multi-worker training runs), and two workers on 127.0.0.1
(TF_CONFIG, MultiWorkerMirroredStrategy) sharing the machine's cores. Test accuracy on the last
2,000 images.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
CLI = str(Path(sys.executable).with_name("lepton-tasks"))
MNIST = REPO.parent / "shared" / "data" / "mnist"
EPOCHS = "5"


def free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def train(
    workers: int, run_dir: str, snapshot: str, extra: list[str], env: dict
) -> tuple[dict, float]:
    hosts = [f"127.0.0.1:{port}" for port in free_ports(workers)]
    command = [CLI, "train", "--run-dir", run_dir, "--snapshot", snapshot, "--epochs", EPOCHS,
               "--seed", "1", *extra]  # fmt: skip
    started = time.perf_counter()
    with contextlib.ExitStack() as files:
        processes, logs = [], []
        for index in range(workers):
            config = {"cluster": {"worker": hosts}, "task": {"type": "worker", "index": index}}
            worker_env = {**env, "TF_CONFIG": json.dumps(config)} if workers > 1 else env
            out, err = (files.enter_context(tempfile.TemporaryFile("w+")) for _ in range(2))
            logs.append((out, err))  # files, not pipes: a full pipe would stall a worker
            processes.append(subprocess.Popen(command, env=worker_env, stdout=out, stderr=err))
        while any(p.poll() is None for p in processes):
            if any(p.returncode not in (None, 0) for p in processes):
                for process in processes:  # a dead worker leaves the others waiting for it
                    process.kill()
            time.sleep(0.2)
        outputs = []
        for out, err in logs:
            out.seek(0)
            err.seek(0)
            outputs.append((out.read(), err.read()))
    wall = time.perf_counter() - started
    for process, (_, err) in zip(processes, outputs, strict=True):
        if process.returncode != 0:
            raise RuntimeError(err[-3000:])
    return json.loads(outputs[0][0].strip().splitlines()[-1]), wall


def main() -> None:
    from lepton_tasks.data.readers import open_source

    (batch,) = open_source(str(MNIST))
    images, labels = next(batch.read_chunks(20_000))
    rows = {}
    with tempfile.TemporaryDirectory() as scratch:
        env = {**os.environ, "LEPTON_HOME": scratch, "MLFLOW_TRACKING_URI": f"sqlite:///{scratch}/mlflow.db",
               "LEPTON_TEST_FRACTION": "0.0001", "TF_CPP_MIN_LOG_LEVEL": "2"}  # fmt: skip
        np.savez(f"{scratch}/train.npz", x=images[:8000], y=labels[:8000])
        done = subprocess.run([CLI, "ingest", "--run-dir", f"{scratch}/ingest", "--source",
                               f"{scratch}/train.npz"], env=env, capture_output=True, text=True, check=True)  # fmt: skip
        snapshot = json.loads(done.stdout.strip().splitlines()[-1])["snapshot_uri"]
        np.save(f"{scratch}/test_x.npy", images[-2000:])
        np.save(f"{scratch}/test_y.npy", labels[-2000:])
        for name, workers, extra in (
            ("one worker", 1, []),
            ("one worker, one batch per call", 1, ["--steps-per-execution", "1"]),
            ("two workers on loopback", 2, []),
        ):
            result, wall = train(workers, f"{scratch}/{workers}-{len(extra)}", snapshot, extra, env)
            accuracy = subprocess.run(
                [sys.executable, "-c", ACCURACY, result["model_uri"], scratch],
                env=env, capture_output=True, text=True, check=True,
            ).stdout.strip().splitlines()[-1]  # fmt: skip
            rows[name] = {
                "workers": workers,
                "wall_seconds": wall,
                "train_seconds": result["train_seconds"],
                "images_per_second": result["images_per_second"],
                "epochs": result["epochs_run"],
                "test_accuracy": float(accuracy),
                "device": result["device"],
            }
            print(f"  {name}: {rows[name]}", file=sys.stderr, flush=True)
    print(json.dumps(rows))


ACCURACY = """
import sys, numpy as np
from lepton_tasks.models import load_keras
from lepton_tasks.steps.evaluate import predict
x, y = np.load(sys.argv[2] + "/test_x.npy"), np.load(sys.argv[2] + "/test_y.npy")
print(float((predict(load_keras(sys.argv[1]), x) == y).mean()))
"""

if __name__ == "__main__":
    main()
