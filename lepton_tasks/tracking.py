"""MLflow plumbing shared by the steps: connection check, experiment, nested runs, error mapping."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from lepton_tasks.errors import TrackingAccessDeniedError, TrackingUnavailableError
from lepton_tasks.redact import redact
from lepton_tasks.settings import get_settings

log = logging.getLogger(__name__)


def tracking_uri() -> str:
    return get_settings().tracking_uri


def _sqlite_path(uri: str) -> Path | None:
    if not uri.startswith("sqlite:///"):
        return None
    return Path(uri.removeprefix("sqlite:///"))


def artifact_location(uri: str) -> str | None:
    """With a SQLite store, artifacts live beside the database rather than in ./mlruns."""
    db = _sqlite_path(uri)
    return (db.parent / "mlartifacts").resolve().as_uri() if db else None


def check_tracking(uri: str | None = None) -> str:
    """Fail fast with a named error when the tracking store cannot be reached."""
    uri = uri or tracking_uri()
    db = _sqlite_path(uri)
    if db is not None:
        try:
            db.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise TrackingUnavailableError(
                f"cannot create the folder of the SQLite tracking database: {exc.strerror}",
                where=redact(uri),
            ) from exc
        if db.is_dir() or not os.access(db.parent, os.W_OK):
            raise TrackingUnavailableError(
                "the SQLite tracking database is not writable", where=redact(uri)
            )
        return uri
    parsed = urlparse(uri)
    if parsed.scheme in ("http", "https"):
        import requests

        try:
            response = requests.get(uri.rstrip("/") + "/health", timeout=5)
        except requests.RequestException as exc:
            raise TrackingUnavailableError(
                f"MLflow tracking server unreachable: {type(exc).__name__}", where=redact(uri)
            ) from exc
        if response.status_code >= 500:
            raise TrackingUnavailableError(
                f"MLflow tracking server answered HTTP {response.status_code}", where=redact(uri)
            )
        return uri
    if parsed.scheme in ("postgresql", "mysql", "mssql", "databricks") or "+" in parsed.scheme:
        return uri
    raise TrackingUnavailableError(
        "unsupported tracking URI (use sqlite:///..., http(s)://... or a database URL); MLflow 3 "
        "refuses a bare file store",
        where=redact(uri),
    )


@contextlib.contextmanager
def tracking_errors(action: str) -> Iterator[None]:
    """Turn the many ways MLflow reports an unreachable store into one named error."""
    from mlflow.exceptions import MlflowException

    try:
        yield
    except MlflowException as exc:
        text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if "error code 401" in text or "error code 403" in text:
            raise TrackingAccessDeniedError(
                f"{action}: MLflow refused the signed-in user (check the lepton_mlflow "
                f"Connection or MLFLOW_TRACKING_USERNAME, and its permissions): {text}",
                where=redact(tracking_uri()),
            ) from exc
        if any(
            word in text.lower()
            for word in ("connection", "max retries", "unable to", "operationalerror", "timed out")
        ):
            raise TrackingUnavailableError(
                f"{action}: {text}", where=redact(tracking_uri())
            ) from exc
        raise
    except ConnectionError as exc:
        raise TrackingUnavailableError(f"{action}: {exc}", where=redact(tracking_uri())) from exc


def setup(experiment_name: str | None = None) -> str:
    """Point MLflow at the configured store and return the experiment id."""
    import mlflow

    uri = check_tracking()
    mlflow.set_tracking_uri(uri)
    name = experiment_name or get_settings().experiment_name
    with tracking_errors("setting up the MLflow experiment"):
        experiment = mlflow.get_experiment_by_name(name)
        if experiment is not None:
            return experiment.experiment_id
        try:
            return mlflow.create_experiment(name, artifact_location=artifact_location(uri))
        except Exception:  # another step created it at the same moment
            experiment = mlflow.get_experiment_by_name(name)
            if experiment is None:
                raise
            return experiment.experiment_id


@functools.cache
def code_version() -> str:
    """The git commit of the code, from LEPTON_CODE_VERSION (images) or the checkout; asked
    once per process (a step asks for it for tags and cache keys alike).

    A checkout with uncommitted changes is `<commit>+<hash of the diff>`: content caches are
    keyed on it, and two different edits of the same commit must not share results.
    """
    if version := os.environ.get("LEPTON_CODE_VERSION"):
        return version
    try:
        commit = _git("rev-parse", "--short", "HEAD").strip()
        diff = _git("diff", "HEAD")  # the whole checkout: the DAG and plugins too
    except (OSError, subprocess.SubprocessError):  # an image: no git, so the source itself
        from lepton_tasks import __version__

        return f"{__version__}+src.{_source_hash()}"
    if not diff:
        return commit
    return f"{commit}+{hashlib.sha256(diff.encode()).hexdigest()[:8]}"


def _source_hash() -> str:
    """A hash of the package's own source files, for installs without git history."""
    digest = hashlib.sha256()
    package = Path(__file__).parent
    for path in sorted(package.rglob("*.py")):
        digest.update(str(path.relative_to(package)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:8]


def _git(*args: str) -> str:
    return subprocess.run(
        ["git", *args],
        capture_output=True,
        text=True,
        timeout=5,
        cwd=Path(__file__).parent,
        check=True,
    ).stdout


@contextlib.contextmanager
def step_run(
    step: str,
    parent_run_id: str | None,
    *,
    run_id: str | None = None,
    tags: dict[str, Any] | None = None,
    experiment: str | None = None,
) -> Iterator[Any]:
    """An MLflow run for one step, nested under the pipeline run when one is given."""
    import mlflow

    experiment_id = setup(experiment)
    all_tags = {"lepton.step": step, "lepton.code_version": code_version(), **(tags or {})}
    with tracking_errors(f"starting the MLflow run of step {step}"):
        if parent_run_id:
            parent = mlflow.get_run(parent_run_id)
            experiment_id = parent.info.experiment_id
            all_tags["mlflow.parentRunId"] = parent_run_id
        run = mlflow.start_run(
            run_id=run_id,
            experiment_id=None if run_id else experiment_id,
            run_name=None if run_id else step,
            tags={k: str(v) for k, v in all_tags.items()},
        )
    with run:
        yield run


def keras_requirements() -> list[str]:
    """Pinned requirements of a logged Keras model.

    Given explicitly, because MLflow's inference of them imports the model in a subprocess,
    which costs more than the training of a small model.
    """
    from importlib import metadata

    requirements = []
    for dist in ("keras", "tensorflow", "tensorflow-cpu"):
        try:
            requirements.append(f"{dist}=={metadata.version(dist)}")
        except metadata.PackageNotFoundError:
            continue
    return requirements


def log_keras_model(
    model: Any, signature: Any, input_example: Any, metadata: dict[str, Any] | None = None
) -> str:
    """`mlflow.keras.log_model` with signature and input example; returns the model URI.

    MLflow 3.17's Keras flavor writes `input_example.json` before it creates the model folder,
    so any input example fails with FileNotFoundError. Until that is fixed upstream, the folder
    is created first, for the duration of this call only.
    """
    import mlflow
    import mlflow.keras.save as keras_save

    original = keras_save._save_example

    def save_example(mlflow_model: Any, example: Any, path: str, *args: Any, **kwargs: Any) -> Any:
        os.makedirs(path, exist_ok=True)
        return original(mlflow_model, example, path, *args, **kwargs)

    keras_save._save_example = save_example
    try:
        with tracking_errors("logging the model to MLflow"):
            info = mlflow.keras.log_model(
                model,
                name="model",
                signature=signature,
                input_example=input_example,
                pip_requirements=keras_requirements(),
                metadata=metadata,
            )
    finally:
        keras_save._save_example = original
    return info.model_uri
