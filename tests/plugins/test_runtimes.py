"""Step runtimes: the local one for real; Docker and Kubernetes rendered, since no engine or
cluster exists here. All three must carry the same command line and environment."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from airflow.sdk.exceptions import AirflowException, AirflowFailException, AirflowSkipException

from lepton_airflow.operator_factory import step_operator as step
from lepton_airflow.runtimes.command import step_arguments
from lepton_airflow.runtimes.local_process import LeptonStepOperator
from lepton_airflow.settings import RuntimeSettings
from tests.airflow_env import load_dag

OPTIONS = {"run_dir": "/opt/lepton/runs/r1", "architecture": "lepton_cnn", "epochs": 3}
EXPECTED_ARGS = ["--run-dir=/opt/lepton/runs/r1", "--architecture=lepton_cnn", "--epochs=3"]


def test_options_become_arguments_after_rendering_and_empty_ones_are_left_out() -> None:
    options = {
        "run_dir": "r",
        "learning_rate": None,  # an empty param, rendered natively
        "force_promotion_reason": "",  # an empty template
        "reason": "None",  # text that happens to read None is a value
        "note": "--not-a-flag",  # so is text that starts with --
        "params": {"epochs": None},
        "data_docs": False,
        "min_improvement": 0.0,
    }
    assert step_arguments(options) == [
        "--run-dir=r",
        "--reason=None",
        "--note=--not-a-flag",
        '--params={"epochs": null}',
        "--no-data-docs",
        "--min-improvement=0.0",
    ]


def rendered(operator):
    """The operator after Airflow renders its templates (plain values here: no run needed)."""
    operator.render_template_fields(context={})
    return operator


def test_local_runtime_runs_the_step_and_returns_its_result(
    tmp_path: Path, lepton_env: Path
) -> None:
    operator = step("ingest", run_dir=str(tmp_path / "run"), source="sklearn:digits")
    assert isinstance(operator, LeptonStepOperator)
    assert operator.process_environment()["LEPTON_HOME"] == str(lepton_env)
    assert "AIRFLOW_HOME" not in operator.process_environment()
    result = operator.execute({})
    assert result["step"] == "ingest" and result["count"] == 1797
    assert Path(result["snapshot_uri"], "manifest.json").is_file()


def test_local_runtime_bad_data_fails_without_retry_and_carries_the_message(
    tmp_path: Path, lepton_env: Path
) -> None:
    missing = str(tmp_path / "nowhere.npz")
    operator = step("ingest", run_dir=str(tmp_path / "run"), source=missing)
    with pytest.raises(AirflowFailException, match=r"InputDataError: file not found .*\[exit 3\]"):
        operator.execute({})


def test_local_runtime_empty_landing_zone_skips(tmp_path: Path, lepton_env: Path) -> None:
    landing = tmp_path / "landing"
    (landing / "_quarantine" / "old-batch").mkdir(parents=True)  # rejected batches do not count
    operator = step("ingest", run_dir=str(tmp_path / "run"), source=str(landing), when_empty="skip")
    with pytest.raises(
        AirflowSkipException, match=r"NothingToIngestError: no batch had landed yet"
    ):
        operator.execute({})


def test_local_runtime_tracking_outage_is_retryable(
    tmp_path: Path, lepton_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = str(tmp_path / "run")
    step("ingest", run_dir=run).execute({})
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    operator = step("train", run_dir=run, epochs=1)
    with pytest.raises(AirflowException, match=r"TrackingUnavailableError.*\[exit 7\]") as caught:
        operator.execute({})
    assert not isinstance(caught.value, AirflowFailException)


def docker_settings(**overrides: object) -> RuntimeSettings:
    return RuntimeSettings(runtime="docker", docker_network="lepton", **overrides)


def test_docker_runtime_renders_image_command_env_and_gpu_only_for_train(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow:5000")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "s3cret")
    settings = docker_settings()
    train = rendered(step("train", settings=settings, **OPTIONS))
    ingest = step("ingest", settings=settings, run_dir="/opt/lepton/runs/r1")
    assert train.image == settings.gpu_task_image and ingest.image == settings.task_image
    assert train.command == ["train", *EXPECTED_ARGS]
    (request,) = train.device_requests
    assert request["Count"] == 1 and request["Capabilities"] == [["gpu"]]
    assert ingest.device_requests is None
    assert train.network_mode == "lepton"
    assert train.environment["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    assert train.environment["LEPTON_HOME"] == "/opt/lepton"
    assert "MLFLOW_TRACKING_PASSWORD" not in train.environment
    assert train._private_environment["MLFLOW_TRACKING_PASSWORD"] == "s3cret"
    assert "LEPTON_RUNTIME" not in train.environment
    data, tmp, outcome = train.mounts
    assert data["Target"] == "/opt/lepton" and data["Source"] == "lepton-data"
    assert tmp["Target"] == "/tmp" and tmp["Type"] == "tmpfs"
    assert outcome["Target"] == "/run/lepton" and outcome["Source"] is None  # anonymous
    assert train.environment["LEPTON_RESULT_FILE"] == "/run/lepton/result.json"
    assert train.environment["LEPTON_ERROR_FILE"] == "/run/lepton/error.json"
    assert train.environment["LEPTON_LOG_TIMESTAMPS"] == "0"
    assert train.auto_remove == "never"  # removed by the operator after reading the outcome
    no_gpu = step("train", settings=docker_settings(train_gpus=0), **OPTIONS)
    assert no_gpu.device_requests is None and no_gpu.image == settings.task_image


def k8s_settings() -> RuntimeSettings:
    return RuntimeSettings(
        runtime="kubernetes",
        k8s_pvc="lepton-data",
        k8s_node_selector={"pool": "ml"},
        k8s_gpu_node_selector={"cloud.google.com/gke-accelerator": "nvidia-l4"},
    )


def test_kubernetes_runtime_renders_the_train_pod(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.lepton:5000")
    settings = k8s_settings()
    operator = rendered(step("train", settings=settings, **OPTIONS))
    pod = operator.build_pod_request_obj(dry_run=True)
    container, sidecar = pod.spec.containers
    assert sidecar.name == "airflow-xcom-sidecar"  # it reads /airflow/xcom/return.json
    assert container.image == settings.gpu_task_image
    assert container.command == ["lepton-tasks"]
    assert container.args == ["train", *EXPECTED_ARGS]
    assert container.resources.limits == {"nvidia.com/gpu": "1"}
    env = {e.name: e.value for e in container.env}
    assert env["MLFLOW_TRACKING_URI"] == "http://mlflow.lepton:5000"
    assert env["LEPTON_RESULT_FILE"] == "/airflow/xcom/return.json"
    assert pod.spec.node_selector == {"pool": "ml", "cloud.google.com/gke-accelerator": "nvidia-l4"}
    assert [t.key for t in pod.spec.tolerations] == ["nvidia.com/gpu"]
    assert any(m.mount_path == "/opt/lepton" for m in container.volume_mounts)
    dry_run = capsys_dry_run(rendered(step("train", settings=settings, **OPTIONS)))
    assert "nvidia.com/gpu" in dry_run and "lepton-tasks" in dry_run


def capsys_dry_run(operator) -> str:
    """What `KubernetesPodOperator.dry_run()` prints: the pod as YAML, no cluster needed."""
    import contextlib
    import io

    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        operator.dry_run()
    return buffer.getvalue()


def test_kubernetes_runtime_gives_no_gpu_to_other_steps() -> None:
    pod = step("evaluate", settings=k8s_settings(), run_dir="r").build_pod_request_obj(dry_run=True)
    container = pod.spec.containers[0]
    assert not (container.resources.limits or {}).get("nvidia.com/gpu")
    assert container.image == k8s_settings().task_image
    assert pod.spec.node_selector == {"pool": "ml"} and not pod.spec.tolerations


@pytest.mark.parametrize("runtime", ["docker", "kubernetes"])
def test_whole_dag_requests_a_gpu_for_train_alone(
    runtime: str, fresh_runtime_settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LEPTON_RUNTIME", runtime)
    dag = load_dag()
    gpu_tasks = set()
    for task in (t for t in dag.tasks if hasattr(t, "step")):  # the steps, not the short circuit
        if runtime == "docker" and task.device_requests:
            gpu_tasks.add(task.task_id)
        if runtime == "kubernetes" and (task.container_resources.limits or {}).get(
            "nvidia.com/gpu"
        ):
            gpu_tasks.add(task.task_id)
    assert gpu_tasks == {"train"}


def terminated_pod(exit_code: int, message: str | None):
    from kubernetes.client import models as k8s

    state = k8s.V1ContainerState(
        terminated=k8s.V1ContainerStateTerminated(exit_code=exit_code, message=message)
    )
    status = k8s.V1ContainerStatus(
        name="base", state=state, image="i", image_id="i", ready=False, restart_count=0
    )
    return k8s.V1Pod(
        metadata=k8s.V1ObjectMeta(name="lepton-ingest-x", namespace="lepton"),
        status=k8s.V1PodStatus(phase="Failed", container_statuses=[status]),
    )


ERROR_RECORD = {
    "step": "ingest",
    "error": "InputDataError",
    "exit_code": 3,
    "line": "lepton-tasks ingest: InputDataError: truncated batch (landing/day-2/data.npz)",
}


@pytest.mark.parametrize(
    ("code", "message", "expected", "reason"),
    [
        (3, json.dumps(ERROR_RECORD), AirflowFailException, "InputDataError: truncated batch"),
        (10, None, AirflowSkipException, "exit code 10"),
        (7, None, AirflowException, "failed with exit code 7"),
        (137, None, AirflowException, "killed"),
    ],
)
def test_kubernetes_runtime_applies_the_exit_code_policy_from_the_pod_status(
    code: int, message: str | None, expected: type, reason: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pod's exit code and termination message decide, as in the other runtimes."""
    from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator

    operator = step("ingest", settings=k8s_settings(), run_dir="r")

    # no cluster here: the provider's own clean-up (pod deletion) is reduced to its verdict
    def provider_cleanup(self, pod, remote_pod, xcom_result=None, context=None):
        raise AirflowException("Pod lepton-ingest-x returned a failure.")

    monkeypatch.setattr(KubernetesPodOperator, "cleanup", provider_cleanup)
    with pytest.raises(expected, match=reason) as caught:
        operator.cleanup(terminated_pod(code, message), terminated_pod(code, message))
    if expected is AirflowException:
        assert not isinstance(caught.value, AirflowFailException)


def test_mlflow_and_alerts_come_from_airflow_connections(
    tmp_path: Path, lepton_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Connections (so any secrets backend) win over the environment, read at run time; the
    alert goes through the Slack provider's webhook notifier."""
    from types import SimpleNamespace

    from lepton_airflow.notifiers import FailureAlert
    from tests.dags.helpers import AlertSink

    operator = step("ingest", run_dir=str(tmp_path / "run"), source="sklearn:digits")
    assert operator.process_environment()["MLFLOW_TRACKING_URI"].startswith("sqlite:")
    connection = {"conn_type": "http", "host": "mlflow.internal", "port": 5000}
    connection |= {"login": "lepton", "password": "s3cret"}
    monkeypatch.setenv("AIRFLOW_CONN_LEPTON_MLFLOW", json.dumps(connection))
    env = operator.process_environment()
    assert env["MLFLOW_TRACKING_URI"] == "http://mlflow.internal:5000"
    assert (
        env["MLFLOW_TRACKING_USERNAME"] == "lepton" and env["MLFLOW_TRACKING_PASSWORD"] == "s3cret"
    )

    ti = SimpleNamespace(
        dag_id="lepton_training",
        task_id="validate",
        run_id="manual__1",
        try_number=1,
        log_url="http://airflow/log",
        xcom_pull=lambda **kwargs: None,
    )
    context = {"ti": ti, "exception": Exception("lepton-tasks validate: DataValidationError: x")}
    sink = AlertSink()
    FailureAlert().notify(context)  # no Connection: alerts are off
    assert sink.received == []
    monkeypatch.setenv("AIRFLOW_CONN_LEPTON_ALERT_WEBHOOK", sink.connection)
    FailureAlert().notify(context)
    (alert,) = sink.received
    assert alert["text"].startswith("Lepton: lepton_training step validate failed (run manual__1")
    monkeypatch.setenv(  # an unreachable webhook is logged, never raised
        "AIRFLOW_CONN_LEPTON_ALERT_WEBHOOK",
        json.dumps({"conn_type": "slackwebhook", "password": "http://127.0.0.1:9/hook"}),
    )
    FailureAlert().notify(context)


def test_orchestration_settings_never_reach_the_steps(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every RuntimeSettings field is the orchestrator's alone (derived, not a hand-kept list)."""
    from lepton_airflow.settings import step_environment

    for key in ("LEPTON_K8S_NAMESPACE", "LEPTON_K8S_PVC", "LEPTON_RUNTIME", "LEPTON_SCHEDULE"):
        monkeypatch.setenv(key, "x")
    monkeypatch.setenv("LEPTON_MIN_IMPROVEMENT", "0.01")  # a step's setting
    plain, secret = step_environment()
    assert not {
        k for k in {**plain, **secret} if k.startswith(("LEPTON_K8S", "LEPTON_RUN", "LEPTON_SCH"))
    }
    assert plain["LEPTON_MIN_IMPROVEMENT"] == "0.01"


def test_kubernetes_runtime_trains_on_n_worker_pods_as_an_indexed_job(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from airflow.providers.cncf.kubernetes.operators.job import KubernetesJobOperator

    from lepton_airflow.runtimes.kubernetes_job import chief_result

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.lepton:5000")
    settings = k8s_settings().model_copy(update={"train_workers": 3})
    operator = rendered(step("train", settings=settings, **OPTIONS))
    assert isinstance(operator, KubernetesJobOperator)
    from airflow.providers.cncf.kubernetes.hooks.kubernetes import KubernetesHook

    # the Job render asks the hook whether it runs in a cluster: here, no cluster at all
    monkeypatch.setattr(KubernetesHook, "is_in_cluster", property(lambda hook: False))
    job = operator.build_job_request_obj()
    assert (job.spec.completion_mode, job.spec.completions, job.spec.parallelism) == (
        "Indexed",
        3,
        3,
    )
    assert job.spec.backoff_limit == 0  # workers in lockstep: the Airflow retry restarts all
    pod = job.spec.template
    assert pod.spec.subdomain == "lepton-train-workers"  # the headless Service's name
    assert pod.metadata.labels["lepton.dev/train-workers"] == "true"
    container = pod.spec.containers[0]
    assert container.args == ["train", *EXPECTED_ARGS]
    assert container.resources.limits == {"nvidia.com/gpu": "1"}  # one GPU per worker
    env = {e.name: e.value for e in container.env}
    assert env["LEPTON_TRAIN_WORKERS"] == "3"
    assert env["LEPTON_TRAIN_WORKERS_SERVICE"] == "lepton-train-workers"
    assert container.security_context.read_only_root_filesystem
    # the other steps stay single pods
    assert not isinstance(step("evaluate", settings=settings, run_dir="r"), KubernetesJobOperator)
    worker = {"step": "train-worker", "worker": 1}
    assert chief_result([worker, {"step": "train", "model_uri": "m"}], 2)["model_uri"] == "m"
    with pytest.raises(Exception, match="0 chief results"):
        chief_result([worker, worker], 2)


def test_a_failed_train_job_fails_with_its_worker_s_exit_code_and_line(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A data error in one worker fails the task without a retry, as a single pod's would."""
    from airflow.providers.cncf.kubernetes.operators.job import KubernetesJobOperator

    settings = k8s_settings().model_copy(update={"train_workers": 2})
    operator = step("train", settings=settings, **OPTIONS)
    record = {**ERROR_RECORD, "step": "train", "line": "lepton-tasks train: InputDataError: x"}
    pods = {"ok": terminated_pod(0, None), "bad": terminated_pod(3, json.dumps(record))}
    for name, pod in pods.items():
        pod.metadata.name = name
        pod.status.container_statuses[0].name = operator.base_container_name

    class Pods:  # the cluster's view of the Job's pods, without a cluster
        def read_pod(self, pod):
            return pods[pod.metadata.name]

    def provider_execute(self, context):
        self.pods = list(pods.values())
        raise AirflowException("Kubernetes job 'job-lepton-train-x' is failed with error 'x'")

    monkeypatch.setattr(KubernetesJobOperator, "execute", provider_execute)
    operator.__dict__["pod_manager"] = Pods()
    with pytest.raises(AirflowFailException, match="InputDataError: x"):
        operator.execute({})
