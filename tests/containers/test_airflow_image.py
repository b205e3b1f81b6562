"""The Airflow image's entrypoint: a metadata database that is not there, or a migration that
fails, stops the container with a non-zero exit and says why (the official image's
`airflow db migrate || true` would report success and start the stack on a broken database)."""

from __future__ import annotations

import subprocess

import pytest

from tests.containers.compose import run

pytestmark = [pytest.mark.containers, pytest.mark.slow]
AIRFLOW_IMAGE = "lepton/airflow:0.2.0"
NO_DATABASE = "postgresql+psycopg2://airflow:wrong@127.0.0.1:9/airflow"


def airflow_container(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    options = [item for key, value in env.items() for item in ("-e", f"{key}={value}")]
    return subprocess.run(
        ["docker", "run", "--rm", "--network", "none", *options, AIRFLOW_IMAGE, *args],
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_a_database_that_never_answers_stops_the_init(engine: None) -> None:
    run("docker", "image", "inspect", AIRFLOW_IMAGE)
    done = airflow_container(
        "version",
        AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=NO_DATABASE,
        _AIRFLOW_DB_MIGRATE="true",
        CONNECTION_CHECK_MAX_COUNT="2",
        CONNECTION_CHECK_SLEEP_TIME="1",
    )
    assert done.returncode == 1, done.stderr[-2000:]
    assert "the metadata database did not answer after 2 tries" in done.stderr


def test_a_failed_migration_stops_the_init(engine: None) -> None:
    done = airflow_container(
        "version",
        AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=NO_DATABASE,
        _AIRFLOW_DB_MIGRATE="true",
        CONNECTION_CHECK_MAX_COUNT="0",  # straight to the migration, which cannot connect
    )
    assert done.returncode == 1, done.stderr[-2000:]
    assert "airflow db migrate failed" in done.stderr
    assert "3.3.2" not in done.stdout  # `airflow version` never ran
