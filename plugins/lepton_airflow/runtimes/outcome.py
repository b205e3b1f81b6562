"""A finished step's outcome, read the same way in every runtime.

The step writes its JSON result to `LEPTON_RESULT_FILE`, or its error record to
`LEPTON_ERROR_FILE` (see `lepton_tasks.cli`); each runtime points those at a place it can read
back: a temporary folder (local), a path it copies out of the stopped container (Docker), the
XCom sidecar's file and the pod's termination message (Kubernetes). Nothing is parsed out of
the log. A non-zero exit code becomes retry, fail or skip by `lepton_tasks.errors`' policy.
"""

from __future__ import annotations

import json
from typing import Any, NoReturn

from airflow.sdk.exceptions import AirflowException, AirflowFailException, AirflowSkipException

from lepton_tasks.errors import failure_action

RESULT_FILE = "result.json"
ERROR_FILE = "error.json"


def parse_result(text: str | bytes | None, step: str) -> dict[str, Any]:
    """The step's JSON result; a step that exited 0 without one is a bug worth a retry."""
    if not text:
        raise AirflowException(f"step {step} exited 0 but left no result")
    try:
        result = json.loads(text)
    except json.JSONDecodeError as exc:
        raise AirflowException(f"step {step}: its result is not JSON: {text[:200]!r}") from exc
    if not isinstance(result, dict):
        raise AirflowException(f"step {step}: its result is not a JSON object")
    return result


def failure_reason(step: str, exit_code: int, error_text: str | bytes | None) -> str:
    """The step's own one-line message, else what the exit code alone tells."""
    if error_text:
        try:
            line = json.loads(error_text).get("line")
        except (json.JSONDecodeError, AttributeError):
            line = None
        if line:
            return str(line)
    if exit_code in (137, -9):
        return f"lepton-tasks {step}: killed (out of memory or stopped), exit code {exit_code}"
    return f"lepton-tasks {step}: failed with exit code {exit_code} and left no error record"


def raise_for_exit(step: str, exit_code: int, error_text: str | bytes | None) -> NoReturn:
    """Raise what Airflow should do with a failed step: skip, fail without retry, or retry."""
    reason = failure_reason(step, exit_code, error_text)
    action = failure_action(exit_code)
    if action == "skip":
        raise AirflowSkipException(reason)
    if action == "fail":
        raise AirflowFailException(f"{reason} [exit {exit_code}]")
    raise AirflowException(f"{reason} [exit {exit_code}]")
