"""`make bench-containers`: image build times and sizes, and what a container start costs a step.

Needs a Docker engine (`scripts/containers/engine.sh start`) and the base that
`scripts/containers/base-image.sh` picks. Builds each image from scratch (`--no-cache`, so a
layer cache from an earlier build does not flatter it), then runs the same steps as a local
process and as a container of `lepton/task`, interleaved (local, container, local, ...), with
the same hardening the docker runtime uses. Writes bench/containers.json; bench/report.py turns
it into a section of bench/RESULTS.md. No test asserts on these numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
IMAGES = {
    "task (CPU)": ("docker/task.Dockerfile", "lepton/task:0.2.0", {"TF_EXTRA": "cpu"}),
    "task (GPU)": ("docker/task.Dockerfile", "lepton/task-gpu:0.2.0", {"TF_EXTRA": "gpu"}),
    "mlflow": ("docker/mlflow.Dockerfile", "lepton/mlflow:0.2.0", {}),
}
# The step containers' options in the docker runtime (plugins/lepton_airflow/runtimes/docker_container.py).
HARDENING = ["--read-only", "--cap-drop", "ALL", "--security-opt", "no-new-privileges"]


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return f"{line.split(':', 1)[1].strip()}, {os.cpu_count()} cores"
    return platform.processor()


def build(base: str, dockerfile: str, tag: str, args: dict[str, str]) -> dict:
    build_args = [f"--build-arg=BASE_IMAGE={base}"] + [
        f"--build-arg={k}={v}" for k, v in args.items()
    ]
    started = time.perf_counter()
    subprocess.run(
        ["docker", "build", "-q", "--no-cache", "--network", "host", *build_args,
         "-f", dockerfile, "-t", tag, "."],
        cwd=REPO, check=True, capture_output=True, env={**os.environ, "DOCKER_BUILDKIT": "0"},
    )  # fmt: skip
    seconds = time.perf_counter() - started
    size = int(subprocess.check_output(["docker", "image", "inspect", "-f", "{{.Size}}", tag]))
    return {"image": tag, "build_s": round(seconds, 1), "size_mib": round(size / 2**20)}


def timed(command: list[str], env: dict[str, str] | None = None) -> float:
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"{command[:4]} failed: {done.stderr[-2000:]}")
    return time.perf_counter() - started


def step_costs(repeats: int) -> dict:
    """Each step as a local process vs a container; same arguments, same data, interleaved."""
    volume = f"lepton-bench-{uuid.uuid4().hex[:8]}"
    subprocess.run(["docker", "volume", "create", volume], check=True, capture_output=True)
    home = Path(tempfile.mkdtemp(prefix="lepton-bench-"))
    steps = {
        "exit-codes (start-up only)": ["exit-codes"],
        "ingest sklearn:digits": ["ingest", "--source", "sklearn:digits", "--run-dir", "{root}/r"],
        "validate": ["validate", "--run-dir", "{root}/r", "--no-data-docs"],
    }
    local_env = {**os.environ, "LEPTON_HOME": str(home), "LEPTON_LOG_TIMESTAMPS": "0"}
    rows = {}
    try:
        for name, args in steps.items():
            local, container = [], []
            for _ in range(repeats):
                local.append(
                    timed(
                        [str(BIN / "lepton-tasks"), *(a.format(root=home) for a in args)],
                        local_env,
                    )
                )
                container.append(
                    timed(
                        ["docker", "run", "--rm", "--network", "none", *HARDENING,
                         "--tmpfs", "/tmp", "-v", f"{volume}:/opt/lepton",
                         "-e", "LEPTON_LOG_TIMESTAMPS=0", "lepton/task:0.2.0",
                         *(a.format(root="/opt/lepton") for a in args)]
                    )
                )  # fmt: skip
            rows[name] = {
                "local_s": [round(s, 2) for s in local],
                "container_s": [round(s, 2) for s in container],
                "local_median_s": round(statistics.median(local), 2),
                "container_median_s": round(statistics.median(container), 2),
            }
    finally:
        subprocess.run(["docker", "volume", "rm", "-f", volume], capture_output=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--base", required=True, help="BASE_IMAGE for the builds")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--skip-gpu", action="store_true", help="skip the GPU task image")
    options = parser.parse_args()
    images = {}
    for name, (dockerfile, tag, args) in IMAGES.items():
        if options.skip_gpu and "GPU" in name:
            continue
        print(f"building {tag} ...", flush=True)
        images[name] = build(options.base, dockerfile, tag, args)
        print(f"  {images[name]}", flush=True)
    results = {
        "machine": {
            "cpu": cpu_model(),
            "docker": subprocess.check_output(
                ["docker", "version", "--format", "{{.Server.Version}}"], text=True
            ).strip(),
            "storage_driver": subprocess.check_output(
                ["docker", "info", "--format", "{{.Driver}}"], text=True
            ).strip(),
            "base": options.base,
            "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        },
        "images": images,
        "steps": step_costs(options.repeats),
        "repeats": options.repeats,
    }
    (REPO / "bench" / "containers.json").write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results["steps"], indent=2))
    from bench.report import write_report

    write_report(
        json.loads((REPO / "bench" / "results.json").read_text()), REPO / "bench" / "RESULTS.md"
    )


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    main()
