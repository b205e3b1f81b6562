"""The Docker runtime: each step a container of the task image, hardened, on the data volume.

It takes the same options and environment as the local runtime, and reads the step's outcome
the same way (`runtimes.outcome`): the result or error file the step wrote, never its log.
"""

from __future__ import annotations

import contextlib
import functools
import io
import tarfile
from collections.abc import Sequence
from typing import Any

from airflow.providers.docker.exceptions import DockerContainerFailedException
from airflow.providers.docker.operators.docker import DockerOperator

from lepton_airflow.connections import mlflow_environment
from lepton_airflow.runtimes.command import step_arguments
from lepton_airflow.runtimes.outcome import ERROR_FILE, RESULT_FILE, parse_result, raise_for_exit
from lepton_airflow.settings import RuntimeSettings
from lepton_airflow.ui.links import STEP_LINKS

# In the task image, owned by its user; an anonymous volume per container, so the files
# outlive the container's exit (a tmpfs would not) while the root filesystem stays read-only.
DOCKER_OUTCOME_DIR = "/run/lepton"
# What a step container may not do: write outside its volumes, gain privileges, use capabilities.
HARDENED_HOST_CONFIG = {
    "read_only": True,
    "cap_drop": ["ALL"],
    "security_opt": ["no-new-privileges"],
}


class LeptonDockerOperator(DockerOperator):
    """DockerOperator whose XCom is the step's result file, copied out of the stopped container."""

    operator_extra_links = STEP_LINKS
    template_fields: Sequence[str] = (*DockerOperator.template_fields, "options")

    def __init__(self, *, step: str, options: dict[str, Any], **kwargs: Any) -> None:
        # This class removes the container itself, after reading the outcome out of it.
        kwargs["auto_remove"] = "never"
        super().__init__(command=[step], **kwargs)
        self.step = step
        self.options = options

    def render_template_fields(self, context: Any, jinja_env: Any = None) -> None:
        super().render_template_fields(context, jinja_env)
        self.command = [self.step, *step_arguments(self.options)]

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


def docker_step_operator(
    name: str,
    options: dict[str, Any],
    environment: dict[str, str],
    secrets: dict[str, str],
    settings: RuntimeSettings,
    common: dict[str, Any],
    *,
    gpu: bool,
) -> LeptonDockerOperator:
    """The step as a container of the task image (the GPU image for a GPU step)."""
    from docker.types import DeviceRequest, Mount

    return LeptonDockerOperator(
        step=name,
        options=options,
        image=settings.gpu_task_image if gpu else settings.task_image,
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
