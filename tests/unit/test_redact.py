"""Secrets out of logs, results and pages."""

from __future__ import annotations

from pathlib import Path

import pytest

from lepton_tasks.errors import TrackingUnavailableError
from lepton_tasks.redact import redact
from tests.conftest import run_cli


def test_credentials_and_webhook_paths_are_redacted() -> None:
    assert redact("http://lepton:s3cret@mlflow:5000/api") == "http://lepton:***@mlflow:5000/api"
    assert redact("post to https://hooks.slack.com/services/T0/B0/XyZ failed") == (
        "post to https://hooks.slack.com/*** failed"
    )
    assert "abc123" not in redact("https://chat.example/webhook/abc123")
    assert redact("sqlite:////tmp/mlflow.db") == "sqlite:////tmp/mlflow.db"
    error = TrackingUnavailableError("down", where="http://u:pw@mlflow:5000")
    assert "pw" not in error.one_line()


def test_model_info_never_shows_the_tracking_password(
    tmp_path: Path, lepton_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before (issue 12): `model-info` printed MLFLOW_TRACKING_URI with its password."""
    done = run_cli("model-info", env={"MLFLOW_TRACKING_URI": "http://lepton:hunter2@127.0.0.1:9"})
    assert done.code != 0
    assert "hunter2" not in done.stderr + done.stdout
    assert "lepton:***@127.0.0.1:9" in done.stderr
