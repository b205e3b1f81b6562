"""The train step across N worker pods: a Kubernetes indexed Job (`LEPTON_TRAIN_WORKERS` > 1).

Each pod runs `lepton-tasks train` with `LEPTON_TRAIN_WORKERS=N`; Kubernetes gives it
`JOB_COMPLETION_INDEX` and the host name `<job>-<index>`, reachable as
`<job>-<index>.<LEPTON_TRAIN_WORKERS_SERVICE>` through the headless Service of
`deploy/helm/train-workers.yaml`. From those the step builds `TF_CONFIG`
(`lepton_tasks.distributed`) and trains with MultiWorkerMirroredStrategy, one GPU per pod.
Worker 0 is the chief: its result is the task's.

All workers run in lockstep, so the Job has no pod retries (`backoff_limit=0`): a failed worker
fails the Job, and the Airflow task's retry starts all of them again.
"""

from __future__ import annotations

from typing import Any

from airflow.providers.cncf.kubernetes.operators.job import KubernetesJobOperator
from airflow.sdk.exceptions import AirflowException

from lepton_airflow.runtimes.command import step_arguments
from lepton_airflow.runtimes.kubernetes_pod import (
    pod_termination,
    public_mlflow_env_vars,
    step_pod_arguments,
)
from lepton_airflow.runtimes.outcome import raise_for_exit
from lepton_airflow.settings import RuntimeSettings
from lepton_airflow.ui.links import STEP_LINKS

WORKER_LABEL = "lepton.dev/train-workers"


class LeptonTrainJobOperator(KubernetesJobOperator):
    """The train step as an indexed Job of N worker pods; returns the chief's result."""

    operator_extra_links = STEP_LINKS
    template_fields = (*KubernetesJobOperator.template_fields, "options")

    def __init__(self, *, step: str, options: dict[str, Any], workers: int, **kwargs: Any) -> None:
        super().__init__(
            cmds=["lepton-tasks"],
            arguments=[step],
            completion_mode="Indexed",
            completions=workers,
            parallelism=workers,
            backoff_limit=0,
            wait_until_job_complete=True,
            **kwargs,
        )
        self.step = step
        self.options = options
        self.workers = workers

    def render_template_fields(self, context: Any, jinja_env: Any = None) -> None:
        super().render_template_fields(context, jinja_env)
        self.arguments = [self.step, *step_arguments(self.options)]

    def execute(self, context: Any) -> Any:

        self.env_vars = [*self.env_vars, *public_mlflow_env_vars()]
        try:
            return chief_result(super().execute(context), self.workers)
        except AirflowException:
            self.raise_for_failed_worker()
            raise  # no worker says why: the provider's message stands

    def raise_for_failed_worker(self) -> None:
        """The first failed worker's exit code and message, by the steps' exit-code policy
        (skip, fail without retry, retry), as a single pod's would be."""
        for pod in getattr(self, "pods", None) or []:
            try:
                remote = self.pod_manager.read_pod(pod)
            except Exception:  # the pod may be gone already: the next one may tell
                continue
            code, message = pod_termination(remote, self.base_container_name)
            if code not in (None, 0):
                try:
                    raise_for_exit(self.step, code, message)
                except AirflowException as outcome:
                    raise outcome from None  # not the provider's message, which holds the spec


def chief_result(results: Any, workers: int) -> dict[str, Any]:
    """The chief's result among the workers' (the others print `train-worker` results)."""
    listed = results if isinstance(results, list) else [results]
    chiefs = [r for r in listed if isinstance(r, dict) and r.get("step") == "train"]
    if len(chiefs) != 1:
        raise AirflowException(
            f"the train Job's {workers} workers returned {len(chiefs)} chief results, not one"
        )
    return chiefs[0]


def kubernetes_train_job_operator(
    name: str,
    options: dict[str, Any],
    environment: dict[str, str],
    settings: RuntimeSettings,
    common: dict[str, Any],
    *,
    gpu: bool,
) -> LeptonTrainJobOperator:
    """`train` as an indexed Job of `settings.train_workers` pods, each like the step's pod."""
    from kubernetes.client import models as k8s

    workers = {
        "LEPTON_TRAIN_WORKERS": str(settings.train_workers),
        "LEPTON_TRAIN_WORKERS_SERVICE": settings.train_workers_service,
    }
    return LeptonTrainJobOperator(
        step=name,
        options=options,
        workers=settings.train_workers,
        labels={WORKER_LABEL: "true"},
        # the pods' DNS names <job>-<index>.<service>: the headless Service selects WORKER_LABEL
        full_pod_spec=k8s.V1Pod(
            spec=k8s.V1PodSpec(containers=[], subdomain=settings.train_workers_service)
        ),
        ttl_seconds_after_finished=3600,
        **step_pod_arguments(name, {**environment, **workers}, settings, gpu=gpu),
        **common,
    )
