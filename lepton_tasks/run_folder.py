"""The layout of a run folder: the one place that knows where a step's files are.

A run folder holds one pipeline run's outputs, one sub-folder per step:

    <run>/ingest/result.json          names the snapshot (content-addressed, outside the run)
    <run>/validate/summary.json       every expectation with its observed value
    <run>/validate/data_docs/         Great Expectations' HTML report
    <run>/train/model.keras           the trained model; backup/<key>/, params.json, mlflow_run_id
    <run>/evaluate/confusion_matrix.png
    <run>/<step>/result.json          the step's result (what the CLI prints)
    <run>/<step>/error.json           the step's error record, while its last try failed

Steps write their outputs here; they read another step's output only through an argument (the
URI the upstream result names), never by guessing a path in this folder.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any, TypeVar

from pydantic import BaseModel

from lepton_tasks import storage

R = TypeVar("R", bound=BaseModel)


class RunFolder:
    """Paths inside one run folder, and the result and error files of its steps."""

    def __init__(self, uri: str) -> None:
        self.uri = uri

    @classmethod
    def for_orchestrator_run(cls, root: str, dag_id: str, run_id: str) -> RunFolder:
        """`<root>/<dag id>/<run id>`, the run id made safe as a folder name.

        A run id that had to be changed gets a hash of the original, so two ids that differ only
        in unsafe characters (`a:b`, `a_b`) never share a folder.
        """
        safe = re.sub(r"[^A-Za-z0-9._-]+", "_", run_id).strip("_.") or "run"
        if safe != run_id:
            safe = f"{safe}-{hashlib.sha256(run_id.encode()).hexdigest()[:8]}"
        return cls(storage.join(root, dag_id, safe))

    def step(self, step: str) -> str:
        """The folder a step writes into."""
        return storage.join(self.uri, step)

    def result_uri(self, step: str) -> str:
        """Where a step's result is kept."""
        return storage.join(self.uri, step, "result.json")

    def error_uri(self, step: str) -> str:
        """Where a step's error record is kept while its last try failed."""
        return storage.join(self.uri, step, "error.json")

    # The named outputs of each step.
    @property
    def validation_summary_uri(self) -> str:
        return storage.join(self.uri, "validate", "summary.json")

    @property
    def data_docs_uri(self) -> str:
        return storage.join(self.uri, "validate", "data_docs")

    @property
    def model_file_uri(self) -> str:
        return storage.join(self.uri, "train", "model.keras")

    @property
    def litert_model_uri(self) -> str:
        return storage.join(self.uri, "train", "model.tflite")

    def training_backup_uri(self, key: str) -> str:
        """Keras' per-epoch backup of one training (`key`: what it trains on and how)."""
        return storage.join(self.uri, "train", "backup", key)

    @property
    def training_params_uri(self) -> str:
        return storage.join(self.uri, "train", "params.json")

    @property
    def training_run_id_uri(self) -> str:
        return storage.join(self.uri, "train", "mlflow_run_id")

    @property
    def confusion_matrix_uri(self) -> str:
        return storage.join(self.uri, "evaluate", "confusion_matrix.png")

    def save_result(self, step: str, payload: dict[str, Any]) -> str:
        """Keep a step's result; returns its URI."""
        uri = self.result_uri(step)
        storage.write_json(uri, payload)
        return uri

    def saved_result(self, step: str, model: type[R]) -> R | None:
        """A step's kept result, or None when it has none."""
        uri = self.result_uri(step)
        return model.model_validate(storage.read_json(uri)) if storage.exists(uri) else None

    def save_error(self, step: str, record: dict[str, Any]) -> None:
        storage.write_json(self.error_uri(step), record)

    def clear_error(self, step: str) -> None:
        """Forget the error record of an earlier failed try of the step."""
        if storage.exists(self.error_uri(step)):
            storage.remove(self.error_uri(step))

    def first_failure(self, steps: list[str]) -> tuple[str, dict[str, Any] | None] | None:
        """The first of `steps` that left an error record (with it) or no result (with None);
        None when every step has a result."""
        for step in steps:
            if storage.exists(self.error_uri(step)):
                return step, storage.read_json(self.error_uri(step))
            if not storage.exists(self.result_uri(step)):
                return step, None
        return None
