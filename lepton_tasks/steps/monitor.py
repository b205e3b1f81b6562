"""Monitor: is production still the world the champion was trained on?

Production is what the champion saw in the window: the scoring runs logged with its version
(their input statistics and predicted classes, summed), plus the counters of any serving
`/metrics` given. The reference is the champion's own training split, read shard by shard.
Four checks, each against a setting: the mean pixel's shift, the population stability index of
the per-image mean pixel, the divergence of predicted classes from the training classes, and the
champion's accuracy on labelled feedback (batches landed since it was registered, or a URI).
An alert is a result, not a failure: the DAG decides what it triggers.
"""

from __future__ import annotations

import json
import logging
import urllib.request
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np

from lepton_tasks import registry, storage, tracking
from lepton_tasks.data import readers
from lepton_tasks.errors import InputDataError, TrackingUnavailableError, UsageError
from lepton_tasks.predictions import (
    fits,
    last_monitoring_run,
    pin_version,
    predict_probabilities,
    production_experiment,
    quoted_name,
)
from lepton_tasks.production_stats import (
    BINS,
    ImageStats,
    kl_divergence,
    population_stability,
    reference_stats,
)
from lepton_tasks.redact import redact
from lepton_tasks.results import DriftCheck, MonitorResult, records_result
from lepton_tasks.settings import Settings, get_settings

log = logging.getLogger(__name__)
# Labelled feedback needs this many examples before its accuracy means anything; at most
# MAX_FEEDBACK are scored per check (a sample of a large landing, not all of it).
MIN_FEEDBACK = 20
MAX_FEEDBACK = 20_000
MAX_METRICS_BYTES = 16 * 1024**2


@records_result
def monitor(
    model_name: str,
    *,
    metrics_urls: list[str] | None = None,
    feedback: str | None = None,
    window_hours: float | None = None,
    run_dir: str | None = None,
) -> MonitorResult:
    """Compare what production sees with the champion's training data; log it to MLflow.

    Args:
        model_name: the registered model whose champion is watched.
        metrics_urls: serving `/metrics` pages whose counters count as production too.
        feedback: labelled data for the accuracy check [default: the landing zone's batches
            landed since the champion was registered].
        window_hours: scoring runs of the last N hours [LEPTON_DRIFT_WINDOW_HOURS].
        run_dir: where the result is kept [default: <runs>/_monitoring/<UTC time>].

    Returns:
        Each check with its value and threshold, and `alert` with the reasons.

    Raises:
        TrackingUnavailableError: MLflow or a metrics URL cannot be reached.
    """
    settings = get_settings()
    window = window_hours or settings.drift_window_hours
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    run_dir = run_dir or storage.join(settings.runs_root, "_monitoring", stamp)
    tracking.setup(production_experiment())
    champion = registry.champion_version(model_name)
    if champion is None:
        log.info("%s has no champion: nothing to monitor", model_name)
        return MonitorResult(
            run_dir=run_dir, model_name=model_name, champion_version=None, window_hours=window
        )
    classes = registry.class_names_of(champion) or []
    production, sources = _production(model_name, champion, classes, window, metrics_urls, feedback)
    checks = drift_checks(_reference(champion, len(classes)), production, settings)
    alert = any(check.alert for check in checks)
    result = MonitorResult(
        run_dir=run_dir,
        model_name=model_name,
        champion_version=str(champion.version),
        window_hours=window,
        production_examples=production.count,
        checks=checks,
        alert=alert,
        new_alert=alert and not _was_alerting(model_name, str(champion.version)),
        reasons=[check.detail for check in checks if check.alert],
        sources=sources,
    )
    result.mlflow_run_id, result.mlflow_experiment_id = _log_run(result)
    log.info("%s", result.summary())
    return result


def _production(
    model_name: str,
    champion: Any,
    classes: list[str],
    window: float,
    metrics_urls: list[str] | None,
    feedback: str | None,
) -> tuple[ImageStats, list[str]]:
    """Scoring runs, serving counters and feedback, summed for the champion's version."""
    version = str(champion.version)
    production, sources = _scoring_runs(model_name, version, classes, window)
    urls = get_settings().serving_metrics_urls if metrics_urls is None else metrics_urls
    for url in urls:
        production.merge(server_stats(url, model_name, version, classes))
        sources.append(redact(url))
    production.merge(_feedback(model_name, champion, feedback, sources, len(classes)))
    return production, sources


def _was_alerting(model_name: str, version: str) -> bool:
    """Whether the last check of this version alerted already.

    An alert is sent (and a retrain triggered) once per episode, not every hour it lasts.
    """
    last = last_monitoring_run(model_name, version)
    return last is not None and last.data.tags.get("lepton.alert") == "true"


def _reference(champion: Any, classes: int) -> ImageStats:
    uri = (champion.tags or {}).get("lepton.snapshot_uri")
    if not uri or not storage.exists(storage.join(uri, "manifest.json")):
        raise InputDataError(
            f"the training snapshot of v{champion.version} is gone, so there is no reference "
            "to compare production with",
            where=uri or f"version {champion.version}",
        )
    return reference_stats(uri, classes)


def _scoring_runs(
    model_name: str, version: str, classes: list[str], window_hours: float
) -> tuple[ImageStats, list[str]]:
    """The scoring runs of this champion version in the window, summed."""
    import mlflow

    since = datetime.now(UTC) - timedelta(hours=window_hours)
    query = (
        f"tags.`lepton.step` = 'score' and tags.`lepton.model_name` = '{quoted_name(model_name)}' "
        f"and tags.`lepton.model_version` = '{version}' "
        f"and attributes.start_time >= {int(since.timestamp() * 1000)}"
    )
    with tracking.tracking_errors("reading the scoring runs"):
        experiment = mlflow.get_experiment_by_name(production_experiment())
        runs = mlflow.search_runs(
            [experiment.experiment_id], query, max_results=5000, output_format="list"
        )
    stats = ImageStats(len(classes))
    for run in runs:
        stats.merge(ImageStats.from_metrics(run.data.metrics, len(classes)))
    return stats, [f"runs:/{run.info.run_id}" for run in runs]


def server_stats(url: str, model_name: str, version: str, classes: list[str]) -> ImageStats:
    """A serving `/metrics` page's counters for `version` (since the server started)."""
    samples = _read_metrics(url)
    stats = ImageStats(len(classes))
    mine = {
        name: [
            (labels, value)
            for labels, value in values
            if labels.get("model") == model_name and labels.get("version") == version
        ]
        for name, values in samples.items()
    }
    for labels, value in mine.get("lepton_serving_predicted_class_total", []):
        if labels.get("class_name") in classes:
            stats.class_counts[classes.index(labels["class_name"])] += int(value)
    buckets = sorted(
        (float(labels["le"]), value)
        for labels, value in mine.get("lepton_serving_input_pixel_mean_bucket", [])
    )
    cumulative = np.asarray([value for _, value in buckets][:BINS])
    if len(cumulative) == BINS:
        stats.histogram = np.diff(cumulative, prepend=0).astype(np.int64)
    stats.count = int(sum(v for _, v in mine.get("lepton_serving_input_pixel_mean_count", [])))
    stats.pixel_mean_sum = sum(v for _, v in mine.get("lepton_serving_input_pixel_mean_sum", []))
    return stats


def _read_metrics(url: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Prometheus text from an http(s) URL, at most MAX_METRICS_BYTES.

    What it holds is never echoed (the URL is an operator's, the answer may be anything).
    """
    from lepton_tasks.serving.metrics import parse_exposition

    where = redact(url)
    if not url.lower().startswith(("http://", "https://")):
        raise UsageError("a serving metrics URL must be http:// or https://", where=where)
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            text = response.read(MAX_METRICS_BYTES + 1)
    except OSError as exc:
        raise TrackingUnavailableError(
            f"cannot read serving metrics: {type(exc).__name__}", where=where
        ) from exc
    if len(text) > MAX_METRICS_BYTES:
        raise InputDataError(
            f"the metrics page is larger than {MAX_METRICS_BYTES:,} bytes", where=where
        )
    try:
        return parse_exposition(text.decode(errors="replace"))
    except ValueError:
        raise InputDataError("not a Prometheus metrics page", where=where) from None


def _feedback(
    model_name: str, champion: Any, uri: str | None, sources: list[str], classes: int
) -> ImageStats:
    """The champion's hits on labelled feedback (only the counts of right and wrong).

    A batch that cannot be read, or does not fit the champion, is left out with a warning:
    judging it is ingest's and validate's job, not the monitor's. At most MAX_FEEDBACK
    examples are scored per check.
    """
    stats = ImageStats(classes)
    batches = _feedback_batches(champion, uri)
    if not batches:
        return stats
    pinned = pin_version(model_name, champion)  # the version checked, not whatever is now
    for batch in batches:
        if stats.labelled >= MAX_FEEDBACK:
            break
        where = batch.origin or batch.uri
        if not fits(batch.image_shape, pinned.input_shape):
            log.warning("feedback %s left out: images of shape %s", where, batch.image_shape)
            continue
        try:
            _count_hits(batch, pinned, stats)
        except (InputDataError, *readers.READ_ERRORS) as exc:
            log.warning("feedback %s left out: %s", where, type(exc).__name__)
            continue
        sources.append(where)
    return stats


def _count_hits(batch: readers.Batch, pinned: Any, stats: ImageStats) -> None:
    images, labels = next(batch.read_chunks(MAX_FEEDBACK - stats.labelled))  # one chunk
    predicted = predict_probabilities(pinned, images).argmax(axis=1)
    stats.count_hits(labels, predicted, pinned.class_names)


def _feedback_batches(champion: Any, uri: str | None) -> list[readers.Batch]:
    if uri:
        return readers.open_source(uri)
    zone = get_settings().landing
    if not storage.exists(zone):
        return []
    since = datetime.fromtimestamp(champion.creation_timestamp / 1000, UTC)
    batches = []
    for entry in readers.dataset_entries(zone, quiet=True):
        if (readers.landed_at(entry, zone) or since) <= since:
            continue
        try:
            batches += readers.open_source(entry)
        except (InputDataError, *readers.READ_ERRORS) as exc:
            log.warning("feedback %s left out: %s", entry, type(exc).__name__)
    return batches


def drift_checks(
    reference: ImageStats, production: ImageStats, settings: Settings
) -> list[DriftCheck]:
    """The checks that have enough data to be judged."""
    checks = []
    if production.count >= settings.drift_min_examples:
        shift = abs(production.pixel_mean - reference.pixel_mean)
        psi = population_stability(reference.histogram, production.histogram)
        checks += [
            _check(
                "pixel_mean_shift",
                shift,
                settings.drift_max_pixel_mean_shift,
                f"mean pixel {production.pixel_mean:.1f} vs {reference.pixel_mean:.1f} in training",
            ),
            _check("pixel_psi", psi, settings.drift_max_psi, "per-image mean pixel distribution"),
        ]
        if production.class_counts.sum() >= settings.drift_min_examples:
            kl = kl_divergence(production.class_counts, reference.class_counts)
            checks.append(
                _check(
                    "prediction_kl",
                    kl,
                    settings.drift_max_prediction_kl,
                    "predicted classes vs training classes",
                )
            )
    if production.labelled >= MIN_FEEDBACK:
        accuracy = production.correct / production.labelled
        checks.append(
            DriftCheck(
                name="feedback_accuracy",
                value=round(accuracy, 6),
                threshold=settings.accuracy_floor,
                alert=accuracy < settings.accuracy_floor,
                detail=f"accuracy {accuracy:.4f} on {production.labelled} labelled feedback examples, "
                f"floor {settings.accuracy_floor}",
            )
        )
    return checks


def _check(name: str, value: float, threshold: float, what: str) -> DriftCheck:
    alert = value > threshold
    return DriftCheck(
        name=name,
        value=round(value, 6),
        threshold=threshold,
        alert=alert,
        detail=f"{name} {value:.3f} {'>' if alert else '<='} {threshold:g} ({what})",
    )


def _log_run(result: MonitorResult) -> tuple[str, str]:
    import mlflow

    tags = {
        "lepton.model_name": result.model_name,
        "lepton.model_version": result.champion_version or "",
        "lepton.alert": str(result.alert).lower(),
        "lepton.new_alert": str(result.new_alert).lower(),
        "lepton.checks": json.dumps(
            [
                c.model_dump(include={"name", "value", "threshold", "alert", "detail"})
                for c in result.checks
            ]
        ),
        "mlflow.note.content": result.summary(),
    }
    with tracking.step_run("monitor", None, tags=tags, experiment=production_experiment()) as run:
        with tracking.tracking_errors("logging the monitoring run"):
            mlflow.log_metrics(
                {c.name: c.value for c in result.checks}
                | {
                    "production_examples": float(result.production_examples),
                    "alert": float(result.alert),
                }
            )
            mlflow.log_dict(
                result.model_dump(mode="json", exclude={"mlflow_run_id", "mlflow_experiment_id"}),
                "monitor.json",
            )
        return run.info.run_id, run.info.experiment_id
