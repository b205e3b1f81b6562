"""The production commands of `lepton-tasks`: score, serve, monitor (registered on its app)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

import typer

from lepton_tasks.cli import ModelName, app, run_step
from lepton_tasks.results import StepResult


def _model_name(given: str | None) -> str:
    from lepton_tasks.settings import get_settings

    return given or get_settings().model_name


def _url_list(text: str | None) -> list[str]:
    import json

    from lepton_tasks.errors import UsageError

    if not text:
        return []
    if text.lstrip().startswith("["):
        try:
            urls = json.loads(text)
        except json.JSONDecodeError as exc:
            raise UsageError(f"--metrics-urls: not a JSON list: {exc}") from exc
        return [str(url) for url in urls]
    return [part.strip() for part in text.split(",") if part.strip()]


@app.command()
def score(
    model_name: ModelName = None,
    input_uri: Annotated[
        str | None,
        typer.Option(
            "--input",
            help="What to score: any dataset ingest reads (labels optional), or a folder of "
            "batches [default: the scoring inbox, LEPTON_SCORING_INBOX_URI, whose batches move "
            "to <inbox>/_scored/ once scored; any other input is only read].",
        ),
    ] = None,
    output: Annotated[
        str | None,
        typer.Option(
            help="A .parquet file, or a folder for one file per batch [default: "
            "<LEPTON_PREDICTIONS_URI>/<model>/<UTC time>]."
        ),
    ] = None,
    fmt: Annotated[
        str,
        typer.Option(
            "--format", help="auto|idx|npz|parquet|csv|tfrecord|images (auto: from the URI)."
        ),
    ] = "auto",
    run_dir: Annotated[
        str | None,
        typer.Option(help="Where the result is kept [default: <output folder>/_lepton]."),
    ] = None,
) -> None:
    """Score new data with the champion (pinned by version) into Parquet predictions."""
    from lepton_tasks import storage
    from lepton_tasks.settings import get_settings
    from lepton_tasks.steps.score import score as score_step

    settings = get_settings()
    name = _model_name(model_name)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    target = output or storage.join(settings.predictions_root, name, stamp)
    source = input_uri or settings.scoring_inbox
    run_step("score", run_dir, lambda: score_step(name, source, target, run_dir, fmt=fmt))


@app.command()
def serve(
    model_name: ModelName = None,
    host: Annotated[str, typer.Option(help="Interface to listen on (0.0.0.0: all).")] = (
        "127.0.0.1"
    ),
    port: Annotated[int, typer.Option(help="Port.")] = 5001,
    poll_s: Annotated[
        float | None,
        typer.Option(help="How often the champion alias is looked up [LEPTON_SERVE_POLL_S]."),
    ] = None,
) -> None:
    """Serve models:/NAME@champion over HTTP, following the alias (MLflow's scoring protocol,
    the Open Inference Protocol v2, and Prometheus /metrics)."""
    import sys

    from lepton_tasks.errors import LeptonError
    from lepton_tasks.serving.server import run_server

    try:
        run_server(_model_name(model_name), host, port, poll_s)
    except LeptonError as exc:  # MLflow unreachable at start: one line, its exit code
        print(f"lepton-tasks serve: {exc.one_line()}", file=sys.stderr)
        raise typer.Exit(exc.exit_code) from None


@app.command()
def monitor(
    model_name: ModelName = None,
    metrics_urls: Annotated[
        str | None,
        typer.Option(
            help="Serving /metrics URLs (http/https) whose counters for the champion's version "
            "count as production: a JSON list or comma-separated [default: "
            "LEPTON_SERVING_METRICS_URLS]."
        ),
    ] = None,
    feedback: Annotated[
        str | None,
        typer.Option(
            help="Labelled data to measure the champion's accuracy on [default: the landing "
            "zone's batches landed since the champion was registered]."
        ),
    ] = None,
    window_hours: Annotated[
        float | None,
        typer.Option(help="Scoring runs of the last N hours [LEPTON_DRIFT_WINDOW_HOURS]."),
    ] = None,
    run_dir: Annotated[
        str | None,
        typer.Option(help="Where the result is kept [default: <runs>/_monitoring/<UTC time>]."),
    ] = None,
) -> None:
    """Compare production inputs and predictions with the champion's training data; alert
    (exit 0, `alert: true` in the result) when drift or feedback accuracy crosses a threshold."""
    from lepton_tasks.steps.monitor import monitor as monitor_step

    def action() -> StepResult:
        return monitor_step(
            _model_name(model_name),
            metrics_urls=_url_list(metrics_urls) if metrics_urls is not None else None,
            feedback=feedback,
            window_hours=window_hours,
            run_dir=run_dir,
        )

    run_step("monitor", run_dir, action)
