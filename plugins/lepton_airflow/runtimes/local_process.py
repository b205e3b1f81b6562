"""The local runtime: `lepton-tasks <step>` as a subprocess of the worker.

The Docker and Kubernetes runtimes live in their own modules, so a DAG parsed with the local
runtime never imports those providers.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from airflow.sdk import BaseOperator

from lepton_airflow.connections import mlflow_environment
from lepton_airflow.runtimes.command import step_arguments
from lepton_airflow.runtimes.outcome import ERROR_FILE, RESULT_FILE, parse_result, raise_for_exit
from lepton_airflow.ui.links import STEP_LINKS
from lepton_tasks.redact import redact

# The environment a process inherits besides the step's own: what any container has, and the
# worker's PYTHONPATH (a model package installed there is the step's too; an image has its own).
BASE_ENVIRONMENT = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "TZ", "USER", "PYTHONPATH")


def read_text(path: Path) -> str | None:
    return path.read_text() if path.is_file() else None


class LeptonStepOperator(BaseOperator):
    """Runs `lepton-tasks <step> ...` as a subprocess of the worker (the 'local' runtime)."""

    template_fields: Sequence[str] = ("options",)
    operator_extra_links = STEP_LINKS
    ui_color = "#e8f0fe"

    def __init__(
        self,
        *,
        step: str,
        options: dict[str, Any],
        environment: dict[str, str] | None = None,
        secret_environment: dict[str, str] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.step = step
        self.options = options
        self.environment = environment or {}
        self.secret_environment = secret_environment or {}
        self._process: subprocess.Popen[str] | None = None

    @property
    def command(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "lepton_tasks",
            self.step,
            *step_arguments(self.options),
        ]

    def process_environment(self) -> dict[str, str]:
        base = {key: os.environ[key] for key in BASE_ENVIRONMENT if key in os.environ}
        return {
            **base,
            **self.environment,
            **self.secret_environment,
            **mlflow_environment(),
        }

    def execute(self, context: Any) -> dict[str, Any]:
        self.log.info("running: lepton-tasks %s %s", self.step, redact(" ".join(self.command[4:])))
        with tempfile.TemporaryDirectory(prefix=f"lepton-{self.step}-") as outcome:
            result_file, error_file = Path(outcome, RESULT_FILE), Path(outcome, ERROR_FILE)
            env = {
                **self.process_environment(),
                "LEPTON_RESULT_FILE": str(result_file),
                "LEPTON_ERROR_FILE": str(error_file),
            }
            code = self._run(env)
            if code != 0:
                raise_for_exit(self.step, code, read_text(error_file))
            return parse_result(read_text(result_file), self.step)

    def _run(self, env: dict[str, str]) -> int:
        """Run the step, its log lines streamed into the task log; stdout is not needed."""
        process = subprocess.Popen(
            self.command,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            start_new_session=True,
        )
        self._process = process

        def stream_stderr() -> None:
            assert process.stderr is not None
            for line in process.stderr:
                self.log.info("%s", line.rstrip())

        streamer = threading.Thread(target=stream_stderr, daemon=True)
        streamer.start()
        code = process.wait()
        streamer.join()
        return code

    def on_kill(self) -> None:
        if self._process and self._process.poll() is None:
            os.killpg(self._process.pid, signal.SIGTERM)
