"""Airflow for the tests that use it: a private AIRFLOW_HOME on SQLite, this repo's dags/ and
plugins/.

Airflow reads its configuration when first imported, so each conftest that needs Airflow
imports this module first, before any test module imports Airflow.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
AIRFLOW_HOME = Path(tempfile.mkdtemp(prefix="lepton-airflow-"))
os.environ.update(
    {
        "AIRFLOW_HOME": str(AIRFLOW_HOME),
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
    }
)
os.environ.pop("LEPTON_RUNTIME", None)
sys.path.insert(0, str(REPO / "plugins"))


@pytest.fixture(scope="session")
def airflow_db() -> Path:
    airflow = Path(sys.executable).with_name("airflow")
    subprocess.run([str(airflow), "db", "migrate"], check=True, capture_output=True)
    return AIRFLOW_HOME


@pytest.fixture
def fresh_runtime_settings():
    from lepton_airflow.settings import runtime_settings

    runtime_settings.cache_clear()
    yield
    runtime_settings.cache_clear()


def load_dag(dag_id: str = "lepton_training"):
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(REPO / "dags"))
    assert not bag.import_errors, bag.import_errors
    return bag.dags[dag_id]  # get_dag() would consult the metadata database
