"""Airflow's private home, set before any test module here imports Airflow."""

from tests.airflow_env import airflow_db, fresh_runtime_settings  # noqa: F401  fixtures
