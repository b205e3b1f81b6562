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
    # Bounds checked before anything is allocated: a batch's declared size (decompressed).
    max_batch_bytes: int = Field(default=4 * 1024**3, ge=1)
    max_image_side: int = Field(default=4096, ge=1)
    experiment_name: str = "lepton"
    model_name: str = "lepton-digits"
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
    def snapshot_root(self) -> str:
        return self.snapshot_root_uri or f"{self.runs_root.rstrip('/')}/_snapshots"

    @property
    def quarantine_root(self) -> str:
        return self.quarantine_uri or str(self.home.resolve() / "quarantine")


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
