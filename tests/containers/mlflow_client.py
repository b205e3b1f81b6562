"""MLflow's own client in the test process, signed in as a user of the stack's MLflow."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any


@contextlib.contextmanager
def mlflow_as(credentials: dict[str, str]) -> Iterator[Any]:
    """MLflow's client in this process, signed in as the given user."""
    import mlflow
    from mlflow import MlflowClient

    from lepton_tasks.settings import get_settings

    saved = {key: os.environ.get(key) for key in credentials}
    os.environ.update(credentials)
    mlflow.set_tracking_uri(credentials["MLFLOW_TRACKING_URI"])
    get_settings.cache_clear()
    try:
        yield MlflowClient()
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        get_settings.cache_clear()
