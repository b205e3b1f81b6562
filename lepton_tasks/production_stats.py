"""What production sees, summed so that batches, scoring runs and a server's counters add up.

One summary per stream of images: the count, the distribution of each image's mean pixel
(16 bins over 0..255, the same bins the server's Prometheus histogram uses), and the predicted
classes. The champion's training split gives the reference, read shard by shard.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

# Bin edges of an image's mean pixel: shared by scoring runs, the server's histogram and the
# reference, so they can be compared bin by bin.
PIXEL_MEAN_EDGES = tuple(float(x) for x in np.linspace(0.0, 255.0, 17))
BINS = len(PIXEL_MEAN_EDGES) - 1


def image_means(images: np.ndarray) -> np.ndarray:
    """Each image's mean pixel, 0..255."""
    return images.reshape(len(images), -1).mean(axis=1, dtype=np.float64)


def mean_histogram(means: np.ndarray) -> np.ndarray:
    counts, _ = np.histogram(np.clip(means, 0.0, 255.0), bins=np.asarray(PIXEL_MEAN_EDGES))
    return counts.astype(np.int64)


@dataclass
class ImageStats:
    """Counts that add up across batches (and across runs)."""

    classes: int
    count: int = 0
    pixel_mean_sum: float = 0.0
    histogram: np.ndarray = field(default_factory=lambda: np.zeros(BINS, np.int64))
    # predicted classes (production) or labels (the reference), by class index
    class_counts: np.ndarray | None = None
    labelled: int = 0
    correct: int = 0

    def __post_init__(self) -> None:
        if self.class_counts is None:
            self.class_counts = np.zeros(self.classes, np.int64)

    def add(self, images: np.ndarray, predicted: np.ndarray | None = None) -> None:
        means = image_means(images)
        self.count += len(images)
        self.pixel_mean_sum += float(means.sum())
        self.histogram += mean_histogram(means)
        if predicted is not None:
            self.class_counts += np.bincount(predicted, minlength=self.classes)[: self.classes]

    def add_labels(self, labels: np.ndarray) -> None:
        """Class indices of labelled examples, counted as the reference's class shares."""
        self.class_counts += np.bincount(labels, minlength=self.classes)[: self.classes]

    def count_hits(self, labels: np.ndarray, predicted: np.ndarray, class_names: list[str]) -> None:
        """Right and wrong predictions where the label is known (None: unlabelled, skipped)."""
        from lepton_tasks.data.snapshot import _key

        known = np.asarray([label is not None for label in labels], dtype=bool)
        if not known.any():
            return
        truth = np.asarray([_key(label) for label in labels[known]], dtype=object)
        guessed = np.asarray(class_names, dtype=object)[predicted[known]]
        self.labelled += int(known.sum())
        self.correct += int((truth == guessed).sum())

    def merge(self, other: ImageStats) -> None:
        self.count += other.count
        self.pixel_mean_sum += other.pixel_mean_sum
        self.histogram += other.histogram
        self.class_counts += other.class_counts
        self.labelled += other.labelled
        self.correct += other.correct

    @property
    def pixel_mean(self) -> float:
        return self.pixel_mean_sum / self.count if self.count else float("nan")

    @property
    def accuracy(self) -> float | None:
        return self.correct / self.labelled if self.labelled else None

    def as_metrics(self) -> dict[str, float]:
        """Flat metrics (MLflow): counts by bin and by class index, so runs can be summed."""
        metrics = {"examples": float(self.count), "pixel_mean": self.pixel_mean}
        metrics |= {f"pixel_hist_{i:02d}": float(n) for i, n in enumerate(self.histogram)}
        metrics |= {f"predicted_{i}": float(n) for i, n in enumerate(self.class_counts)}
        if self.accuracy is not None:
            metrics |= {"accuracy": self.accuracy, "labelled_examples": float(self.labelled)}
        return metrics

    @classmethod
    def from_metrics(cls, metrics: dict[str, float], classes: int) -> ImageStats:
        stats = cls(classes)
        stats.count = int(metrics.get("examples", 0))
        stats.pixel_mean_sum = metrics.get("pixel_mean", 0.0) * stats.count if stats.count else 0.0
        stats.histogram = np.asarray(
            [int(metrics.get(f"pixel_hist_{i:02d}", 0)) for i in range(BINS)], np.int64
        )
        stats.class_counts = np.asarray(
            [int(metrics.get(f"predicted_{i}", 0)) for i in range(classes)], np.int64
        )
        stats.labelled = int(metrics.get("labelled_examples", 0))
        stats.correct = round(metrics.get("accuracy", 0.0) * stats.labelled)
        return stats


def _shares(counts: np.ndarray, floor: float = 1e-4) -> np.ndarray:
    """Shares with empty bins floored: a bin empty on one side must not give infinity."""
    total = counts.sum()
    shares = counts / total if total else np.full(len(counts), 1.0 / len(counts))
    shares = np.maximum(shares, floor)
    return shares / shares.sum()


def population_stability(reference: np.ndarray, production: np.ndarray) -> float:
    """PSI of two histograms: under 0.1 stable, 0.1-0.25 moving, above 0.25 shifted."""
    expected, actual = _shares(reference), _shares(production)
    return float(np.sum((actual - expected) * np.log(actual / expected)))


def kl_divergence(production: np.ndarray, reference: np.ndarray) -> float:
    """KL(production || reference) of two count vectors, in nats."""
    p, q = _shares(production), _shares(reference)
    value = float(np.sum(p * np.log(p / q)))
    return value if math.isfinite(value) else float("inf")


def reference_stats(snapshot_uri: str, classes: int) -> ImageStats:
    """The training split of a snapshot, one shard at a time (memory: one shard)."""
    from lepton_tasks.data.snapshot import iter_shards

    stats = ImageStats(classes)
    for shard in iter_shards(snapshot_uri, "train"):
        stats.add(shard["x"])
        stats.add_labels(shard["y"].astype(np.int64))
    return stats
