"""The Lepton page inside Airflow: the registered model, its versions and a champion rollback.

A FastAPI app mounted by the Airflow api-server at /lepton (see plugin.py). Reading and rolling
back both need a logged-in Airflow user; a rollback records who did it and why.
"""

from __future__ import annotations

import html
from typing import Any

from fastapi import Depends, FastAPI, Form, HTTPException
from fastapi.responses import HTMLResponse, RedirectResponse

from lepton_airflow.config import runtime_settings


def _current_user() -> Any:
    from airflow.api_fastapi.core_api.security import get_user

    return get_user


app = FastAPI(title="Lepton", docs_url=None, redoc_url=None)
User = Depends(_current_user())


def _info(model_name: str | None) -> Any:
    from lepton_tasks.errors import LeptonError
    from lepton_tasks.steps.register import describe_model

    try:
        return describe_model(model_name)
    except LeptonError as exc:
        raise HTTPException(status_code=404, detail=exc.one_line()) from exc


@app.get("/api/model")
def model_json(model_name: str | None = None, user: Any = User) -> dict[str, Any]:
    return _info(model_name).model_dump(mode="json")


@app.post("/rollback")
def rollback(
    version: str = Form(...),
    reason: str = Form(...),
    model_name: str | None = Form(None),
    user: Any = User,
) -> RedirectResponse:
    from lepton_tasks.errors import LeptonError
    from lepton_tasks.settings import get_settings
    from lepton_tasks.steps.register import rollback as rollback_champion

    run_dir = f"{get_settings().runs_root}/ui-rollbacks"
    try:
        rollback_champion(model_name, version, reason, user.get_name(), run_dir)
    except LeptonError as exc:
        raise HTTPException(status_code=400, detail=exc.one_line()) from exc
    return RedirectResponse(url="/lepton/", status_code=303)


@app.get("/", response_class=HTMLResponse)
def page(model_name: str | None = None, user: Any = User) -> str:
    info = _info(model_name)
    mlflow = runtime_settings().mlflow_ui_url.rstrip("/")
    e = html.escape
    champion = next((v for v in info.versions if "champion" in v.aliases), None)
    rows = []
    for v in info.versions:
        metrics = ", ".join(f"{k} {val:.4f}" for k, val in sorted(v.metrics.items()))
        dag_run = (
            f'<a href="/dags/{e(v.dag_id)}/runs/{e(v.dag_run_id)}">{e(v.dag_run_id)}</a>'
            if v.dag_id and v.dag_run_id
            else ""
        )
        rows.append(
            f"<tr><td><a href='{mlflow}/#/models/{e(info.model_name)}/versions/{e(v.version)}'>"
            f"v{e(v.version)}</a></td><td>{e(', '.join(v.aliases))}</td><td>{e(metrics)}</td>"
            f"<td>{e(v.snapshot_id or '')} ({v.snapshot_count or '?'} examples)</td>"
            f"<td>{dag_run}</td><td>{e(v.decision or '')}</td><td>{e(v.created_at)}</td></tr>"
        )
    history = "".join(
        f"<li>{e(h.get('at', ''))}: v{e(str(h.get('version')))} (was "
        f"{e(str(h.get('previous')))}) by {e(str(h.get('by')))}: {e(str(h.get('reason')))}</li>"
        for h in reversed(info.promotion_history)
    )
    options = "".join(f"<option>{e(v.version)}</option>" for v in info.versions)
    headline = (
        f"Champion: <strong id='champion'>v{e(champion.version)}</strong>"
        if champion
        else "No champion yet."
    )
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>Lepton</title>
<style>body{{font-family:system-ui,sans-serif;margin:2rem}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:.3rem .6rem;text-align:left}}</style></head><body>
<h1>Lepton: {e(info.model_name)}</h1><p>{headline} Tracking: {e(info.tracking_uri)}</p>
<table><thead><tr><th>version</th><th>aliases</th><th>test metrics</th><th>data snapshot</th>
<th>DAG run</th><th>decision</th><th>registered</th></tr></thead><tbody>{"".join(rows)}</tbody></table>
<h2>Roll champion back</h2>
<form method="post" action="/lepton/rollback"><label>version <select name="version">{options}
</select></label> <label>reason <input name="reason" required></label>
<input type="hidden" name="model_name" value="{e(info.model_name)}">
<button type="submit">Make champion</button> (recorded as {e(user.get_name())})</form>
<h2>Promotion history</h2><ul id="history">{history}</ul></body></html>"""
