"""Registers Lepton's page with Airflow: the FastAPI app at /lepton and a link in the menu."""

from __future__ import annotations

from typing import Any, ClassVar

from airflow.plugins_manager import AirflowPlugin

from lepton_airflow.ui.model_page import app


class LeptonPlugin(AirflowPlugin):
    name = "lepton"
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
