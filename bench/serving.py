"""`make bench-serving`: `lepton-tasks serve` against plain `mlflow models serve`, same model.

One Lepton model (the default architecture, trained 3 epochs on 2,000 real MNIST images, then
registered as champion) is served by both, side by side on loopback, one uvicorn worker each, in this run:
  - `lepton-tasks serve` (follows the champion alias; validates the body, /metrics);
  - `mlflow models serve -m models:/<name>/1 --env-manager local` (MLflow's own server).
For batches of 1 and 64 images, C client threads send the same JSON body (`{"inputs": ...}`)
over keep-alive connections; each server gets the same number of requests, in alternating
rounds. Prints requests/s and p50/p99 latency and the CPU; writes bench/serving.json. The
predictions of both servers are compared first: the same model must give the same answers.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.run import MNIST, machine  # noqa: E402

BIN = Path(sys.executable).parent
MODEL = "lepton-bench-serving"


def train_model(home: Path) -> None:
    """Ingest 2,000 MNIST images, train 3 epochs, register v1 (champion)."""
    from lepton_tasks.data.readers import open_source

    (batch,) = open_source(str(MNIST))
    images, labels = next(batch.read_chunks(2_000))
    np.savez(home / "mnist-2k.npz", x=images, y=labels)
    run = str(home / "run")
    for step, *args in (
        ("ingest", f"--source={home / 'mnist-2k.npz'}"),
        ("validate", "--no-data-docs"),
        ("train", "--epochs=3"),
        ("evaluate",),
        ("register",),
    ):
        extra = [f"--model-name={MODEL}"] if step in ("evaluate", "register") else []
        done = subprocess.run(
            [str(BIN / "lepton-tasks"), step, f"--run-dir={run}", *args, *extra],
            env=os.environ,
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode:
            sys.exit(f"{step} failed: {done.stderr[-2000:]}")
    if not json.loads(done.stdout.strip().splitlines()[-1])["promoted"]:
        sys.exit("the benchmark model was not promoted; see the register step's decision")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start(command: list[str], port: int, log: Path) -> subprocess.Popen:
    with log.open("w") as out:
        server = subprocess.Popen(command, env=os.environ, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if server.poll() is not None:
            sys.exit(f"{command[0]} exited: {log.read_text()[-2000:]}")
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        try:
            connection.request("GET", "/ping")
            # our own child must be alive: a stale server on the port would answer instead
            if connection.getresponse().status == 200 and server.poll() is None:
                return server
        except OSError:
            pass
        finally:
            connection.close()
        time.sleep(0.5)
    sys.exit(f"{command[0]} did not come up: {log.read_text()[-2000:]}")


def post(connection: http.client.HTTPConnection, body: bytes) -> bytes:
    connection.request("POST", "/invocations", body, {"Content-Type": "application/json"})
    response = connection.getresponse()
    payload = response.read()
    if response.status != 200:
        raise RuntimeError(f"{response.status}: {payload[:200]!r}")
    return payload


def load(port: int, body: bytes, requests: int, clients: int) -> dict[str, float]:
    """`requests` POSTs from `clients` threads; throughput and latency percentiles."""
    latencies: list[float] = []
    lock = threading.Lock()
    share = [requests // clients + (i < requests % clients) for i in range(clients)]

    def client(count: int) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        mine = []
        for _ in range(count):
            started = time.perf_counter()
            post(connection, body)
            mine.append(time.perf_counter() - started)
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=client, args=(n,)) for n in share]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    ordered = sorted(latencies)
    return {
        "requests": len(ordered),
        "requests_per_s": len(ordered) / elapsed,
        "p50_ms": 1000 * statistics.median(ordered),
        "p99_ms": 1000 * ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))],
    }


def same_answers(ports: dict[str, int], images: np.ndarray) -> bool:
    body = json.dumps({"inputs": images[:64, :, :, None].tolist()}).encode()
    answers = [
        np.asarray(
            json.loads(post(http.client.HTTPConnection("127.0.0.1", p), body))["predictions"]
        )
        for p in ports.values()
    ]
    return bool(np.allclose(answers[0], answers[1], atol=1e-5))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--requests", type=int, default=400, help="per server per batch size")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="lepton-bench-serving-"))
    os.environ.update(
        LEPTON_HOME=str(home),
        MLFLOW_TRACKING_URI=f"sqlite:///{home}/mlflow.db",
        TF_CPP_MIN_LOG_LEVEL="2",
        GX_ANALYTICS_ENABLED="False",
        LEPTON_SERVE_POLL_S="30",
        PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",  # mlflow runs `uvicorn` by name
    )
    train_model(home)
    ports = {"lepton serve": 5301, "mlflow models serve": 5302}
    servers = [
        start(
            [str(BIN / "lepton-tasks"), "serve", f"--model-name={MODEL}", "--port=5301"],
            5301,
            home / "lepton.log",
        ),
        start(
            [
                str(BIN / "mlflow"),
                "models",
                "serve",
                "-m",
                f"models:/{MODEL}/1",
                "--env-manager",
                "local",
                "-p",
                "5302",
                "-h",
                "127.0.0.1",
            ],
            5302,
            home / "mlflow.log",
        ),
    ]
    try:
        results = run_rounds(ports, args)
    finally:
        for server in servers:
            server.terminate()
            server.wait(30)
    report(results, args)


def run_rounds(ports: dict[str, int], args: argparse.Namespace) -> dict:
    from lepton_tasks.data.readers import open_source

    (batch,) = open_source(str(MNIST))
    images, _ = next(batch.read_chunks(64))
    results: dict = {"same_predictions": same_answers(ports, images), "batches": {}}
    for size in (1, 64):
        body = json.dumps({"inputs": images[:size, :, :, None].astype(float).tolist()}).encode()
        runs: dict[str, list[dict[str, float]]] = {name: [] for name in ports}
        for port in ports.values():
            load(port, body, 20, args.clients)  # warm-up
        count = args.requests if size == 1 else max(args.requests // 4, 40)
        for _ in range(args.rounds):
            for name, port in ports.items():
                runs[name].append(load(port, body, count, args.clients))
        results["batches"][str(size)] = {
            name: max(found, key=lambda r: r["requests_per_s"]) for name, found in runs.items()
        }
    return results


def report(results: dict, args: argparse.Namespace) -> None:
    results["machine"] = machine()
    results["clients"] = args.clients
    print(
        f"CPU: {results['machine']['cpu']}; {args.clients} clients; same predictions: "
        f"{results['same_predictions']}"
    )
    for size, by_server in results["batches"].items():
        lepton, plain = by_server["lepton serve"], by_server["mlflow models serve"]
        for name, r in by_server.items():
            print(
                f"batch {size:>2} {name:<20} {r['requests_per_s']:7.1f} req/s  "
                f"p50 {r['p50_ms']:6.1f} ms  p99 {r['p99_ms']:6.1f} ms"
            )
        ratio = lepton["requests_per_s"] / plain["requests_per_s"]
        print(f"batch {size:>2} lepton / mlflow throughput: {ratio:.2f}x")
        by_server["throughput_ratio"] = ratio
    (REPO / "bench" / "serving.json").write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
