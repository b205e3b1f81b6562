"""`lepton-tasks`: one command per pipeline step, the entrypoint of the task container.

Each command prints its JSON result as the last stdout line and logs to stderr. Failures print
one line naming the problem and where, and exit with the code of their error class (see
`lepton_tasks.errors` and the README).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Annotated, TypeVar

import typer

from lepton_tasks import storage
from lepton_tasks.errors import EXIT_CODES, LeptonError, UsageError
from lepton_tasks.native_log import quiet_tensorflow_load
from lepton_tasks.redact import redact
from lepton_tasks.results import StepResult, read_result
from lepton_tasks.run_folder import RunFolder

R = TypeVar("R", bound=StepResult)

app = typer.Typer(
    help="Lepton pipeline steps. Each prints a JSON result as its last stdout line.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
log = logging.getLogger("lepton_tasks")

RunDir = Annotated[
    str,
    typer.Option(
        "--run-dir",
        envvar="LEPTON_RUN_DIR",
        help="The run's folder (path or URI); the step writes under <run-dir>/<step>/.",
    ),
]
SnapshotUri = Annotated[
    str | None,
    typer.Option("--snapshot", help="Snapshot URI [default: the run folder's ingest output]."),
]
ModelName = Annotated[
    str | None,
    typer.Option("--model-name", help="Registered model name [default: LEPTON_MODEL_NAME]."),
]
ParentRun = Annotated[
    str | None,
    typer.Option("--parent-run-id", help="MLflow run id of the pipeline run to nest under."),
]


# Chatty libraries: their start-up notices are not the step's log.
QUIET_LOGGERS = {
    "great_expectations": logging.WARNING,
    "alembic": logging.WARNING,
    "mlflow.store": logging.WARNING,
    "urllib3": logging.WARNING,
    "matplotlib": logging.WARNING,
    "absl": logging.WARNING,
    "mlflow.utils.environment": logging.ERROR,  # "failed to resolve pip version" in venvs without pip
    "mlflow.utils.git_utils": logging.ERROR,  # no git in the task image
}


def _setup_logging(debug: bool) -> None:
    # Under an orchestrator (LEPTON_LOG_TIMESTAMPS=0) every line is already stamped by Airflow.
    stamped = os.environ.get("LEPTON_LOG_TIMESTAMPS", "1") not in ("0", "false", "False")
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.INFO,
        stream=sys.stderr,
        format=("%(asctime)s " if stamped else "") + "%(levelname)s %(name)s: %(message)s",
    )
    for name, level in QUIET_LOGGERS.items():
        logging.getLogger(name).setLevel(level)


@app.callback()
def _main(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks for failures.")] = False,
) -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    # ...which TensorFlow's libraries ignore while they load, on some CPUs only
    quiet_tensorflow_load()
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
    os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")
    # MLflow's own log handler would print a second, differently stamped format.
    os.environ.setdefault("MLFLOW_CONFIGURE_LOGGING", "false")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
    os.environ["LEPTON_DEBUG"] = "1" if debug else os.environ.get("LEPTON_DEBUG", "")
    # A stopped task (timeout, pod eviction) gets SIGTERM: exit through the `finally` blocks,
    # so staging folders and temporary files are removed.
    signal.signal(signal.SIGTERM, _terminated)
    _setup_logging(debug)


def _terminated(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def _write_outcome(variable: str, payload: str) -> None:
    """Hand the outcome to the runtime through the file it named (LEPTON_RESULT_FILE or
    LEPTON_ERROR_FILE): a temporary file, a container path, a pod's termination log."""
    path = os.environ.get(variable)
    if not path:
        return
    try:
        storage.write_bytes(path, payload.encode())
    except Exception:  # the runtime then reports the exit code alone
        log.warning("could not write %s to %s", variable, path, exc_info=True)


def _error_record(step: str, exc: BaseException) -> dict[str, object]:
    if isinstance(exc, LeptonError):
        name, message, where, code = type(exc).__name__, exc.message, exc.where, exc.exit_code
        line = f"lepton-tasks {step}: {exc.one_line()}"
    else:  # a bug: say what it was in one line; the traceback goes to the log
        name, message, where, code = type(exc).__name__, str(exc), None, 1
        line = f"lepton-tasks {step}: unexpected {name}: {message}".replace("\n", " ")
    return {
        "step": step,
        "ok": False,
        "error": name,
        "message": redact(message)[:2000],
        "where": redact(where) if where else where,
        "exit_code": code,
        "line": redact(line)[:1000],
    }


def run_step(step: str, run_dir: str | None, action: Callable[[], StepResult]) -> None:
    """Run a step's core function and turn the outcome into the CLI contract."""
    folder = RunFolder(run_dir) if run_dir else None
    try:
        result = action()
    except Exception as exc:
        error = _error_record(step, exc)
        _write_outcome("LEPTON_ERROR_FILE", json.dumps(error))
        if not isinstance(exc, LeptonError):
            raise  # exit 1 with the traceback: a bug, not a foreseeable failure
        if folder:
            try:
                folder.save_error(step, error)
            except Exception:  # the folder may be the very thing that is broken
                log.debug("could not write error.json", exc_info=True)
        if os.environ.get("LEPTON_DEBUG"):
            log.exception("step failed")
        print(error["line"], file=sys.stderr, flush=True)
        raise typer.Exit(exc.exit_code) from None
    if folder:
        folder.clear_error(step)  # an earlier failed try of this step
    payload = result.to_json()
    _write_outcome("LEPTON_RESULT_FILE", payload)
    sys.stderr.flush()
    print(payload, flush=True)


def upstream(uri: str | None, run_dir: str, step: str, model: type[R]) -> R:
    """An upstream step's result: from the URI given, else the one the run folder keeps.

    The orchestrator always passes the URI; the fallback is for running steps by hand.
    """
    return read_result(uri or RunFolder(run_dir).result_uri(step), model)


@app.command()
def ingest(
    run_dir: RunDir,
    source: Annotated[
        str,
        typer.Option(
            help="Dataset URI: sklearn:digits, an IDX folder or file(s) 'images,labels', "
            ".npz (x, y), .parquet (image, label), or a landing-zone folder of batches."
        ),
    ] = "sklearn:digits",
    fmt: Annotated[
        str,
        typer.Option(
            "--format",
            help="auto|sklearn|idx|npz|parquet|csv|tfrecord|images (auto: from the URI).",
        ),
    ] = "auto",
    classes: Annotated[
        str | None,
        typer.Option(
            help="Comma-separated class names [default: LEPTON_CLASSES, else read from the "
            "labels: numbers in numeric order, names in alphabetical order]."
        ),
    ] = None,
    when_empty: Annotated[
        str,
        typer.Option(
            help="fail|skip: a landing-zone folder that is missing or empty fails (exit 3), "
            "or is a skip (exit 10, NothingToIngestError) for scheduled runs."
        ),
    ] = "fail",
    as_of: Annotated[
        str | None,
        typer.Option(
            help="ISO date-time (UTC if no zone): read only the landing-zone batches landed "
            "by then (the date in their name, else their modification time). The DAG passes "
            "the run's logical date, so a backfill sees each night's data."
        ),
    ] = None,
) -> None:
    """Read a labeled image dataset into a normalized, content-addressed snapshot."""
    from lepton_tasks.steps.ingest import ingest as ingest_step

    class_names = [c.strip() for c in classes.split(",")] if classes else None
    run_step(
        "ingest",
        run_dir,
        lambda: ingest_step(
            source, run_dir, fmt, class_names, when_empty=when_empty, as_of=parse_as_of(as_of)
        ),
    )


def parse_as_of(text: str | None) -> datetime | None:
    """An ISO date-time; naive means UTC. Empty means now (every batch)."""
    if not text:
        return None
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as exc:
        raise UsageError(f"--as-of: not an ISO date-time: {text!r}") from exc
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


@app.command()
def validate(
    run_dir: RunDir,
    snapshot: SnapshotUri = None,
    reference: Annotated[
        str | None,
        typer.Option(
            help="Reference snapshot URI for drift checks, or 'champion' for the snapshot the "
            "current champion was trained on (skipped when there is none)."
        ),
    ] = None,
    model_name: ModelName = None,
    data_docs: Annotated[bool, typer.Option(help="Build the HTML Data Docs.")] = True,
) -> None:
    """Check a snapshot with the Great Expectations suite (and drift against a reference)."""
    from lepton_tasks.results import IngestResult
    from lepton_tasks.steps.validate import validate as validate_step

    def action() -> StepResult:
        snapshot_uri = snapshot or upstream(None, run_dir, "ingest", IngestResult).snapshot_uri
        return validate_step(snapshot_uri, run_dir, reference, data_docs, model_name=model_name)

    run_step("validate", run_dir, action)


STEPS_PER_EXECUTION = "Batches per compiled call (1 with several workers)."
STEPS_PER_EPOCH = (
    "Batches per epoch, cycling through the data [default: one pass over the train split]."
)
BATCH_SIZE = "Examples per step (with several workers: across all of them)."
MIXED_PRECISION = (
    "auto (on with a GPU), on or off: float16 on GPUs, bfloat16 on CPUs (native with AMX or "
    "AVX-512 BF16, emulated and slower elsewhere)."
)
AUGMENT = (
    "none (default), shift-rotate, or shift-rotate-flip (where a mirrored image is the same "
    "class): seeded random shifts, rotations and flips while training."
)
FORCE_RETRAIN = (
    "Train even if an earlier run trained the same data, params and code (otherwise its result "
    "is reused)."
)


@app.command()
def train(
    run_dir: RunDir,
    architecture: Annotated[
        str,
        typer.Option(
            help="lepton_cnn (default), seed_cnn, an installed lepton.models entry point "
            "(`lepton-tasks models`), or module:function returning an uncompiled keras.Model."
        ),
    ] = "lepton_cnn",
    epochs: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Epochs, spanned by the learning-rate schedule [default: enough for 500 "
            "optimizer steps, at least 5].",
        ),
    ] = None,
    batch_size: Annotated[int, typer.Option(min=1, help=BATCH_SIZE)] = 64,
    learning_rate: Annotated[
        float | None, typer.Option(help="Peak learning rate [default: the model's own].")
    ] = None,
    patience: Annotated[int, typer.Option(min=1, help="Early-stopping patience in epochs.")] = 3,
    seed: Annotated[int, typer.Option(envvar="LEPTON_SEED")] = 42,
    snapshot: SnapshotUri = None,
    mixed_precision: Annotated[str, typer.Option(help=MIXED_PRECISION)] = "auto",
    jit_compile: Annotated[
        str, typer.Option(help="XLA: auto (Keras decides), on or off.")
    ] = "auto",
    deterministic: Annotated[bool, typer.Option(help="Deterministic ops (slower).")] = False,
    steps_per_execution: Annotated[int, typer.Option(min=1, help=STEPS_PER_EXECUTION)] = 32,
    steps_per_epoch: Annotated[int | None, typer.Option(min=1, help=STEPS_PER_EPOCH)] = None,
    augment: Annotated[str, typer.Option(help=AUGMENT)] = "none",
    force_retrain: Annotated[bool, typer.Option(help=FORCE_RETRAIN)] = False,
    parent_run_id: ParentRun = None,
) -> None:
    """Train a Keras model on the snapshot; resumes from the last epoch when re-run."""
    from lepton_tasks.distributed import cluster_from_env, is_other_worker
    from lepton_tasks.results import IngestResult
    from lepton_tasks.steps.train import TrainParams, train_worker
    from lepton_tasks.steps.train import train as train_step

    options = locals()  # the options that are TrainParams' fields, by their names
    params = TrainParams(**{name: options[name] for name in TrainParams.model_fields})

    def action() -> StepResult:
        snapshot_uri = snapshot or upstream(None, run_dir, "ingest", IngestResult).snapshot_uri
        cluster = cluster_from_env()  # TF_CONFIG: one of several workers
        if not cluster.is_chief:
            return train_worker(snapshot_uri, run_dir, params, cluster)
        return train_step(
            snapshot_uri, run_dir, params, parent_run_id, force=force_retrain, cluster=cluster
        )

    # a worker other than the chief leaves the run folder (its result and error) to the chief
    worker = is_other_worker()
    run_step("train-worker" if worker else "train", None if worker else run_dir, action)


@app.command()
def evaluate(
    run_dir: RunDir,
    training: Annotated[
        str | None,
        typer.Option(help="URI of train's result.json [default: the run folder's]."),
    ] = None,
    model_name: ModelName = None,
    min_improvement: Annotated[
        float | None,
        typer.Option(help="Needed gain over the champion [default: LEPTON_MIN_IMPROVEMENT]."),
    ] = None,
    floor: Annotated[
        float | None, typer.Option(help="Absolute floor [default: LEPTON_ACCURACY_FLOOR].")
    ] = None,
    force_promotion_reason: Annotated[
        str | None, typer.Option(help="Promote regardless of the gate, recording this reason.")
    ] = None,
    snapshot: Annotated[
        str | None, typer.Option(help="Snapshot URI [default: the one the model trained on].")
    ] = None,
    model_uri: Annotated[
        str | None, typer.Option(help="Keras model file URI [default: train's model.keras].")
    ] = None,
    parent_run_id: ParentRun = None,
) -> None:
    """Score the candidate and the champion on the test split and decide on promotion."""
    from lepton_tasks.results import TrainResult
    from lepton_tasks.steps.evaluate import EvaluateParams
    from lepton_tasks.steps.evaluate import evaluate as evaluate_step

    def action() -> StepResult:
        trained = upstream(training, run_dir, "train", TrainResult)
        overrides = {"snapshot_uri": snapshot, "model_uri": model_uri}
        trained = trained.model_copy(update={k: v for k, v in overrides.items() if v})
        params = EvaluateParams.with_defaults(
            model_name=model_name,
            min_improvement=min_improvement,
            floor=floor,
            force_reason=force_promotion_reason,
        )
        return evaluate_step(trained, run_dir, params, parent_run_id)

    run_step("evaluate", run_dir, action)


@app.command()
def register(
    run_dir: RunDir,
    evaluation: Annotated[
        str | None,
        typer.Option(help="URI of evaluate's result.json [default: the run folder's]."),
    ] = None,
    validation: Annotated[
        str | None,
        typer.Option(help="URI of validate's result.json [default: the run folder's, if any]."),
    ] = None,
    model_name: ModelName = None,
    parent_run_id: ParentRun = None,
) -> None:
    """Register the model with lineage tags; set challenger, and champion when promoted."""
    from lepton_tasks.results import EvaluateResult, ValidateResult
    from lepton_tasks.steps.register import register as register_step

    def action() -> StepResult:
        evaluated = upstream(evaluation, run_dir, "evaluate", EvaluateResult)
        validated = (
            upstream(validation, run_dir, "validate", ValidateResult)
            if validation or storage.exists(RunFolder(run_dir).result_uri("validate"))
            else None
        )
        return register_step(evaluated, run_dir, validated, model_name, parent_run_id)

    run_step("register", run_dir, action)


@app.command()
def rollback(
    run_dir: RunDir,
    version: Annotated[str, typer.Option(help="The version to make champion again.")],
    reason: Annotated[str, typer.Option(help="Why: recorded in the promotion history.")],
    model_name: ModelName = None,
    who: Annotated[str, typer.Option(envvar="USER", help="Who rolls back.")] = "unknown",
    expected_champion: Annotated[
        str | None,
        typer.Option(
            help="Refuse (exit 12) unless the champion is still this version ('' for none) "
            "[default: whichever it is]."
        ),
    ] = None,
) -> None:
    """Move the champion alias back to an earlier version, recording who and why."""
    from lepton_tasks.registry import NO_EXPECTATION
    from lepton_tasks.registry import rollback as rollback_step

    expected = NO_EXPECTATION if expected_champion is None else expected_champion
    run_step(
        "rollback",
        run_dir,
        lambda: rollback_step(model_name, version, reason, who, run_dir, expected),
    )


@app.command("models")
def models() -> None:
    """List the architectures train can use: Lepton's own and installed entry points."""
    from lepton_tasks.model_catalog import installed_models

    found = installed_models()
    for name, target in found.items():
        typer.echo(f"{name}\t{target}", err=True)
    typer.echo(json.dumps(found))


@app.command("pipeline-start")
def pipeline_start(
    dag_id: Annotated[str, typer.Option(help="The orchestrating DAG's id.")],
    dag_run_id: Annotated[str, typer.Option(help="The DAG run's id.")],
    logical_date: Annotated[str | None, typer.Option()] = None,
    dag_version: Annotated[str | None, typer.Option()] = None,
    params_json: Annotated[str, typer.Option("--params", help="The run's params as JSON.")] = "{}",
    run_type: Annotated[
        str | None, typer.Option(help="manual, scheduled, backfill, asset_triggered.")
    ] = None,
    run_dir: Annotated[
        str | None,
        typer.Option(
            "--run-dir", help="Run folder [default: <artifact root>/<dag id>/<dag run id>]."
        ),
    ] = None,
) -> None:
    """Open the MLflow pipeline run for an orchestrator run (reused on retries)."""
    from lepton_tasks.pipeline_run import start

    def action() -> StepResult:
        params = _params(params_json)
        return start(dag_id, dag_run_id, logical_date, dag_version, params, run_dir, run_type)

    run_step("pipeline-start", run_dir, action)


def _params(params_json: str) -> dict[str, object]:
    try:
        params = json.loads(params_json or "{}")
    except json.JSONDecodeError as exc:
        raise UsageError(f"--params is not JSON: {exc}") from exc
    if not isinstance(params, dict):
        raise UsageError("--params must be a JSON object")
    return params


@app.command("check-inputs")
def check_inputs(
    run_dir: RunDir,
    snapshot_id: Annotated[str, typer.Option(help="The content id of the ingested snapshot.")],
    params_json: Annotated[str, typer.Option("--params", help="The run's params as JSON.")] = "{}",
) -> None:
    """Say whether an earlier successful run had the same data, params, code and champion."""
    from lepton_tasks.unchanged import check_inputs as check

    run_step("check-inputs", run_dir, lambda: check(snapshot_id, run_dir, _params(params_json)))


@app.command("pipeline-end")
def pipeline_end(
    run_dir: RunDir,
    parent_run_id: Annotated[str, typer.Option(help="The pipeline's MLflow run id.")],
    steps: Annotated[
        str,
        typer.Option(help="The pipeline's steps, in order, comma-separated: their outcome."),
    ],
) -> None:
    """Close the MLflow pipeline run with the outcome of its steps, from the run folder."""
    from lepton_tasks.pipeline_run import end

    names = [s.strip() for s in steps.split(",") if s.strip()]
    run_step("pipeline-end", run_dir, lambda: end(run_dir, parent_run_id, names))


@app.command("simulate-landing")
def simulate_landing(
    landing: Annotated[str, typer.Option(help="Landing-zone folder URI.")],
    source: Annotated[str, typer.Option(help="Dataset to deal into batches.")] = "sklearn:digits",
    batches: Annotated[int, typer.Option(min=1, help="How many dated batches in all.")] = 3,
    take: Annotated[int, typer.Option(min=1, help="How many of them are present.")] = 1,
    start_date: Annotated[str, typer.Option(help="Date of the first batch.")] = "2026-01-01",
    corrupt: Annotated[
        str | None, typer.Option(help="Add a bad batch: skewed, blank, duplicates or truncated.")
    ] = None,
    seed: Annotated[int, typer.Option()] = 0,
    run_dir: Annotated[str | None, typer.Option("--run-dir")] = None,
) -> None:
    """Deal a dataset into dated landing-zone batches, optionally with a corrupt one."""
    from datetime import date

    from lepton_tasks.landing_simulator import simulate_landing as simulate

    def action() -> StepResult:
        try:
            first = date.fromisoformat(start_date)
        except ValueError as exc:
            raise UsageError(f"--start-date is not a date: {start_date}") from exc
        folder = run_dir or storage.join(landing, "_simulator")
        return simulate(source, landing, folder, batches, take, first, corrupt, seed)

    run_step("simulate-landing", run_dir, action)


@app.command("model-info")
def model_info(model_name: ModelName = None) -> None:
    """Show the registered model: versions, aliases, metrics, lineage, promotion history."""
    from lepton_tasks.registry import describe_model

    def action() -> StepResult:
        info = describe_model(model_name)
        print(info.summary(), file=sys.stderr)
        return info

    run_step("model-info", None, action)


@app.command("exit-codes")
def exit_codes() -> None:
    """List the exit codes and the failure each one means."""
    print(json.dumps({"ok": 0, **EXIT_CODES, "unexpected": 1}))


def main() -> None:
    from lepton_tasks import cli_production  # noqa: F401  registers score, serve, monitor

    app()


if __name__ == "__main__":
    main()
