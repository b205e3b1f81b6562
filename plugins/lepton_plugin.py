"""Registers Lepton with Airflow: its page (the FastAPI app at /lepton, a link in the menu) and
the listener that writes each DAG run's note."""

from __future__ import annotations

from typing import Any, ClassVar

from airflow.plugins_manager import AirflowPlugin

from lepton_airflow import run_notes
from lepton_airflow.ui.model_page import app


class LeptonPlugin(AirflowPlugin):
    name = "lepton"
    listeners: ClassVar[list[Any]] = [run_notes]
    fastapi_apps: ClassVar[list[dict[str, Any]]] = [
        {"app": app, "url_prefix": "/lepton", "name": "Lepton"}
    ]
    external_views: ClassVar[list[dict[str, Any]]] = [
        {
            "name": "Lepton models",
            "href": "/lepton/",
            "url_route": "lepton",
            "destination": "nav",
            "category": "browse",
        }
    ]
