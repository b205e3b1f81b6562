"""One settings object for every step, read from `LEPTON_*` environment variables.

Nothing here touches the filesystem: folders are created by the steps that write into them.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LEPTON_", extra="ignore")

    home: Path = Field(
        default=Path(".lepton"),
        description="Project-local folder for the embedded defaults (MLflow database, artifacts).",
    )
    artifact_root: str | None = Field(
        default=None, description="Where run folders live; defaults to <home>/runs."
    )
    quarantine_uri: str | None = Field(
        default=None,
        description="Where rejected data goes: landing-zone batches are moved here (default "
        "<landing>/_quarantine), copies of other rejected sources too (default <home>/quarantine).",
    )
    landing_uri: str | None = Field(
        default=None,
        description="The landing zone: the one folder whose batches Lepton may move "
        "(into quarantine); defaults to <home>/landing.",
    )
    snapshot_root_uri: str | None = Field(
        default=None,
        description="Where content-addressed snapshots live; defaults to <artifact root>/_snapshots.",
    )
    scoring_inbox_uri: str | None = Field(
        default=None,
        description="Where batches to score land (same landing protocol); defaults to "
        "<home>/inbox. Scored batches move to <inbox>/_scored/, bad ones to <inbox>/_quarantine/.",
    )
    predictions_uri: str | None = Field(
        default=None,
        description="Where scoring writes Parquet; defaults to <artifact root>/_predictions.",
    )
    # Bounds checked before anything is allocated: a batch's declared size (decompressed).
    max_batch_bytes: int = Field(default=4 * 1024**3, ge=1)
    max_image_side: int = Field(default=4096, ge=1)
    experiment_name: str = "lepton"
    model_name: str = "lepton-digits"
    litert_copy: bool = Field(
        default=True,
        description="Train writes a verified LiteRT copy; evaluate predicts with it (no TF).",
    )
    # None: the class set is read from the labels (and checked against the champion's).
    classes: tuple[str, ...] | None = None

    # Deterministic, content-hash based split: an example never changes split as data grows.
    val_fraction: float = Field(default=0.1, ge=0.0, lt=0.5)
    test_fraction: float = Field(default=0.1, gt=0.0, lt=0.5)

    # Data quality gates (validate step).
    max_duplicate_rate: float = Field(default=0.05, ge=0.0, le=1.0)
    min_examples_per_split: int = Field(default=20, ge=1)
    min_class_share: float = Field(default=0.02, ge=0.0, le=1.0)
    max_class_share: float = Field(default=0.35, ge=0.0, le=1.0)
    max_label_kl_divergence: float = Field(default=0.1, ge=0.0)
    max_pixel_mean_shift: float = Field(default=15.0, ge=0.0, description="In 0-255 units.")

    # Champion moves (register, rollback) hold a lock in the registry; a holder that died
    # leaves it, and it is broken once older than the stale age.
    registry_lock_timeout_s: float = Field(default=120.0, gt=0)
    registry_lock_stale_s: float = Field(default=900.0, gt=0)

    # Promotion gate (evaluate step).
    promotion_metric: str = "accuracy"
    min_improvement: float = 0.0
    accuracy_floor: float = Field(default=0.8, ge=0.0, le=1.0)
    # The gain must clear min_improvement at this one-sided confidence (paired bootstrap over
    # the test examples), and no class's recall may drop by more than max_class_recall_drop.
    gate_confidence: float = Field(default=0.95, gt=0.5, lt=1.0)
    gate_bootstrap_samples: int = Field(default=2000, ge=100)
    max_class_recall_drop: float = Field(default=0.05, ge=0.0, le=1.0)

    # Online serving (`lepton-tasks serve`): how often the champion alias is looked up, and
    # the largest request body read.
    serve_poll_s: float = Field(default=10.0, gt=0)
    serve_max_body_bytes: int = Field(default=32 * 1024**2, ge=1024)

    # Monitoring: production inputs and predictions against the champion's training data.
    drift_window_hours: float = Field(default=24.0, gt=0)
    drift_min_examples: int = Field(default=100, ge=1)
    drift_max_pixel_mean_shift: float = Field(default=15.0, ge=0.0, description="0-255 units.")
    serving_metrics_urls: list[str] = Field(
        default_factory=list,
        description="Serving /metrics pages (http/https) whose counters the monitor reads.",
    )
    drift_max_psi: float = Field(
        default=0.25, ge=0.0, description="Population stability index of the per-image mean pixel."
    )
    drift_max_prediction_kl: float = Field(
        default=0.25, ge=0.0, description="KL(predicted-class shares || training class shares)."
    )

    @property
    def tracking_uri(self) -> str:
        """MLflow's own variable wins; the embedded default is SQLite under `home`."""
        uri = os.environ.get("MLFLOW_TRACKING_URI")
        if uri:
            return uri
        return f"sqlite:///{self.home.resolve() / 'mlflow.db'}"

    @property
    def runs_root(self) -> str:
        return self.artifact_root or str(self.home.resolve() / "runs")

    @property
    def landing(self) -> str:
        return self.landing_uri or str(self.home.resolve() / "landing")

    @property
    def scoring_inbox(self) -> str:
        return self.scoring_inbox_uri or str(self.home.resolve() / "inbox")

    @property
    def predictions_root(self) -> str:
        return self.predictions_uri or f"{self.runs_root.rstrip('/')}/_predictions"

    @property
    def snapshot_root(self) -> str:
        return self.snapshot_root_uri or f"{self.runs_root.rstrip('/')}/_snapshots"

    @property
    def quarantine_root(self) -> str:
        return self.quarantine_uri or str(self.home.resolve() / "quarantine")


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
