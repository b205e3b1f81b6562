"""Step operators for the container runtimes: a Docker container or a Kubernetes pod.

They take the same command line and environment as the local runtime, and read the step's
outcome the same way (`lepton_airflow.outcome`): the result or error file the step wrote, never
its log. Each class keeps its own `__init__`: Airflow's operator metaclass wraps the `__init__`
of every operator class, which a shared mixin `__init__` does not survive.
"""

from __future__ import annotations

import contextlib
import functools
import io
import tarfile
from typing import Any

from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
from airflow.providers.docker.exceptions import DockerContainerFailedException
from airflow.providers.docker.operators.docker import DockerOperator
from airflow.sdk.exceptions import AirflowException, AirflowSkipException

from lepton_airflow.connections import mlflow_environment
from lepton_airflow.links import STEP_LINKS
from lepton_airflow.operators import drop_empty_options
from lepton_airflow.outcome import ERROR_FILE, RESULT_FILE, parse_result, raise_for_exit

# In the task image, owned by its user; an anonymous volume per container, so the files
# outlive the container's exit (a tmpfs would not) while the root filesystem stays read-only.
DOCKER_OUTCOME_DIR = "/run/lepton"
# Kubernetes: the XCom sidecar reads the result; the error becomes the termination message.
POD_RESULT_FILE = "/airflow/xcom/return.json"
POD_ERROR_FILE = "/dev/termination-log"
# What a step container may not do: write outside its volumes, gain privileges, use capabilities.
HARDENED_HOST_CONFIG = {
    "read_only": True,
    "cap_drop": ["ALL"],
    "security_opt": ["no-new-privileges"],
}


class LeptonDockerOperator(DockerOperator):
    """DockerOperator whose XCom is the step's result file, copied out of the stopped container."""

    operator_extra_links = STEP_LINKS

    def __init__(self, *, step: str, **kwargs: Any) -> None:
        # This class removes the container itself, after reading the outcome out of it.
        kwargs["auto_remove"] = "never"
        super().__init__(**kwargs)
        self.step = step

    def render_template_fields(self, context: Any, jinja_env: Any = None) -> None:
        super().render_template_fields(context, jinja_env)
        self.command = drop_empty_options(self.command)

    def _harden(self) -> None:
        # DockerOperator builds the host config itself and has no read-only option.
        client = self.cli
        if not isinstance(client.create_host_config, functools.partial):
            client.create_host_config = functools.partial(
                client.create_host_config, **HARDENED_HOST_CONFIG
            )

    def execute(self, context: Any) -> dict[str, Any]:
        self._private_environment = {**self._private_environment, **mlflow_environment()}
        self._harden()
        try:
            # a failed container: its exit code and the step's error record below say why
            with contextlib.suppress(DockerContainerFailedException):
                super().execute(context)
            container = self.container["Id"]
            code = self.cli.inspect_container(container)["State"]["ExitCode"]
            if code != 0:
                raise_for_exit(self.step, code, self._copy_out(container, ERROR_FILE))
            return parse_result(self._copy_out(container, RESULT_FILE), self.step)
        finally:
            self._remove()

    def _remove(self) -> None:
        """Remove the container and its outcome volume; a failure here must not replace the
        step's own outcome, so it is only logged."""
        from docker.errors import APIError

        if not self.container:
            return
        try:
            self.cli.remove_container(self.container["Id"], v=True, force=True)
        except APIError as exc:
            self.log.warning("could not remove container %s: %s", self.container["Id"], exc)

    def on_kill(self) -> None:
        super().on_kill()
        self._remove()

    def _copy_out(self, container: str, name: str) -> str | None:
        from docker.errors import APIError

        try:
            chunks, stat = self.cli.get_archive(container, f"{DOCKER_OUTCOME_DIR}/{name}")
        except APIError:  # no such file: the step did not get that far
            return None
        with tarfile.open(fileobj=io.BytesIO(b"".join(chunks))) as archive:
            member = archive.extractfile(stat["name"])
            return member.read().decode() if member else None


class LeptonPodOperator(KubernetesPodOperator):
    """KubernetesPodOperator for a step; the pod writes its result to /airflow/xcom/return.json
    and its error record to the termination log, which the pod's status carries back."""

    operator_extra_links = STEP_LINKS

    def __init__(self, *, step: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.step = step

    def render_template_fields(self, context: Any, jinja_env: Any = None) -> None:
        super().render_template_fields(context, jinja_env)
        self.arguments = drop_empty_options(self.arguments)

    def execute(self, context: Any) -> Any:
        from kubernetes.client import models as k8s

        # Only the server's address: credentials in a pod spec are readable by anyone who may
        # list pods, so the pods take them from the Secret LEPTON_K8S_ENV_SECRET names.
        public = {k: v for k, v in mlflow_environment().items() if k == "MLFLOW_TRACKING_URI"}
        self.env_vars = [
            *self.env_vars,
            *(k8s.V1EnvVar(name=k, value=v) for k, v in public.items()),
        ]
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
