"""`step_operator(...)`: one pipeline step as an Airflow task, in the runtime configured.

Options are keyword arguments (`snapshot=...` becomes `--snapshot=...`), kept as a mapping
through templating and turned into the command line after rendering (`runtimes.command`), the
same for a local process, a Docker container or a Kubernetes pod. Values may be Jinja templates
or XComArgs (an upstream step's result field), which also sets the dependency.
"""

from __future__ import annotations

import logging
from typing import Any

from lepton_airflow.settings import RuntimeSettings, runtime_settings, step_environment

GPU_STEPS = frozenset({"train"})
log = logging.getLogger(__name__)


class ParamValue:
    """A DAG param's value as the run has it, native: an empty param stays None (and its
    option is left out), where a Jinja template would render the text "None".

    Airflow resolves any template-field value that has `resolve(context)` at run time, as it
    does an XComArg.
    """

    def __init__(self, name: str) -> None:
        self.name = name

    def resolve(self, context: Any) -> Any:
        return context["params"][self.name]

    def __repr__(self) -> str:  # what the UI shows before rendering
        return f"{{{{ params.{self.name} }}}}"


def param_value(name: str) -> ParamValue:
    """`epochs=param_value("epochs")`: the option gets the run's param, None included."""
    return ParamValue(name)


def step_operator(
    name: str,
    *,
    task_id: str | None = None,
    settings: RuntimeSettings | None = None,
    operator_kwargs: dict[str, Any] | None = None,
    **options: Any,
) -> Any:
    """The operator that runs `lepton-tasks <name>` with `options` in LEPTON_RUNTIME."""
    settings = settings or runtime_settings()
    # multiple_outputs: each field of the step's result is its own XCom, so downstream tasks
    # can take `upstream.output["snapshot_uri"]`; the whole result stays the return_value.
    common = {
        "task_id": task_id or name.replace("-", "_"),
        "multiple_outputs": True,
        **(operator_kwargs or {}),
    }
    environment, secrets = step_environment()
    gpu = name in GPU_STEPS and settings.train_gpus > 0
    if settings.runtime == "docker":
        from lepton_airflow.runtimes.docker_container import docker_step_operator

        return docker_step_operator(name, options, environment, secrets, settings, common, gpu=gpu)
    if name == "train" and settings.train_workers > 1 and settings.runtime != "kubernetes":
        log.warning(
            "LEPTON_TRAIN_WORKERS=%d applies to the kubernetes runtime only; the %s runtime "
            "trains in one process (give TF_CONFIG to processes you start yourself)",
            settings.train_workers,
            settings.runtime,
        )
    if settings.runtime == "kubernetes" and name == "train" and settings.train_workers > 1:
        from lepton_airflow.runtimes.kubernetes_job import kubernetes_train_job_operator

        return kubernetes_train_job_operator(name, options, environment, settings, common, gpu=gpu)
    if settings.runtime == "kubernetes":
        from lepton_airflow.runtimes.kubernetes_pod import kubernetes_step_operator

        return kubernetes_step_operator(name, options, environment, settings, common, gpu=gpu)
    from lepton_airflow.runtimes.local_process import LeptonStepOperator

    return LeptonStepOperator(
        step=name,
        options=options,
        environment=environment,
        secret_environment=secrets,
        **common,
    )


def _anything_new(unchanged_since: str | None) -> bool:
    if unchanged_since:
        log.info("unchanged since v%s: skipping the steps after check-inputs", unchanged_since)
    return not unchanged_since


def proceed_if_changed(check: Any) -> Any:
    """A short circuit after `check-inputs`: when an earlier run had the same inputs, every task
    after it is skipped (the pipeline's end, a teardown, still runs and says so)."""
    from airflow.providers.standard.operators.python import ShortCircuitOperator

    return ShortCircuitOperator(
        task_id="anything_new",
        python_callable=_anything_new,
        op_args=[check.output["unchanged_since"]],
    )
