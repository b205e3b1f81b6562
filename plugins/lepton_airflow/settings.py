"""Orchestration settings (`LEPTON_*`), read from the environment when a DAG file is parsed.

`RuntimeSettings` extends the steps' `lepton_tasks.settings.Settings`: one `LEPTON_` prefix, one
class per layer, each variable defined once. Only environment variables: no database,
connection or Variable lookups at parse time.
"""

from __future__ import annotations

import os
from functools import lru_cache
from typing import Literal

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from lepton_tasks.settings import Settings

# Airflow stamps each log line; the step's own timestamp would be a second one.
ORCHESTRATED_ENVIRONMENT = {"LEPTON_LOG_TIMESTAMPS": "0"}
SECRET_WORDS = ("PASSWORD", "TOKEN", "SECRET", "KEY")


class RuntimeSettings(Settings):
    """The steps' settings plus those of the orchestrator alone (runtime, schedule, images)."""

    model_config = SettingsConfigDict(env_prefix="LEPTON_", extra="ignore")

    runtime: Literal["local", "docker", "kubernetes"] = "local"
    schedule: str = Field(default="0 2 * * *", description="Nightly retraining cron, UTC.")
    landing_poll_s: float = Field(
        default=15.0, gt=0, description="How often the triggerer looks for landed batches."
    )

    monitor_schedule: str = Field(default="30 * * * *", description="Drift checks, UTC cron.")
    retrain_on_alert: bool = Field(
        default=False,
        description="A monitoring alert triggers lepton_training (the form's default).",
    )

    mlflow_ui_url: str = Field(
        default="http://localhost:5000", description="Where users open MLflow (extra links)."
    )

    task_image: str = "lepton/task:0.2.0"
    gpu_task_image: str = "lepton/task-gpu:0.2.0"
    train_gpus: int = Field(default=1, ge=0, description="GPUs for train; 0 trains on CPU.")
    train_workers: int = Field(
        default=1,
        ge=1,
        description="Kubernetes runtime: worker pods for train, an indexed Job (TF_CONFIG).",
    )
    train_workers_service: str = Field(
        default="lepton-train-workers",
        description="The headless Service giving the train workers their DNS names.",
    )

    docker_url: str = "unix://var/run/docker.sock"
    docker_network: str | None = None
    docker_volume: str = "lepton-data"
    docker_data_path: str = "/opt/lepton"

    k8s_namespace: str = "lepton"
    k8s_service_account: str | None = None
    k8s_pvc: str | None = Field(default=None, description="PVC mounted at docker_data_path.")
    k8s_env_secret: str | None = Field(default=None, description="Secret with MLflow creds.")
    k8s_node_selector: dict[str, str] = Field(default_factory=dict)
    k8s_gpu_node_selector: dict[str, str] = Field(default_factory=dict)
    k8s_gpu_tolerations: list[dict[str, str]] = Field(
        default_factory=lambda: [
            {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
        ]
    )


# Settings of the orchestrator alone, derived from the fields it adds to the steps' settings:
# they are not handed to the steps.
ORCHESTRATION_ONLY = frozenset(
    f"LEPTON_{name.upper()}"
    for name in RuntimeSettings.model_fields
    if name not in Settings.model_fields
)


@lru_cache(maxsize=1)
def runtime_settings() -> RuntimeSettings:
    return RuntimeSettings()


def step_environment() -> tuple[dict[str, str], dict[str, str]]:
    """What every step gets, in every runtime: (plain variables, secret variables).

    The steps are configured by `LEPTON_*` and `MLFLOW_*` variables only, so the same values
    reach a subprocess, a container and a pod.
    """
    plain: dict[str, str] = {}
    secret: dict[str, str] = {}
    for key, value in sorted(os.environ.items()):
        if not key.startswith(("LEPTON_", "MLFLOW_")) or key in ORCHESTRATION_ONLY:
            continue
        target = secret if any(word in key for word in SECRET_WORDS) else plain
        target[key] = value
    return {**plain, **ORCHESTRATED_ENVIRONMENT}, secret
