"""The Kubernetes runtime: each step a pod of the task image, non-root and read-only.

The pod writes its result to /airflow/xcom/return.json (read by the XCom sidecar) and its error
record to the termination log, which the pod's status carries back (`runtimes.outcome`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
from airflow.sdk.exceptions import AirflowException, AirflowSkipException

from lepton_airflow.connections import mlflow_environment
from lepton_airflow.runtimes.command import step_arguments
from lepton_airflow.runtimes.outcome import raise_for_exit
from lepton_airflow.settings import RuntimeSettings
from lepton_airflow.ui.links import STEP_LINKS

POD_RESULT_FILE = "/airflow/xcom/return.json"
POD_ERROR_FILE = "/dev/termination-log"
TASK_UID = 10001  # the task image's user (docker/task.Dockerfile)


class LeptonPodOperator(KubernetesPodOperator):
    """KubernetesPodOperator for a step, whose outcome is read from the pod, never its log."""

    operator_extra_links = STEP_LINKS
    template_fields: Sequence[str] = (*KubernetesPodOperator.template_fields, "options")

    def __init__(self, *, step: str, options: dict[str, Any], **kwargs: Any) -> None:
        super().__init__(cmds=["lepton-tasks"], arguments=[step], **kwargs)
        self.step = step
        self.options = options

    def render_template_fields(self, context: Any, jinja_env: Any = None) -> None:
        super().render_template_fields(context, jinja_env)
        self.arguments = [self.step, *step_arguments(self.options)]

    def execute(self, context: Any) -> Any:
        self.env_vars = [*self.env_vars, *public_mlflow_env_vars()]
        return super().execute(context)

    def cleanup(
        self,
        pod: Any,
        remote_pod: Any,
        xcom_result: dict | None = None,
        context: Any = None,
    ) -> None:
        try:
            super().cleanup(pod, remote_pod, xcom_result, context)
        except AirflowSkipException:
            raise
        except AirflowException:
            code, message = pod_termination(remote_pod, self.base_container_name)
            if code is None:
                raise  # the pod never ran the step: the provider's own message says why
            try:
                raise_for_exit(self.step, code, message)
            except AirflowException as outcome:
                raise outcome from None  # not the provider's message, which holds the pod spec


def public_mlflow_env_vars() -> list[Any]:
    """The MLflow server's address for a pod, read when the task runs.

    Only the address: credentials in a pod spec are readable by anyone who may list pods, so
    the pods take them from the Secret LEPTON_K8S_ENV_SECRET names.
    """
    from kubernetes.client import models as k8s

    public = {k: v for k, v in mlflow_environment().items() if k == "MLFLOW_TRACKING_URI"}
    return [k8s.V1EnvVar(name=k, value=v) for k, v in public.items()]


def pod_termination(remote_pod: Any, container_name: str) -> tuple[int | None, str | None]:
    """The step container's exit code and termination message, from the pod's status."""
    statuses = (
        remote_pod.status.container_statuses if remote_pod and remote_pod.status else None
    ) or []
    for status in statuses:
        terminated = status.state.terminated if status.state else None
        if status.name == container_name and terminated is not None:
            return terminated.exit_code, terminated.message
    return None, None


def _pod_volumes(settings: RuntimeSettings) -> tuple[list[Any], list[Any]]:
    """An emptyDir at /tmp (the root filesystem is read-only), and the data PVC if any."""
    from kubernetes.client import models as k8s

    volumes = [k8s.V1Volume(name="tmp", empty_dir=k8s.V1EmptyDirVolumeSource())]
    mounts = [k8s.V1VolumeMount(name="tmp", mount_path="/tmp")]
    if settings.k8s_pvc:
        claim = k8s.V1PersistentVolumeClaimVolumeSource(claim_name=settings.k8s_pvc)
        volumes.append(k8s.V1Volume(name="lepton-data", persistent_volume_claim=claim))
        mounts.append(k8s.V1VolumeMount(name="lepton-data", mount_path=settings.docker_data_path))
    return volumes, mounts


def _pod_placement(settings: RuntimeSettings, gpu: bool) -> dict[str, Any]:
    """Resources, node selector and tolerations: a GPU step lands on a GPU node."""
    from kubernetes.client import models as k8s

    return {
        "container_resources": k8s.V1ResourceRequirements(
            requests={"cpu": "1", "memory": "2Gi"},
            limits={"nvidia.com/gpu": str(settings.train_gpus)} if gpu else None,
        ),
        "node_selector": {
            **settings.k8s_node_selector,
            **(settings.k8s_gpu_node_selector if gpu else {}),
        }
        or None,
        "tolerations": (
            [k8s.V1Toleration(**t) for t in settings.k8s_gpu_tolerations] if gpu else None
        ),
    }


def _pod_security() -> dict[str, Any]:
    """The task image's user, by number (the kubelet cannot check a name is not root); a fresh
    volume becomes writable for it through fsGroup."""
    from kubernetes.client import models as k8s

    return {
        "security_context": k8s.V1PodSecurityContext(fs_group=TASK_UID),
        "container_security_context": k8s.V1SecurityContext(
            run_as_non_root=True,
            run_as_user=TASK_UID,
            run_as_group=TASK_UID,
            read_only_root_filesystem=True,
            allow_privilege_escalation=False,
            capabilities=k8s.V1Capabilities(drop=["ALL"]),
        ),
    }


def kubernetes_step_operator(
    name: str,
    options: dict[str, Any],
    environment: dict[str, str],
    settings: RuntimeSettings,
    common: dict[str, Any],
    *,
    gpu: bool,
) -> LeptonPodOperator:
    """The step as a pod of the task image (the GPU image, on a GPU node, for a GPU step)."""
    return LeptonPodOperator(
        step=name,
        options=options,
        on_finish_action="delete_succeeded_pod",
        **step_pod_arguments(name, environment, settings, gpu=gpu),
        **common,
    )


def step_pod_arguments(
    name: str, environment: dict[str, str], settings: RuntimeSettings, *, gpu: bool
) -> dict[str, Any]:
    """What a step's pod is, for the pod operator and the train workers' Job alike: the task
    image, its environment (credentials from the Secret), volumes, placement and security."""
    from kubernetes.client import models as k8s

    env = {
        **environment,
        "LEPTON_HOME": settings.docker_data_path,
        "LEPTON_RESULT_FILE": POD_RESULT_FILE,
        "LEPTON_ERROR_FILE": POD_ERROR_FILE,
    }
    secret = settings.k8s_env_secret
    volumes, mounts = _pod_volumes(settings)
    return {
        "name": f"lepton-{name}",
        "namespace": settings.k8s_namespace,
        "image": settings.gpu_task_image if gpu else settings.task_image,
        "env_vars": [k8s.V1EnvVar(name=k, value=v) for k, v in env.items()],
        "env_from": (
            [k8s.V1EnvFromSource(secret_ref=k8s.V1SecretEnvSource(name=secret))] if secret else None
        ),
        "volumes": volumes,
        "volume_mounts": mounts,
        "service_account_name": settings.k8s_service_account,
        "do_xcom_push": True,
        "get_logs": True,
        "log_pod_spec_on_failure": False,  # the spec holds the step's environment
        **_pod_placement(settings, gpu),
        **_pod_security(),
    }
