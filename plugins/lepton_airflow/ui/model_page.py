"""The Lepton page inside Airflow: the registered model, its versions and a champion rollback.

A FastAPI app mounted by the Airflow api-server at /lepton (see plugins/lepton_plugin.py).

- Reading needs a logged-in Airflow user who may read the training DAG; rolling back needs
  one who may edit it (the auth manager decides: Viewer reads, User and above edit).
- Only the configured model (LEPTON_MODEL_NAME) is shown or moved: the page acts with the
  server's MLflow credentials, so it must not reach any other registered model.
- A rollback is a POST whose Origin (or Referer) must be this server: another site cannot
  make a signed-in browser submit it. It carries the champion the page showed, and is refused
  if the champion moved since. It records who did it and why.
"""

from __future__ import annotations

import html
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from fastapi import Depends, FastAPI, Form, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse

from lepton_airflow.ui.links import mlflow_model_version_url, mlflow_run_url

if TYPE_CHECKING:
    from lepton_tasks.results import ModelInfo, VersionInfo


def _current_user() -> Any:
    from airflow.api_fastapi.core_api.security import get_user

    return get_user


app = FastAPI(title="Lepton", docs_url=None, redoc_url=None)
User = Depends(_current_user())
TRAINING_DAG = "lepton_training"


def _authorize(user: Any, method: str) -> None:
    """403 unless the auth manager lets `user` read (GET) or edit (PUT) the training DAG."""
    from airflow.api_fastapi.app import create_auth_manager
    from airflow.api_fastapi.auth.managers.models.resource_details import DagDetails

    allowed = create_auth_manager().is_authorized_dag(
        method=method, details=DagDetails(id=TRAINING_DAG), user=user
    )
    if not allowed:
        action = "edit" if method != "GET" else "read"
        raise HTTPException(status_code=403, detail=f"you may not {action} {TRAINING_DAG}")


def _model_name(requested: str | None) -> str:
    """The model asked for (default: the configured one), if Lepton registered it; any other
    model of the registry is refused (the page acts with the server's credentials)."""
    from lepton_tasks.registry import lepton_models
    from lepton_tasks.settings import get_settings

    configured = get_settings().model_name
    if requested in (None, "", configured):
        return configured
    if requested not in lepton_models():
        raise HTTPException(
            status_code=403, detail=f"'{requested}' is not a model Lepton registered"
        )
    return requested


def _models_nav(current: str) -> str:
    """Every model Lepton registered, each a link to its page."""
    from lepton_tasks.registry import lepton_models

    names = sorted({*lepton_models(), current})
    items = (
        f"<strong>{e(name)}</strong>"
        if name == current
        else f'<a href="/lepton/?{urlencode({"model_name": name})}">{e(name)}</a>'
        for name in names
    )
    return f'<nav id="models">Models: {" · ".join(items)}</nav>'


def _same_origin(request: Request) -> None:
    """403 unless the POST comes from a page of this server (Origin, else Referer)."""
    from urllib.parse import urlsplit

    from airflow.configuration import conf

    claimed = urlsplit(request.headers.get("origin") or request.headers.get("referer") or "")
    # this server as the request reached it, and as Airflow is configured to be seen (behind a
    # proxy that terminates TLS the two differ in scheme)
    ours = {str(request.base_url), conf.get("api", "base_url", fallback="") or ""}
    allowed = {(u.scheme, u.netloc) for u in map(urlsplit, ours) if u.netloc}
    if not claimed.netloc or (claimed.scheme, claimed.netloc) not in allowed:
        raise HTTPException(status_code=403, detail="cross-site request refused")


def _info(model_name: str | None) -> Any:
    from lepton_tasks.errors import LeptonError
    from lepton_tasks.registry import describe_model

    try:
        return describe_model(_model_name(model_name))
    except LeptonError as exc:
        raise HTTPException(status_code=404, detail=exc.one_line()) from exc


@app.get("/api/model")
def model_json(model_name: str | None = None, user: Any = User) -> dict[str, Any]:
    _authorize(user, "GET")
    return _info(model_name).model_dump(mode="json")


@app.post("/rollback")
def rollback(
    request: Request,
    version: str = Form(...),
    reason: str = Form(...),
    expected_champion: str = Form(""),  # "" (or missing): the page showed no champion
    model_name: str | None = Form(None),
    user: Any = User,
) -> RedirectResponse:
    from lepton_tasks.errors import ChampionMovedError, LeptonError
    from lepton_tasks.registry import rollback as rollback_champion
    from lepton_tasks.settings import get_settings

    _authorize(user, "PUT")
    _same_origin(request)
    name = _model_name(model_name)
    run_dir = f"{get_settings().runs_root}/ui-rollbacks"
    try:
        done = rollback_champion(
            name, version, reason, user.get_name(), run_dir, expected_champion or None
        )
    except ChampionMovedError as exc:
        raise HTTPException(status_code=409, detail=exc.one_line()) from exc
    except LeptonError as exc:
        raise HTTPException(status_code=400, detail=exc.one_line()) from exc
    query = urlencode(
        {
            "model_name": done.model_name,
            "rolled_back_to": done.champion_version,
            "previous": done.previous_champion_version or "",
        }
    )
    return RedirectResponse(url=f"/lepton/?{query}", status_code=303)


@app.get("/", response_class=HTMLResponse)
def page(
    model_name: str | None = None,
    rolled_back_to: str | None = None,
    previous: str | None = None,
    user: Any = User,
) -> str:
    _authorize(user, "GET")
    info = _info(model_name)
    champion = next((v for v in info.versions if "champion" in v.aliases), None)
    notice = ""
    if rolled_back_to:
        was = f" (was v{e(previous)})" if previous else ""
        notice = f'<p class="notice" id="notice">Champion is now v{e(rolled_back_to)}{was}.</p>'
    return PAGE.format(
        model=e(info.model_name),
        models=_models_nav(info.model_name),
        notice=notice,
        champion=_champion_card(champion, info.tracking_uri),
        rows="".join(_version_row(v, info.model_name) for v in info.versions),
        rollback=_rollback_form(info, champion, user.get_name()),
        production=_production_card(info.model_name, champion),
        history="".join(_history_item(h) for h in reversed(info.promotion_history))
        or "<li>No promotions yet.</li>",
    )


def e(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _dag_run_link(version: VersionInfo) -> str:
    if not (version.dag_id and version.dag_run_id):
        return '<span class="muted">outside Airflow</span>'
    return (
        f'<a data-open="top" href="/dags/{e(version.dag_id)}/runs/{e(version.dag_run_id)}">'
        f"{e(version.dag_run_id)}</a>"
    )


def _champion_card(champion: VersionInfo | None, tracking_uri: str) -> str:
    if champion is None:
        return '<section class="card"><p id="champion-none">No champion yet.</p></section>'
    return (
        '<section class="card champion"><h2>Champion: '
        f'<strong id="champion">v{e(champion.version)}</strong></h2>'
        f"<p>{e(champion.metrics_text())}</p>"
        f"<p>Data snapshot {e(champion.snapshot_id)} ({e(champion.snapshot_count)} examples), "
        f"{e(champion.architecture)}; DAG run {_dag_run_link(champion)}</p>"
        f'<p class="muted">MLflow tracking: {e(tracking_uri)}</p></section>'
    )


def _version_row(version: VersionInfo, model_name: str) -> str:
    badges = "".join(f'<span class="badge {e(a)}">{e(a)}</span>' for a in version.aliases)
    return (
        f'<tr id="version-{e(version.version)}">'
        f'<td><a data-open="new" target="_blank" rel="noopener" '
        f'href="{e(mlflow_model_version_url(model_name, version.version))}">'
        f"v{e(version.version)}</a></td><td>{badges}</td><td>{e(version.metrics_text())}</td>"
        f"<td>{e(version.classes_text())}</td>"
        f"<td>{e(version.snapshot_id)} ({e(version.snapshot_count or '?')} examples)</td>"
        f"<td>{_dag_run_link(version)}</td><td>{e(version.decision)}</td>"
        f"<td>{e(version.created_at)}</td></tr>"
    )


def _rollback_form(info: ModelInfo, champion: VersionInfo | None, user_name: str) -> str:
    others = [v for v in info.versions if v is not champion]
    if not others:
        return '<p class="muted">Only one version: nothing to roll back to.</p>'
    options = "".join(
        f'<option value="{e(v.version)}">v{e(v.version)}: {e(v.metrics_text())}</option>'
        for v in others
    )
    return (
        '<form method="post" action="/lepton/rollback" id="rollback">'
        f'<label>Version <select name="version">{options}</select></label>'
        '<label>Reason <input name="reason" required minlength="3" '
        'placeholder="why the champion changes"></label>'
        f'<input type="hidden" name="model_name" value="{e(info.model_name)}">'
        '<input type="hidden" name="expected_champion" '
        f'value="{e(champion.version if champion else "")}">'
        '<button type="submit">Make champion</button>'
        f'<span class="muted">recorded as {e(user_name)}</span></form>'
    )


def _production_card(model_name: str, champion: VersionInfo | None) -> str:
    """The last monitoring run: drift and feedback checks against their thresholds."""
    from lepton_tasks.errors import LeptonError
    from lepton_tasks.predictions import latest_monitoring

    try:
        last = latest_monitoring(model_name)
    except LeptonError as exc:  # the page still shows the registry
        return f'<section class="card"><h2>Production</h2><p>{e(exc.one_line())}</p></section>'
    if last is None:
        return (
            '<section class="card" id="production"><h2>Production</h2><p class="muted">Not '
            "monitored yet: the lepton_monitoring DAG compares scoring and serving with the "
            "champion's training data.</p></section>"
        )
    state = "ALERT" if last["alert"] else "no drift" if last["checks"] else "no verdict"
    css = "alert" if last["alert"] else "ok" if last["checks"] else ""
    rows = (
        "".join(
            f"<tr><td>{e(c['name'])}</td><td>{c['value']:.4g}</td><td>{c['threshold']:g}</td>"
            f"<td>{'alert' if c['alert'] else 'ok'}</td><td>{e(c['detail'])}</td></tr>"
            for c in last["checks"]
        )
        or '<tr><td colspan="5" class="muted">not enough production data to judge</td></tr>'
    )
    stale = ""
    if champion is not None and last["version"] != champion.version:
        stale = f" The champion is now v{e(champion.version)}: not checked yet."
    link = mlflow_run_url(last["experiment_id"], last["run_id"])
    return (
        f'<section class="card {css}" id="production">'
        f'<h2>Production: <span id="drift-state">{state}</span></h2>'
        f"<p>Checked {e(last['at'])} for v{e(last['version'])}, {last['examples']} production "
        f'examples (<a data-open="new" target="_blank" href="{e(link)}">MLflow run</a>).{stale}'
        "</p><table><thead><tr><th>Check</th><th>Value</th><th>Threshold</th><th>State</th>"
        f"<th>What</th></tr></thead><tbody>{rows}</tbody></table></section>"
    )


def _history_item(entry: dict[str, Any]) -> str:
    previous = entry.get("previous")
    was = f"was v{e(previous)}" if previous else "first champion"
    return (
        f"<li><time>{e(entry.get('at'))}</time> <strong>v{e(entry.get('version'))}</strong> "
        f"({was}) by {e(entry.get('by'))}: {e(entry.get('reason'))}</li>"
    )


PAGE = """<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Lepton: {model}</title>
<style>
body{{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:0;padding:1.5rem 2rem;
color:#1a202c;background:#f7fafc;font-size:14px}}
h1{{font-size:1.5rem;margin:0 0 1rem}} h2{{font-size:1.1rem;margin:0 0 .5rem}}
.card{{background:#fff;border:1px solid #e2e8f0;border-radius:8px;padding:1rem 1.25rem;
margin-bottom:1.25rem}}
.champion{{border-left:4px solid #38a169}} .champion p{{margin:.25rem 0}}
table{{border-collapse:collapse;width:100%}} th{{background:#edf2f7;font-weight:600}}
td,th{{border-bottom:1px solid #e2e8f0;padding:.45rem .6rem;text-align:left;vertical-align:top}}
a{{color:#2b6cb0}} .muted{{color:#718096}} nav{{margin:-.5rem 0 1rem}}
.badge{{display:inline-block;border-radius:4px;padding:0 .4rem;margin-right:.25rem;
background:#e2e8f0;font-size:.8rem}} .badge.champion{{background:#c6f6d5;color:#22543d}}
.badge.challenger{{background:#bee3f8;color:#2a4365}}
form{{display:flex;gap:.75rem;align-items:center;flex-wrap:wrap}}
input,select{{padding:.3rem .5rem;border:1px solid #cbd5e0;border-radius:4px;margin-left:.35rem}}
input[name=reason]{{width:22rem}}
button{{background:#2b6cb0;color:#fff;border:0;border-radius:4px;padding:.4rem .9rem;cursor:pointer}}
.alert{{border-left:4px solid #e53e3e}} .ok{{border-left:4px solid #38a169}}
.notice{{background:#c6f6d5;border:1px solid #9ae6b4;border-radius:6px;padding:.6rem 1rem}}
ul{{margin:0;padding-left:1.2rem}} li{{margin:.2rem 0}}
</style></head><body>
<h1>Registered model {model}</h1>
{models}
{notice}
{champion}
<section class="card"><h2>Versions</h2><table><thead><tr><th>Version</th><th>Aliases</th>
<th>Test metrics</th><th>Classes</th><th>Data snapshot</th><th>DAG run</th><th>Decision</th><th>Registered</th>
</tr></thead><tbody>{rows}</tbody></table></section>
{production}
<section class="card"><h2>Roll champion back</h2>{rollback}</section>
<section class="card"><h2>Promotion history</h2><ul id="history">{history}</ul></section>
<script>
// Airflow shows this page in an iframe sandboxed without allow-popups or allow-top-navigation,
// so target=_blank and _top links do nothing there. The frame is same-origin: a link is
// followed by a twin anchor in Airflow's own document, which may open tabs and navigate.
document.addEventListener("click", function (event) {{
  var link = event.target.closest("a[data-open]");
  if (!link || window.top === window) return;
  event.preventDefault();
  var twin = window.top.document.createElement("a");
  twin.href = link.href;
  if (link.dataset.open === "new") {{ twin.target = "_blank"; twin.rel = "noopener"; }}
  window.top.document.body.appendChild(twin);
  twin.click();
  twin.remove();
}});
</script>
</body></html>"""
