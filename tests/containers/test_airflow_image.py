"""The Airflow image's entrypoint: a metadata database that never answers, one it cannot reach
to migrate, or a migration that fails on a live database stops the container with exit 1 and
says why (the official image's `airflow db migrate || true` would report success and start the
stack on a database it could not migrate)."""

from __future__ import annotations

import subprocess

import pytest

from tests.containers.compose import ComposeStack, run

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


def test_a_database_it_cannot_reach_to_migrate_stops_the_init(engine: None) -> None:
    done = airflow_container(
        "version",
        AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=NO_DATABASE,
        _AIRFLOW_DB_MIGRATE="true",
        CONNECTION_CHECK_MAX_COUNT="0",  # straight to the migration, which cannot connect
    )
    assert done.returncode == 1, done.stderr[-2000:]
    assert "airflow db migrate failed" in done.stderr
    assert "3.3.2" not in done.stdout  # `airflow version` never ran


def test_a_migration_that_fails_on_a_live_database_stops_the_init(stack: ComposeStack) -> None:
    """The stack's PostgreSQL, a user that may connect but not create tables (PostgreSQL 15+
    gives nobody CREATE on a new database's public schema): `airflow db check` passes, the
    migration fails."""
    for sql in (
        "CREATE ROLE reader LOGIN PASSWORD 'reader'",
        "CREATE DATABASE readonly",
    ):
        stack.exec("postgres", "psql", "-v", "ON_ERROR_STOP=1", "-U", "postgres", "-c", sql)
    done = subprocess.run(
        ["docker", "run", "--rm", "--network", "lepton",
         "-e", "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN="
               "postgresql+psycopg2://reader:reader@postgres/readonly",
         "-e", "_AIRFLOW_DB_MIGRATE=true", "-e", "CONNECTION_CHECK_MAX_COUNT=5",
         AIRFLOW_IMAGE, "version"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 1, done.stderr[-2000:]
    assert "does not answer" not in done.stderr  # it did connect
    assert "permission denied" in done.stderr.lower()
    assert "airflow db migrate failed" in done.stderr
    assert "3.3.2" not in done.stdout
