"""The server's Prometheus metrics, in a registry of its own (nothing global to collide with)."""

from __future__ import annotations

from functools import partial

import numpy as np

from lepton_tasks.production_stats import PIXEL_MEAN_EDGES, image_means

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class ServingMetrics:
    """Requests, errors and latency; the version served; what the model sees and predicts."""

    def __init__(self, model_name: str) -> None:
        from prometheus_client import (
            CollectorRegistry,
            Counter,
            Gauge,
            Histogram,
            disable_created_metrics,
        )

        disable_created_metrics()  # `_created` series double the page for nothing we use
        self.model = model_name
        self.registry = CollectorRegistry()
        counter, gauge, histogram = (
            partial(kind, registry=self.registry) for kind in (Counter, Gauge, Histogram)
        )
        self.requests = counter(
            "lepton_serving_requests", "Requests by endpoint and status code.", ["endpoint", "code"]
        )
        self.latency = histogram(
            "lepton_serving_request_seconds",
            "Time to answer, by endpoint.",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
        )
        self.rejected = counter(
            "lepton_serving_rejected_requests",
            "Requests refused, by reason: bad input (4xx), or no champion yet (503).",
            ["reason"],
        )
        self.version = gauge(
            "lepton_serving_model_version",
            "The registered version being served (0: none).",
            ["model"],
        )
        self.swaps = counter(
            "lepton_serving_model_swaps", "Champion changes picked up and swapped in.", ["model"]
        )
        self.load_failures = counter(
            "lepton_serving_model_load_failures",
            "Champion versions that failed to load.",
            ["model"],
        )
        self.images = counter("lepton_serving_images", "Images predicted.", ["model", "version"])
        self.predicted = counter(
            "lepton_serving_predicted_class",
            "Predictions by version and class.",
            ["model", "version", "class_name"],
        )
        self.pixel_mean = histogram(
            "lepton_serving_input_pixel_mean",
            "Each input image's mean pixel (0-255), by the version that saw it.",
            ["model", "version"],
            buckets=PIXEL_MEAN_EDGES[1:],
        )
        self.version.labels(model_name).set(0)

    def served(
        self, version: str, images: np.ndarray, probabilities: np.ndarray, names: list[str]
    ) -> None:
        self.images.labels(self.model, version).inc(len(images))
        counts = np.bincount(probabilities.argmax(axis=1), minlength=len(names))
        for name, count in zip(names, counts, strict=False):
            if count:
                self.predicted.labels(self.model, version, name).inc(int(count))
        histogram = self.pixel_mean.labels(self.model, version)
        for mean in image_means(images):
            histogram.observe(float(mean))

    def swapped(self, version: str) -> None:
        self.version.labels(self.model).set(float(version))
        self.swaps.labels(self.model).inc()

    def exposition(self) -> tuple[bytes, str]:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST


def parse_exposition(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Samples by name from Prometheus text (for the monitor and tests)."""
    from prometheus_client.parser import text_string_to_metric_families

    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((dict(sample.labels), float(sample.value)))
    return samples
