"""Step operators for the container runtimes: a Docker container or a Kubernetes pod.

They take the same command line and environment as the local runtime; XCom is the step's JSON
result. Each class keeps its own `__init__`: Airflow's operator metaclass wraps the `__init__`
of every operator class, which a shared mixin `__init__` does not survive.
"""

from __future__ import annotations

from typing import Any

from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
from airflow.providers.docker.operators.docker import DockerOperator

from lepton_airflow.links import STEP_LINKS
from lepton_airflow.operators import SKIP_EXIT_CODE, drop_empty_options, parse_result


class LeptonDockerOperator(DockerOperator):
    """DockerOperator whose XCom is the step's parsed JSON result."""

    operator_extra_links = STEP_LINKS

    def __init__(self, *, step: str, **kwargs: Any) -> None:
        kwargs.setdefault("skip_on_exit_code", SKIP_EXIT_CODE)  # nothing landed: skip the night
        super().__init__(**kwargs)
        self.step = step

    def render_template_fields(self, context: Any, jinja_env: Any = None) -> None:
        super().render_template_fields(context, jinja_env)
        self.command = drop_empty_options(self.command)

    def execute(self, context: Any) -> dict[str, Any]:
        return parse_result(super().execute(context), self.step)


class LeptonPodOperator(KubernetesPodOperator):
    """KubernetesPodOperator for a step; the pod writes its result to /airflow/xcom/return.json."""

    operator_extra_links = STEP_LINKS

    def __init__(self, *, step: str, **kwargs: Any) -> None:
        kwargs.setdefault("skip_on_exit_code", SKIP_EXIT_CODE)  # nothing landed: skip the night
        super().__init__(**kwargs)
        self.step = step

    def render_template_fields(self, context: Any, jinja_env: Any = None) -> None:
        super().render_template_fields(context, jinja_env)
        self.arguments = drop_empty_options(self.arguments)
