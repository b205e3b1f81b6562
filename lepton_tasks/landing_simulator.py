"""A landing-zone simulator: a dataset dealt into dated batches, as if data arrived nightly.

`take` batches out of `batches` are present after a call, so successive calls with a growing
`take` let successive pipeline runs see the data grow. `corrupt` adds a batch that a real feed
could plausibly deliver and that validation (or ingest) must catch.
"""

from __future__ import annotations

import io
import logging
from datetime import date, timedelta

import numpy as np

from lepton_tasks import storage
from lepton_tasks.data import readers
from lepton_tasks.errors import UsageError
from lepton_tasks.results import BatchInfo, SimulateLandingResult, records_result

log = logging.getLogger(__name__)

CORRUPTIONS = ("skewed", "blank", "duplicates", "truncated")


def _load(source: str) -> tuple[np.ndarray, np.ndarray]:
    chunks = [c for b in readers.open_source(source) for c in b.read_chunks(readers.CHUNK_SIZE)]
    return np.concatenate([c[0] for c in chunks]), np.concatenate([c[1] for c in chunks])


def _npz_bytes(x: np.ndarray, y: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.savez_compressed(buffer, x=x, y=y)
    return buffer.getvalue()


def _corrupt(kind: str, x: np.ndarray, y: np.ndarray, size: int, seed: int) -> tuple[bytes, int]:
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(x), size=size, replace=False)
    if kind == "skewed":  # a feed that suddenly delivers one class only
        same = np.flatnonzero(y == y[pick[0]])
        pick = rng.choice(same, size=min(size, len(same)), replace=False)
        return _npz_bytes(x[pick], y[pick]), len(pick)
    if kind == "blank":  # a broken scanner: empty images
        return _npz_bytes(np.zeros_like(x[pick]), y[pick]), size
    if kind == "duplicates":  # a replayed upload
        quarter = pick[: size // 4]
        return _npz_bytes(x[quarter].repeat(4, axis=0), y[quarter].repeat(4)), len(quarter) * 4
    return _npz_bytes(x[pick], y[pick])[: size * 10], size  # an upload cut off half-way


@records_result
def simulate_landing(
    source: str,
    landing_uri: str,
    run_dir: str,
    batches: int = 3,
    take: int = 1,
    start_date: date = date(2026, 1, 1),
    corrupt: str | None = None,
    seed: int = 0,
) -> SimulateLandingResult:
    if not 1 <= take <= batches:
        raise UsageError(f"--take must be between 1 and --batches ({batches}), got {take}")
    if corrupt is not None and corrupt not in CORRUPTIONS:
        raise UsageError(f"--corrupt takes one of {', '.join(CORRUPTIONS)}, got '{corrupt}'")
    x, y = _load(source)
    order = np.random.default_rng(seed).permutation(len(x))
    parts = np.array_split(order, batches)
    written = []
    for index in range(take):
        name = f"batch-{start_date + timedelta(days=index):%Y-%m-%d}"
        uri = storage.join(landing_uri, f"{name}.npz")
        if not storage.exists(uri):
            storage.write_bytes(uri, _npz_bytes(x[parts[index]], y[parts[index]]))
        written.append(BatchInfo(name=name, uri=uri, count=len(parts[index])))
    if corrupt:
        name = f"batch-{start_date + timedelta(days=take):%Y-%m-%d}-{corrupt}"
        uri = storage.join(landing_uri, f"{name}.npz")
        size = max(50, len(parts[0]) // 2)
        data, count = _corrupt(corrupt, x, y, size, seed)
        storage.write_bytes(uri, data)
        written.append(BatchInfo(name=name, uri=uri, count=count))
    log.info("landing zone %s: %s", landing_uri, ", ".join(b.name for b in written))
    return SimulateLandingResult(run_dir=run_dir, landing_uri=landing_uri, batches=written)
