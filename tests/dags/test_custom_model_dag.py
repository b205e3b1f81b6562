"""A model package of yours, installed, trains through the DAG as the trigger form offers it
(issue 14): the Architecture param lists its entry point, and the version's lineage names it."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from mlflow import MlflowClient

from tests.airflow_env import load_dag
from tests.dags.helpers import night, task_states
from tests.unit.test_custom_models import install_package

pytestmark = pytest.mark.slow


def test_an_installed_model_package_trains_through_the_dag(
    tmp_path: Path,
    lepton_env: Path,
    airflow_db: Path,
    fresh_runtime_settings,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    site = install_package(tmp_path / "site")
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setenv("PYTHONPATH", str(site))  # the steps' processes import it too
    try:
        dag = load_dag()
        assert "my_mlp" in dag.params.get_param("architecture").schema["enum"]
        run = dag.test(
            logical_date=night(5),
            run_conf={"source": "sklearn:digits", "architecture": "my_mlp", "epochs": 20},
        )
    finally:
        sys.modules.pop("my_models", None)
    assert run.state == "success", task_states(run)
    version = MlflowClient().get_model_version_by_alias("lepton-digits", "champion")
    assert version.tags["lepton.architecture"] == "my_mlp"
    assert version.tags["lepton.model_source"].startswith("my_models:build (my-models 1.2.0, code ")
    assert float(version.tags["lepton.metric.accuracy"]) >= 0.9
