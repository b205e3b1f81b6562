"""Credentials from Airflow Connections, read when a task runs (never when a DAG is parsed).

- `lepton_mlflow`: the MLflow tracking server the steps use. Host (with scheme, or the
  connection type http/https), port and an optional path; login and password are the MLflow
  user's. An `extra` of `{"tracking_uri": "..."}` overrides the URL.
- `lepton_alert_webhook`: where failure alerts are posted (`notifiers`): type
  `slackwebhook`, the webhook URL as its password, since a webhook URL is itself the secret.

A secrets backend can supply both. Without `lepton_mlflow` the environment decides
(`MLFLOW_TRACKING_URI`/`_USERNAME`/`_PASSWORD`), as for the CLI; without
`lepton_alert_webhook` no alert is sent.
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger(__name__)

MLFLOW_CONN_ID = "lepton_mlflow"
ALERT_CONN_ID = "lepton_alert_webhook"


def connection(conn_id: str) -> Any | None:
    """The Connection, or None when no backend defines it."""
    from airflow.sdk import Connection
    from airflow.sdk.exceptions import AirflowNotFoundException

    try:
        return Connection.get(conn_id)
    except AirflowNotFoundException:
        return None


def connection_url(conn: Any) -> str:
    """The URL a Connection's scheme or type, host, port and schema (path) make."""
    host = conn.host or ""
    if "://" not in host:
        scheme = conn.conn_type if conn.conn_type in ("http", "https") else "http"
        host = f"{scheme}://{host}"
    port = f":{conn.port}" if conn.port else ""
    path = f"/{conn.schema.strip('/')}" if conn.schema else ""
    return f"{host.rstrip('/')}{port}{path}"


def mlflow_environment() -> dict[str, str]:
    """MLFLOW_* variables from the `lepton_mlflow` Connection; empty when it is not defined."""
    conn = connection(MLFLOW_CONN_ID)
    if conn is None:
        return {}
    env = {"MLFLOW_TRACKING_URI": conn.extra_dejson.get("tracking_uri") or connection_url(conn)}
    if conn.login:
        env["MLFLOW_TRACKING_USERNAME"] = conn.login
    if conn.password:
        env["MLFLOW_TRACKING_PASSWORD"] = conn.password
    return env
