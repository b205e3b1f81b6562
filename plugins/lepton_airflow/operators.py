"""The local step operator (`lepton-tasks <step>` as a subprocess) and what all runtimes share.

The Docker and Kubernetes operators live in `container_operators`, so a DAG parsed with the
local runtime never imports those providers.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Sequence
from typing import Any

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowException, AirflowFailException, AirflowSkipException

from lepton_airflow.links import STEP_LINKS
from lepton_tasks.errors import NothingToIngestError

# Exit codes of failures a retry cannot fix (bad flags, bad data, missing upstream output,
# diverged training); see lepton_tasks.errors. Others (tracking down, crashes) are retried.
NO_RETRY_EXIT_CODES = frozenset({2, 3, 4, 5, 6, 8})
# NothingToIngestError: no batch has landed yet. The task is skipped, and so is the rest.
SKIP_EXIT_CODE = NothingToIngestError.exit_code
# The environment a process inherits besides the step's own: what any container has.
BASE_ENVIRONMENT = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "TZ", "USER")


def drop_empty_options(arguments: Sequence[Any]) -> list[str]:
    """Remove `--flag value` pairs whose rendered value is empty, so optional params stay unset."""
    args = [str(a) for a in arguments]
    kept: list[str] = []
    i = 0
    while i < len(args):
        is_option = args[i].startswith("--")
        if is_option and i + 1 < len(args) and not args[i + 1].startswith("--"):
            if args[i + 1] not in ("", "None"):
                kept += args[i : i + 2]
            i += 2
            continue
        kept.append(args[i])
        i += 1
    return kept


def parse_result(line: str | None, step: str) -> dict[str, Any]:
    if not line:
        raise AirflowException(f"step {step} printed no result line")
    try:
        return json.loads(line)
    except json.JSONDecodeError as exc:
        raise AirflowException(f"step {step}: last stdout line is not JSON: {line[:200]}") from exc


class LeptonStepOperator(BaseOperator):
    """Runs `lepton-tasks <step> ...` as a subprocess of the worker (the 'local' runtime)."""

    template_fields: Sequence[str] = ("arguments",)
    operator_extra_links = STEP_LINKS
    ui_color = "#e8f0fe"

    def __init__(
        self,
        *,
        step: str,
        arguments: list[Any],
        environment: dict[str, str] | None = None,
        secret_environment: dict[str, str] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.step = step
        self.arguments = arguments
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
            *drop_empty_options(self.arguments),
        ]

    def process_environment(self) -> dict[str, str]:
        base = {key: os.environ[key] for key in BASE_ENVIRONMENT if key in os.environ}
        return {**base, **self.environment, **self.secret_environment}

    def execute(self, context: Any) -> dict[str, Any]:
        self.log.info("running: lepton-tasks %s %s", self.step, " ".join(self.command[4:]))
        process = subprocess.Popen(
            self.command,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=self.process_environment(),
            start_new_session=True,
        )
        self._process = process
        error_lines: list[str] = []

        def stream_stderr() -> None:
            assert process.stderr is not None
            for line in process.stderr:
                line = line.rstrip()
                self.log.info("%s", line)
                if line.startswith(f"lepton-tasks {self.step}:"):
                    error_lines.append(line)

        streamer = threading.Thread(target=stream_stderr, daemon=True)
        streamer.start()
        stdout = process.stdout.read() if process.stdout else ""
        code = process.wait()
        streamer.join()
        if code != 0:
            reason = error_lines[-1] if error_lines else f"exit code {code}"
            if code == SKIP_EXIT_CODE:
                raise AirflowSkipException(reason)
            failure = AirflowFailException if code in NO_RETRY_EXIT_CODES else AirflowException
            raise failure(f"{reason} [exit {code}]")
        lines = [line for line in stdout.splitlines() if line.strip()]
        return parse_result(lines[-1] if lines else None, self.step)

    def on_kill(self) -> None:
        if self._process and self._process.poll() is None:
            os.killpg(self._process.pid, signal.SIGTERM)
