"""`make bench`: every contender side by side, same machine, same data, medians of 3 runs.

Writes bench/RESULTS.md. Contenders run in fresh processes, interleaved (a, b, c, a, b, c, ...),
so a slow patch of the machine hits all of them alike. No test asserts on these numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
MNIST = REPO.parent / "shared" / "data" / "mnist"


def sh(cmd: list[str], env: dict[str, str] | None = None) -> tuple[float, str, int]:
    """Run a command; return (wall seconds, stdout, peak RSS of the child in MiB)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    started = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **(env or {})})
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return wall, done.stdout, max(peak, before) // 1024


def peak_rss_mib(cmd: list[str], env: dict[str, str]) -> tuple[float, str, float]:
    """Wall time and the peak RSS of this one command, via GNU time if present."""
    gnu_time = shutil.which("time") or "/usr/bin/time"
    if Path(gnu_time).exists():
        with tempfile.NamedTemporaryFile("r", suffix=".txt") as report:
            wall, out, _ = sh([gnu_time, "-f", "%M", "-o", report.name, *cmd], env)
            return wall, out, int(report.read().strip().splitlines()[-1]) / 1024
    wall, out, peak = sh(cmd, env)
    return wall, out, float(peak)


def median(values: list[float]) -> float:
    return statistics.median(values)


# 1. Time to accuracy ---------------------------------------------------------------------------


CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_flags() -> set[str]:
    with open("/proc/cpuinfo") as info:
        for line in info:
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    return set()


def levers() -> dict[str, dict]:
    """Lepton's train step with one setting changed: each lever's effect, same seed."""
    chosen = {
        "XLA on CPU (--jit-compile on)": {"jit_compile": "on"},
        "batch 128 (--batch-size 128)": {"batch_size": 128},
        "one batch per graph call (--steps-per-execution 1)": {"steps_per_execution": 1},
        "twice the schedule (--epochs 10)": {"epochs": 10},
        "the previous default model (BatchNorm in both blocks)": {
            "architecture": "contenders:previous_lepton_cnn",
            "learning_rate": 3e-3,  # its own rate (a module:function model gets 1e-3)
        },
    }
    if cpu_flags() & set(CPU_BF16_FLAGS):
        chosen["mixed precision, bfloat16 on oneDNN (--mixed-precision on)"] = {
            "mixed_precision": "on"
        }
    return chosen


def contender(name: str, seed: int, overrides: dict | None = None) -> dict:
    _, out, _ = sh(
        [sys.executable, str(REPO / "bench" / "contenders.py"), name],
        {"BENCH_SEED": str(seed), "BENCH_TRAIN_PARAMS": json.dumps(overrides or {})},
    )
    return json.loads(out.strip().splitlines()[-1])


def time_to_accuracy(repeats: int, article: bool) -> dict:
    names = ["keras_convnet", "lepton"] + (["article_recipe"] if article else [])
    runs: dict[str, list[dict]] = {name: [] for name in names}
    for repeat in range(repeats):
        for name in runs:
            result = contender(name, repeat + 1)
            print(f"  {name} #{repeat + 1}: {result}", flush=True)
            runs[name].append(result)
    lever_runs = {}
    for label, overrides in levers().items():
        lever_runs[label] = {"overrides": overrides, **contender("lepton", 1, overrides)}
        print(f"  lever {label}: {lever_runs[label]}", flush=True)
    summary = {
        name: {
            key: median([r[key] for r in results])
            for key in ("train_seconds", "images_per_second", "test_accuracy")
        }
        for name, results in runs.items()
    }
    flags = sorted(cpu_flags() & {"avx2", "avx512f", *CPU_BF16_FLAGS})
    return {"runs": runs, "median": summary, "levers": lever_runs, "cpu_flags": flags}


# 2. Orchestration overhead ---------------------------------------------------------------------


SINGLE_PROCESS = """
import json, sys, time
t0 = time.perf_counter(); times = {}
from lepton_tasks.pipeline_run import start, end
from lepton_tasks.steps.ingest import ingest
from lepton_tasks.steps.validate import validate
from lepton_tasks.steps.train import train
from lepton_tasks.steps.evaluate import evaluate
from lepton_tasks.steps.register import register
from lepton_tasks.unchanged import check_inputs
times["imports"] = time.perf_counter() - t0
source, run_dir = sys.argv[1], sys.argv[2]
def timed(name, fn, *a, **k):
    t = time.perf_counter(); r = fn(*a, **k); times[name] = time.perf_counter() - t; return r
s = timed("pipeline_start", start, "single_process", "bench", run_dir=run_dir)
i = timed("ingest", ingest, source, run_dir)
timed("check_inputs", check_inputs, i.snapshot_id, run_dir, {})
v = timed("validate", validate, i.snapshot_uri, run_dir, reference_uri="champion")
t = timed("train", train, v.snapshot_uri, run_dir, parent_run_id=s.mlflow_run_id)
e = timed("evaluate", evaluate, t, run_dir, parent_run_id=s.mlflow_run_id)
timed("register", register, e, run_dir, v, parent_run_id=s.mlflow_run_id)
timed("pipeline_end", end, run_dir, s.mlflow_run_id, ["ingest", "validate", "train", "evaluate", "register"])
times["total_in_process"] = time.perf_counter() - t0
print(json.dumps(times))
"""

TASK_DURATIONS = """
import json
from airflow.models import DagRun, TaskInstance
from airflow.utils.session import create_session
with create_session() as s:
    run = s.query(DagRun).filter(DagRun.dag_id == "lepton_training").order_by(DagRun.id.desc()).first()
    tis = s.query(TaskInstance).filter(TaskInstance.run_id == run.run_id).all()
    took = (run.end_date - run.start_date).total_seconds()
    print(json.dumps({"state": str(run.state), "dag_run": took, **{t.task_id: t.duration for t in tis}}))
"""


def prepare_landing(root: Path) -> Path:
    landing = root / "landing"
    landing.mkdir(parents=True)
    from lepton_tasks.data.readers import open_source

    (batch,) = open_source(str(MNIST))
    images, labels = next(batch.read_chunks(20_000))
    np.savez(landing / "batch-0001.npz", x=images[:8000], y=labels[:8000])
    return landing


def orchestration_overhead(repeats: int) -> dict:
    rows = []
    for repeat in range(repeats):
        with tempfile.TemporaryDirectory() as scratch:
            root = Path(scratch)
            landing = prepare_landing(root)
            single_env = {
                "LEPTON_HOME": str(root / "single"),
                "MLFLOW_TRACKING_URI": f"sqlite:///{root}/single/mlflow.db",
            }
            (root / "single").mkdir()
            single_wall, out, _ = sh(
                [sys.executable, "-c", SINGLE_PROCESS, str(landing), str(root / "single-run")],
                single_env,
            )
            single = json.loads(out.strip().splitlines()[-1])

            dag_wall, tasks = dag_run(landing, root / "dag")
            # the lever, side by side: evaluate loading the Keras model (TensorFlow) instead
            keras_wall, keras_tasks = dag_run(
                landing, root / "dag-keras", {"LEPTON_LITERT_COPY": "false"}
            )
            row = {
                "single_wall": single_wall,
                "dag_wall": dag_wall,
                "single": single,
                "tasks": tasks,
                "dag_keras_wall": keras_wall,
                "tasks_keras": keras_tasks,
            }
            print(
                f"  overhead #{repeat + 1}: dag {dag_wall:.1f}s (run {tasks['dag_run']:.1f}s) "
                f"evaluate with Keras {keras_wall:.1f}s, single {single_wall:.1f}s",
                flush=True,
            )
            rows.append(row)
    return {"runs": rows, "import_costs": import_costs()}


def dag_run(
    landing: Path, home: Path, extra_env: dict[str, str] | None = None
) -> tuple[float, dict]:
    """`airflow dags test lepton_training` in a fresh Airflow and MLflow home: wall, task times."""
    dag_env = {
        "LEPTON_HOME": str(home),
        "MLFLOW_TRACKING_URI": f"sqlite:///{home}/mlflow.db",
        "AIRFLOW_HOME": str(home / "airflow"),
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "LEPTON_LANDING_URI": str(landing),
        "PATH": f"{BIN}:{os.environ['PATH']}",
        **(extra_env or {}),
    }
    sh([str(BIN / "airflow"), "db", "migrate"], dag_env)
    # a logical date after the batch landed: the DAG reads what had landed by then
    logical_date = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S+00:00")
    wall, _, _ = sh(
        [str(BIN / "airflow"), "dags", "test", "lepton_training", logical_date], dag_env
    )
    _, out, _ = sh([sys.executable, "-c", TASK_DURATIONS], dag_env)
    tasks = json.loads(out.strip().splitlines()[-1])
    if any(not tasks.get(step) for step in ("validate", "train", "evaluate", "register")):
        raise RuntimeError(f"the DAG run skipped or failed a step: {tasks}")
    return wall, tasks


def import_costs() -> dict[str, float]:
    costs = {}
    for module in ("lepton_tasks.cli", "mlflow", "great_expectations", "tensorflow", "airflow.sdk"):
        walls = [sh([sys.executable, "-c", f"import {module}"])[0] for _ in range(3)]
        costs[module] = median(walls)
    costs["python -c pass"] = median([sh([sys.executable, "-c", "pass"])[0] for _ in range(3)])
    return costs


# 3. Scale --------------------------------------------------------------------------------------


def write_tiled_idx(folder: Path, n: int, seed: int = 0) -> Path:
    """The real 10,000 images tiled to n, each copy with fresh noise so no two are alike."""
    from lepton_tasks.data.readers import open_source

    (batch,) = open_source(str(MNIST))
    images, labels = next(batch.read_chunks(20_000))
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    with (
        open(folder / "tiled-images-idx3-ubyte", "wb") as x_out,
        open(folder / "tiled-labels-idx1-ubyte", "wb") as y_out,
    ):
        x_out.write(struct.pack(">iiii", 0x803, n, 28, 28))
        y_out.write(struct.pack(">ii", 0x801, n))
        for start in range(0, n, len(images)):
            k = min(len(images), n - start)
            noise = rng.integers(0, 3, size=(k, 28, 28), dtype=np.int16)
            tile = np.clip(images[:k].astype(np.int16) + noise, 0, 255).astype(np.uint8)
            x_out.write(tile.tobytes())
            y_out.write(labels[:k].astype(np.uint8).tobytes())
    return folder


def train_memory(cli: str, root: Path, env: dict[str, str], steps: int) -> dict:
    """The train step (streaming) and the split-in-memory way, same steps: peak MiB, images/s."""
    from lepton_tasks.results import IngestResult, read_result
    from lepton_tasks.run_folder import RunFolder

    snapshot = read_result(RunFolder(str(root / "run")).result_uri("ingest"), IngestResult)
    env = {**env, "MLFLOW_TRACKING_URI": f"sqlite:///{root}/home/mlflow.db"}
    _, out, stream_mib = peak_rss_mib(
        [cli, "train", "--run-dir", str(root / "run"), "--epochs", "1", "--seed", "1",
         "--steps-per-epoch", str(steps)],
        env,
    )  # fmt: skip
    streamed = json.loads(out.strip().splitlines()[-1])
    _, out, memory_mib = peak_rss_mib(
        [sys.executable, str(REPO / "bench" / "train_memory.py"), "in_memory",
         snapshot.snapshot_uri, str(steps)],
        env,
    )  # fmt: skip
    loaded = json.loads(out.strip().splitlines()[-1])
    return {
        "train_steps": steps,
        "train_peak_mib": stream_mib,
        "train_images_per_second": streamed["images_per_second"],
        "in_memory_peak_mib": memory_mib,
        "in_memory_images_per_second": loaded["images_per_second"],
    }


def scale(sizes: list[int], train_steps: int) -> list[dict]:
    rows = []
    for n in sizes:
        with tempfile.TemporaryDirectory() as scratch:
            root = Path(scratch)
            source = write_tiled_idx(root / "data", n)
            env = {"LEPTON_HOME": str(root / "home"), "LEPTON_MAX_DUPLICATE_RATE": "0.05"}
            cli = str(BIN / "lepton-tasks")
            ingest_s, _, ingest_mib = peak_rss_mib(
                [cli, "ingest", "--run-dir", str(root / "run"), "--source", str(source)], env
            )
            validate_s, _, validate_mib = peak_rss_mib(
                [cli, "validate", "--run-dir", str(root / "run"), "--no-data-docs"], env
            )
            row = {
                "examples": n,
                "ingest_seconds": ingest_s,
                "ingest_peak_mib": ingest_mib,
                "validate_seconds": validate_s,
                "validate_peak_mib": validate_mib,
                **train_memory(cli, root, env, train_steps),
            }
            print(f"  scale {n}: {row}", flush=True)
            rows.append(row)
    return rows


# Report ----------------------------------------------------------------------------------------


def machine() -> dict[str, str]:
    cpu = "unknown"
    with open("/proc/cpuinfo") as info:
        for line in info:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    from importlib.metadata import version

    return {
        "cpu": f"{cpu}, {os.cpu_count()} cores",
        "python": platform.python_version(),
        "tensorflow": version("tensorflow-cpu"),
        "keras": version("keras"),
        "airflow": version("apache-airflow"),
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--only",
        choices=["accuracy", "overhead", "scale", "multiworker", "serving"],
        action="append",
    )
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--train-steps", type=int, default=300, help="train batches in scale")
    parser.add_argument(
        "--article", action="store_true", help="also the article's recipe (~4 min a run)"
    )
    parser.add_argument("--out", default=str(REPO / "bench" / "results.json"))
    args = parser.parse_args()
    parts = args.only or ["accuracy", "overhead", "scale", "multiworker", "serving"]
    results: dict = {"machine": machine(), "repeats": args.repeats}
    if Path(args.out).exists():
        results = {**json.loads(Path(args.out).read_text()), **results}
    if "accuracy" in parts:
        print("time to accuracy", flush=True)
        results["accuracy"] = time_to_accuracy(args.repeats, args.article)
    if "overhead" in parts:
        print("orchestration overhead", flush=True)
        results["overhead"] = orchestration_overhead(args.repeats)
    if "scale" in parts:
        print("scale", flush=True)
        results["scale"] = scale([int(s) for s in args.sizes.split(",")], args.train_steps)
    if "multiworker" in parts:
        print("multi-worker training", flush=True)
        _, out, _ = sh([sys.executable, str(REPO / "bench" / "multi_worker.py")])
        results["multiworker"] = json.loads(out.strip().splitlines()[-1])
    Path(args.out).write_text(json.dumps(results, indent=2))
    if "serving" in parts:  # its own script: it trains a model and starts two servers
        print("serving", flush=True)
        subprocess.run([sys.executable, str(REPO / "bench" / "serving.py")], check=True)
    from bench.report import write_report

    write_report(results, REPO / "bench" / "RESULTS.md")


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    main()
