"""Alerts configured the way an earlier release documented still go out, with a warning."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

import lepton_airflow.notifiers as notifiers
from tests.dags.helpers import AlertSink


def test_legacy_alert_configuration_still_alerts(monkeypatch: pytest.MonkeyPatch) -> None:
    warnings: list[str] = []
    monkeypatch.setattr(
        notifiers.log, "warning", lambda message, *args: warnings.append(message % args)
    )
    ti = SimpleNamespace(
        dag_id="d", task_id="t", run_id="r", try_number=1, log_url="l", xcom_pull=lambda **k: None
    )
    context = {"ti": ti, "exception": Exception("boom")}
    monkeypatch.delenv("AIRFLOW_CONN_LEPTON_ALERT_WEBHOOK", raising=False)
    sink = AlertSink()
    monkeypatch.setenv("LEPTON_ALERT_WEBHOOK_URL", sink.url)
    notifiers.FailureAlert().notify(context)
    assert len(sink.received) == 1 and "deprecated" in warnings[-1]
    monkeypatch.delenv("LEPTON_ALERT_WEBHOOK_URL")
    monkeypatch.setenv("AIRFLOW_CONN_LEPTON_ALERT_WEBHOOK", sink.url)  # the URL as its host
    notifiers.FailureAlert().notify(context)
    assert len(sink.received) == 2 and "outside its password" in warnings[-1]
    monkeypatch.setenv(  # unreachable: a warning without the URL, never an exception
        "AIRFLOW_CONN_LEPTON_ALERT_WEBHOOK",
        json.dumps({"conn_type": "slackwebhook", "password": "http://127.0.0.1:9/hooks/T/B/X"}),
    )
    notifiers.FailureAlert().notify(context)
    assert "could not deliver the alert" in warnings[-1] and "T/B/X" not in warnings[-1]
