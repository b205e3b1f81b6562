"""`step(...)`: one pipeline step as an Airflow task, in the runtime the configuration picks.

The command line is built once, from keyword options (`snapshot=...` becomes `--snapshot ...`),
and handed unchanged to a local process, a Docker container or a Kubernetes pod. Values may be
Jinja templates or XComArgs (an upstream step's result field), which also sets the dependency.
"""

from __future__ import annotations

from typing import Any

from lepton_airflow.config import RuntimeSettings, runtime_settings, step_environment
from lepton_airflow.outcome import ERROR_FILE, RESULT_FILE

GPU_STEPS = frozenset({"train"})
TASK_UID = 10001  # the task image's user (docker/task.Dockerfile)


def command_arguments(options: dict[str, Any]) -> list[Any]:
    arguments: list[Any] = []
    for name, value in options.items():
        if value is None:
            continue
        arguments += [f"--{name.replace('_', '-')}", value]
    return arguments


def step(
    name: str,
    *,
    task_id: str | None = None,
    settings: RuntimeSettings | None = None,
    operator_kwargs: dict[str, Any] | None = None,
    **options: Any,
) -> Any:
    settings = settings or runtime_settings()
    # multiple_outputs: each field of the step's result is its own XCom, so downstream tasks
    # can take `upstream.output["snapshot_uri"]`; the whole result stays the return_value.
    common = {
        "task_id": task_id or name.replace("-", "_"),
        "multiple_outputs": True,
        **(operator_kwargs or {}),
    }
    arguments = command_arguments(options)
    environment, secrets = step_environment()
    if settings.runtime == "docker":
        return _docker(name, arguments, environment, secrets, settings, common)
    if settings.runtime == "kubernetes":
        return _kubernetes(name, arguments, environment, settings, common)
    from lepton_airflow.operators import LeptonStepOperator

    return LeptonStepOperator(
        step=name,
        arguments=arguments,
        environment=environment,
        secret_environment=secrets,
        **common,
    )


def _uses_gpu(name: str, settings: RuntimeSettings) -> bool:
    return name in GPU_STEPS and settings.train_gpus > 0


def _docker(
    name: str,
    arguments: list[Any],
    environment: dict[str, str],
    secrets: dict[str, str],
    settings: RuntimeSettings,
    common: dict[str, Any],
) -> Any:
    from docker.types import DeviceRequest, Mount

    from lepton_airflow.container_operators import DOCKER_OUTCOME_DIR, LeptonDockerOperator

    gpu = _uses_gpu(name, settings)
    return LeptonDockerOperator(
        step=name,
        image=settings.gpu_task_image if gpu else settings.task_image,
        command=[name, *arguments],
        environment={
            **environment,
            "LEPTON_HOME": settings.docker_data_path,
            "LEPTON_RESULT_FILE": f"{DOCKER_OUTCOME_DIR}/{RESULT_FILE}",
            "LEPTON_ERROR_FILE": f"{DOCKER_OUTCOME_DIR}/{ERROR_FILE}",
        },
        private_environment=secrets,
        docker_url=settings.docker_url,
        network_mode=settings.docker_network,
        # The root filesystem is read-only: the data volume, a tmpfs for library caches, and
        # an anonymous volume for the outcome files are the only places the step can write.
        mounts=[
            Mount(target=settings.docker_data_path, source=settings.docker_volume, type="volume"),
            Mount(target="/tmp", source=None, type="tmpfs"),
            Mount(target=DOCKER_OUTCOME_DIR, source=None, type="volume"),
        ],
        device_requests=(
            [DeviceRequest(count=settings.train_gpus, capabilities=[["gpu"]])] if gpu else None
        ),
        mount_tmp_dir=False,
        do_xcom_push=True,
        **common,
    )


def _kubernetes(
    name: str,
    arguments: list[Any],
    environment: dict[str, str],
    settings: RuntimeSettings,
    common: dict[str, Any],
) -> Any:
    from kubernetes.client import models as k8s

    from lepton_airflow.container_operators import (
        POD_ERROR_FILE,
        POD_RESULT_FILE,
        LeptonPodOperator,
    )

    gpu = _uses_gpu(name, settings)
    # The root filesystem is read-only; library caches go to an emptyDir at /tmp.
    volumes = [k8s.V1Volume(name="tmp", empty_dir=k8s.V1EmptyDirVolumeSource())]
    mounts = [k8s.V1VolumeMount(name="tmp", mount_path="/tmp")]
    if settings.k8s_pvc:
        volumes.append(
            k8s.V1Volume(
                name="lepton-data",
                persistent_volume_claim=k8s.V1PersistentVolumeClaimVolumeSource(
                    claim_name=settings.k8s_pvc
                ),
            )
        )
        mounts.append(k8s.V1VolumeMount(name="lepton-data", mount_path=settings.docker_data_path))
    env = {
        **environment,
        "LEPTON_HOME": settings.docker_data_path,
        "LEPTON_RESULT_FILE": POD_RESULT_FILE,
        "LEPTON_ERROR_FILE": POD_ERROR_FILE,
    }
    resources = k8s.V1ResourceRequirements(
        requests={"cpu": "1", "memory": "2Gi"},
        limits={"nvidia.com/gpu": str(settings.train_gpus)} if gpu else None,
    )
    return LeptonPodOperator(
        step=name,
        name=f"lepton-{name}",
        namespace=settings.k8s_namespace,
        image=settings.gpu_task_image if gpu else settings.task_image,
        cmds=["lepton-tasks"],
        arguments=[name, *arguments],
        env_vars=[k8s.V1EnvVar(name=k, value=v) for k, v in env.items()],
        env_from=(
            [k8s.V1EnvFromSource(secret_ref=k8s.V1SecretEnvSource(name=settings.k8s_env_secret))]
            if settings.k8s_env_secret
            else None
        ),
        container_resources=resources,
        node_selector={
            **settings.k8s_node_selector,
            **(settings.k8s_gpu_node_selector if gpu else {}),
        }
        or None,
        tolerations=(
            [k8s.V1Toleration(**t) for t in settings.k8s_gpu_tolerations] if gpu else None
        ),
        volumes=volumes,
        volume_mounts=mounts,
        service_account_name=settings.k8s_service_account,
        # the task image's user, by number (the kubelet cannot check a name is not root); a
        # fresh volume becomes writable for it through fsGroup
        security_context=k8s.V1PodSecurityContext(fs_group=TASK_UID),
        container_security_context=k8s.V1SecurityContext(
            run_as_non_root=True,
            run_as_user=TASK_UID,
            run_as_group=TASK_UID,
            read_only_root_filesystem=True,
            allow_privilege_escalation=False,
            capabilities=k8s.V1Capabilities(drop=["ALL"]),
        ),
        do_xcom_push=True,
        get_logs=True,
        log_pod_spec_on_failure=False,  # the spec holds the step's environment
        on_finish_action="delete_succeeded_pod",
        **common,
    )
