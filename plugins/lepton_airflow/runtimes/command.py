"""A step's command line, built from its options after Airflow has rendered them.

Options travel as a mapping (`{"epochs": 3, "learning_rate": None}`) through templating; the
DAG renders native values, so an empty Param stays None instead of becoming the text "" or
"None". Only then is the argv built, the same for every runtime: `--name=value`, in one token,
so a value that starts with `--` stays a value. A boolean is a flag: `--name` or `--no-name`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import date, datetime
from typing import Any


def option_value(value: Any) -> str:
    """One rendered option value as command-line text."""
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, Mapping | list | tuple):
        return json.dumps(value, default=str)
    return str(value)


def step_arguments(options: Mapping[str, Any]) -> list[str]:
    """`--name=value` per option; an option whose value is None or empty text is left out,
    so the step applies its own default."""
    arguments: list[str] = []
    for name, value in options.items():
        flag = name.replace("_", "-")
        if value is None or (isinstance(value, str) and value == ""):
            continue
        if isinstance(value, bool):
            arguments.append(f"--{flag}" if value else f"--no-{flag}")
        else:
            arguments.append(f"--{flag}={option_value(value)}")
    return arguments
