"""Print what the Airflow image installs, one requirement a line, from pyproject.toml alone:
the `airflow` extra (Airflow, its providers, the PostgreSQL driver) and the task library's own
requirements that the plugins import (MLflow's client, settings, storage). Versions come from
pyproject.toml's pins and the lock (constraints.txt), never from a second list here."""

from __future__ import annotations

import re
import sys
import tomllib

# The task library's dependencies the plugins and DAG files need in Airflow's processes.
FOR_THE_PLUGINS = {"mlflow", "pydantic", "pydantic-settings", "fsspec", "typer"}


def main(path: str) -> None:
    with open(path, "rb") as handle:
        project = tomllib.load(handle)["project"]
    wanted = list(project["optional-dependencies"]["airflow"])
    for requirement in project["dependencies"]:
        if re.split(r"[=<>~!\[ ;]", requirement, maxsplit=1)[0].lower() in FOR_THE_PLUGINS:
            wanted.append(requirement)
    print("\n".join(wanted))


if __name__ == "__main__":
    main(sys.argv[1])
