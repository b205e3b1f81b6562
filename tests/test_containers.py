"""Images, compose file and Helm values, checked without a Docker engine or a cluster."""

from __future__ import annotations

import json
import re
from pathlib import Path

import jsonschema
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
SPEC = REPO.parent / "shared" / "reference" / "compose-spec.json"
DOCKERFILES = sorted((REPO / "docker").glob("*.Dockerfile"))
INSTRUCTIONS = {
    "FROM",
    "RUN",
    "CMD",
    "LABEL",
    "EXPOSE",
    "ENV",
    "ADD",
    "COPY",
    "ENTRYPOINT",
    "VOLUME",
    "USER",
    "WORKDIR",
    "ARG",
    "ONBUILD",
    "STOPSIGNAL",
    "HEALTHCHECK",
    "SHELL",
}


def compose() -> dict:
    return yaml.safe_load((REPO / "docker-compose.yml").read_text())


def locked() -> dict[str, str]:
    pins = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        if "==" in line and not line.startswith("#"):
            name, version = line.split("==", 1)
            pins[name.lower().split("[")[0]] = version.strip()
    return pins


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """Parse a Dockerfile into (INSTRUCTION, arguments), continuation lines joined."""
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    parsed = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        keyword, _, rest = line.partition(" ")
        parsed.append((keyword.upper(), rest.strip()))
    return parsed


def test_compose_file_validates_against_the_compose_specification() -> None:
    if not SPEC.exists():
        pytest.skip(f"the Compose Specification schema is not at {SPEC}")
    schema = json.loads(SPEC.read_text())
    jsonschema.validate(compose(), schema)


def test_every_service_is_built_here_or_pinned_and_has_a_healthcheck() -> None:
    for name, service in compose()["services"].items():
        assert "healthcheck" in service, f"{name} has no healthcheck"
        if "build" in service:
            assert service["build"]["dockerfile"].startswith("docker/"), name
            assert re.search(r":\d+\.\d+\.\d+$", service["image"]), name
        elif service["image"].startswith("lepton/"):
            built = {s["image"] for s in compose()["services"].values() if "build" in s}
            assert service["image"] in built, f"{name}: {service['image']} is built by no service"
        else:
            # a third-party image: a variable to swap it (a mirror, a stand-in), the official
            # image pinned as its default
            variable = re.fullmatch(r"\$\{([A-Z_]+_IMAGE):-([^}]+)\}", service["image"])
            assert variable, f"{name}: {service['image']} is not a variable with a default"
            image = variable.group(2)
            assert re.search(r":v?\d+\.\d+(\.\d+)?(-\w+)?$", image), (
                f"{name}: {image} is not pinned"
            )


def test_ports_bind_to_loopback_only() -> None:
    for name, service in compose()["services"].items():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} beyond loopback"


def test_dependencies_wait_for_health() -> None:
    services = compose()["services"]
    for name, service in services.items():
        for dependency, condition in (service.get("depends_on") or {}).items():
            assert dependency in services, f"{name} depends on unknown {dependency}"
            assert condition["condition"] in {"service_healthy", "service_completed_successfully"}
    assert services["airflow-scheduler"]["depends_on"]["airflow-init"]["condition"] == (
        "service_completed_successfully"
    )


AIRFLOW_SERVICES = [
    "airflow-init",
    "airflow-apiserver",
    "airflow-scheduler",
    "airflow-dag-processor",
    "airflow-triggerer",
    "airflow-worker",
]
# What the DAG (lepton_airflow.settings) and the steps (lepton_tasks.settings, MLflow) read.
REQUIRED_ENV = [
    "LEPTON_RUNTIME",
    "LEPTON_TASK_IMAGE",
    "LEPTON_GPU_TASK_IMAGE",
    "LEPTON_DOCKER_NETWORK",
    "LEPTON_DOCKER_VOLUME",
    "LEPTON_DOCKER_DATA_PATH",
    "LEPTON_HOME",
    "LEPTON_LANDING_URI",
    "MLFLOW_TRACKING_URI",
    "AIRFLOW__CORE__EXECUTION_API_SERVER_URL",
    "AIRFLOW__API_AUTH__JWT_SECRET",
    "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN",
    "AIRFLOW__CORE__FERNET_KEY",
]


@pytest.mark.parametrize("service", AIRFLOW_SERVICES)
def test_airflow_components_share_the_settings_the_dag_and_steps_read(service: str) -> None:
    env = compose()["services"][service]["environment"]
    missing = [key for key in REQUIRED_ENV if key not in env]
    assert not missing, f"{service} lacks {missing}"
    doc = compose()
    assert env["LEPTON_DOCKER_NETWORK"] == doc["networks"]["lepton"]["name"]
    assert env["LEPTON_DOCKER_VOLUME"] == doc["volumes"]["lepton-data"]["name"]
    assert env["LEPTON_TASK_IMAGE"] == doc["services"]["task"]["image"]
    assert env["LEPTON_GPU_TASK_IMAGE"] == doc["services"]["task-gpu"]["image"]
    assert "lepton-data:/opt/lepton" in compose()["services"][service]["volumes"]
    assert compose()["services"][service]["depends_on"] is not None


def test_mlflow_server_has_auth_postgres_and_served_artifacts() -> None:
    mlflow = compose()["services"]["mlflow"]
    command = " ".join(mlflow["command"])
    assert "--app-name=basic-auth" in command and "--serve-artifacts" in command
    assert "--artifacts-destination=/mlartifacts" in command
    env = mlflow["environment"]
    assert env["MLFLOW_BACKEND_STORE_URI"].startswith("postgresql+psycopg2://")
    # MLflow 3.17's basic-auth app exits at start without the Flask secret key
    assert {"MLFLOW_AUTH_ADMIN_PASSWORD", "MLFLOW_FLASK_SERVER_SECRET_KEY"} <= set(env)
    assert mlflow["read_only"] is True


def test_no_secret_on_a_command_line() -> None:
    """Process arguments are visible to every user of the host (`ps`); secrets are not."""
    for name, service in compose()["services"].items():
        if name == "redis":  # redis-server takes its password only as an argument or a file
            continue
        command = " ".join(map(str, service.get("command") or []))
        assert not re.search(r"PASSWORD|SECRET|_KEY", command), f"{name}: {command}"


def test_only_the_services_that_start_containers_see_the_docker_socket() -> None:
    with_socket = {
        name
        for name, service in compose()["services"].items()
        if any("docker.sock" in str(v) for v in service.get("volumes", []))
    }
    assert with_socket == {"airflow-scheduler", "airflow-worker"}


def test_steps_and_the_page_use_mlflows_plain_user_not_the_admin() -> None:
    services = compose()["services"]
    for name in AIRFLOW_SERVICES:
        env = services[name]["environment"]
        assert "MLFLOW_ADMIN_PASSWORD" not in json.dumps(env), name
        # the Connection only where tasks run
        assert ("AIRFLOW_CONN_LEPTON_MLFLOW" in env) == (
            name in ("airflow-scheduler", "airflow-worker")
        ), name
    for name in ("airflow-scheduler", "airflow-worker"):
        connection = json.loads(services[name]["environment"]["AIRFLOW_CONN_LEPTON_MLFLOW"])
        assert connection["login"] == "lepton" and connection["host"] == "mlflow"
    page = services["airflow-apiserver"]["environment"]
    assert page["MLFLOW_TRACKING_USERNAME"] == "lepton"
    init = services["mlflow-init"]
    assert init["environment"]["LEPTON_MLFLOW_USER"] == "lepton"
    assert services["airflow-scheduler"]["depends_on"]["mlflow-init"]["condition"] == (
        "service_completed_successfully"
    )


def test_every_variable_has_a_value_in_env_example_and_no_secret_is_committed() -> None:
    text = (REPO / "docker-compose.yml").read_text()
    used = set(re.findall(r"(?<!\$)\$\{([A-Z0-9_]+)(?::-[^}]*)?\}", text))  # $$ escapes
    example = dict(
        line.split("=", 1)
        for line in (REPO / ".env.example").read_text().splitlines()
        if "=" in line and not line.startswith("#")
    )
    defaulted = set(re.findall(r"\$\{([A-Z0-9_]+):-", text))
    assert used - defaulted <= set(example), used - defaulted - set(example)
    secrets = {k for k in example if re.search("PASSWORD|SECRET|KEY", k)}
    assert secrets and all(example[k] == "generate" for k in secrets)
    assert ".env" in (REPO / ".gitignore").read_text().splitlines()


def test_make_env_generates_random_secrets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_env", REPO / "scripts" / "make_env.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    (tmp_path / ".env.example").write_text((REPO / ".env.example").read_text())
    monkeypatch.setattr(module, "ROOT", tmp_path)
    monkeypatch.setattr("sys.argv", ["make_env.py"])
    module.main()
    assert (tmp_path / ".env").stat().st_mode & 0o777 == 0o600
    first = (tmp_path / ".env").read_text()
    assert "=generate" not in first and "AIRFLOW_FERNET_KEY=" in first
    monkeypatch.setattr("sys.argv", ["make_env.py", "--force"])
    module.main()
    assert (tmp_path / ".env").read_text() != first  # fresh values every time


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfiles_parse_and_pin_their_bases(dockerfile: Path) -> None:
    parsed = instructions(dockerfile)
    assert parsed and all(keyword in INSTRUCTIONS for keyword, _ in parsed), parsed
    args = {}
    for keyword, rest in parsed:
        if keyword == "ARG" and "=" in rest:
            key, value = rest.split("=", 1)
            args[key] = value
    for keyword, rest in parsed:
        if keyword != "FROM":
            continue
        image = rest.split()[0]
        image = re.sub(r"\$\{(\w+)\}", lambda m: args.get(m.group(1), m.group(0)), image)
        assert re.search(r":\d+\.\d+\.\d+", image), f"{dockerfile.name}: base {image} not pinned"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_images_install_the_projects_own_pins(dockerfile: Path) -> None:
    text = dockerfile.read_text()
    pins = locked()
    for name, version in re.findall(
        r"\"([A-Za-z0-9_.\-]+)(?:\[[a-z,]+\])?==([0-9][^\"\s]*)\"", text
    ):
        if name == "uv":
            continue
        assert pins.get(name.lower()) == version, f"{dockerfile.name}: {name}=={version} vs lock"
    if "pip install" in text:
        assert "-c " in text and "constraints.txt" in text, f"{dockerfile.name} ignores the lock"


def test_task_image_runs_the_cli_as_a_non_root_user() -> None:
    parsed = instructions(REPO / "docker" / "task.Dockerfile")
    entrypoints = [rest for keyword, rest in parsed if keyword == "ENTRYPOINT"]
    assert json.loads(entrypoints[-1]) == ["lepton-tasks"]
    users = [rest for keyword, rest in parsed if keyword == "USER"]
    assert users and users[-1] not in ("root", "0")
    pyproject = (REPO / "pyproject.toml").read_text()
    assert 'lepton-tasks = "lepton_tasks.cli:main"' in pyproject
    assert '"tensorflow[and-cuda]==2.21.0"' in pyproject  # the GPU image's extra


def test_airflow_image_builds_on_the_python_base_with_the_official_contract() -> None:
    """Built like the task image (the same base argument, so a stand-in base swaps only that),
    with the official image's user, home, init and entrypoint contract."""
    parsed = instructions(REPO / "docker" / "airflow.Dockerfile")
    task = instructions(REPO / "docker" / "task.Dockerfile")
    base = ("ARG", "BASE_IMAGE=python:3.11.14-slim-bookworm")
    assert base in parsed and base in task
    assert {rest for keyword, rest in parsed if keyword == "FROM"} == {
        "${BASE_IMAGE} AS build",
        "${BASE_IMAGE} AS runtime",
    }
    assert ("USER", "${AIRFLOW_UID}:0") in parsed and ("ARG", "AIRFLOW_UID=50000") in parsed
    entrypoint = [json.loads(rest) for keyword, rest in parsed if keyword == "ENTRYPOINT"]
    assert entrypoint == [["/usr/bin/dumb-init", "--", "/entrypoint"]]
    copies = [rest for keyword, rest in parsed if keyword == "COPY"]
    assert any("dags/" in c for c in copies) and any("plugins/" in c for c in copies)
    run = " ".join(rest for keyword, rest in parsed if keyword == "RUN")
    assert "curl" in run and "-c constraints.txt" in run  # healthchecks; the lock


def test_airflow_image_installs_the_providers_the_stack_runs_with() -> None:
    import subprocess
    import sys

    printed = subprocess.run(
        [sys.executable, str(REPO / "docker/airflow/requirements.py"), str(REPO / "pyproject.toml")],
        capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    names = {line.split("==")[0] for line in printed}
    providers = {"fab", "celery", "postgres", "docker", "cncf-kubernetes", "standard", "slack"}
    assert {f"apache-airflow-providers-{p}" for p in providers} <= names
    assert {"apache-airflow", "mlflow", "psycopg2-binary", "statsd"} <= names
    pins = locked()
    for line in printed:
        name, version = line.split("==")
        assert pins[name.lower()] == version, line  # pyproject's pins are the lock's


def test_dockerignore_keeps_the_context_small() -> None:
    ignored = (REPO / ".dockerignore").read_text().splitlines()
    for entry in (".git", ".venv", ".lepton", ".env"):
        assert entry in ignored


def test_helm_values_render_the_train_pod(monkeypatch: pytest.MonkeyPatch) -> None:
    """Feed the chart's env into the step factory and render the train pod, as a worker would."""
    values = yaml.safe_load((REPO / "deploy" / "helm" / "values.yaml").read_text())
    assert values["executor"] in {
        "KubernetesExecutor",
        "CeleryExecutor",
        "CeleryKubernetesExecutor",
    }
    assert values["images"]["airflow"]["repository"] == "lepton/airflow"
    for item in values["env"]:
        monkeypatch.setenv(item["name"], item["value"])
    import sys

    sys.path.insert(0, str(REPO / "plugins"))
    from lepton_airflow.operator_factory import step_operator
    from lepton_airflow.settings import RuntimeSettings

    settings = RuntimeSettings()
    assert settings.runtime == "kubernetes"
    operator = step_operator("train", settings=settings, run_dir="/opt/lepton/runs/x")
    operator.render_template_fields(context={})
    pod = operator.build_pod_request_obj(dry_run=True)
    container = pod.spec.containers[0]
    assert container.image == "lepton/task-gpu:0.2.0"
    assert container.args[:2] == ["train", "--run-dir=/opt/lepton/runs/x"]
    assert container.resources.limits == {"nvidia.com/gpu": "1"}
    env = {e.name: e.value for e in container.env}
    assert env["MLFLOW_TRACKING_URI"].startswith("http://mlflow.lepton")
    assert env["LEPTON_HOME"] == "/opt/lepton"
    assert env["LEPTON_ERROR_FILE"] == "/dev/termination-log"
    assert env["LEPTON_RESULT_FILE"] == "/airflow/xcom/return.json"
    security = container.security_context
    assert security.read_only_root_filesystem and security.run_as_non_root
    assert pod.spec.node_selector["cloud.google.com/gke-accelerator"] == "nvidia-l4"
    # Airflow 3 chart keys; the MLflow Connection from a Secret
    assert values["apiSecretKeySecretName"] and values["jwtSecretName"]
    assert "webserverSecretKeySecretName" not in values
    assert "AIRFLOW_CONN_LEPTON_MLFLOW" in {s["envName"] for s in values["secret"]}
    # credentials reach step pods from a Secret, never as plain values in the pod spec
    assert "MLFLOW_TRACKING_PASSWORD" not in env
    assert pod.spec.containers[0].env_from[0].secret_ref.name == "lepton-mlflow-credentials"
    assert security.run_as_user == 10001 and pod.spec.security_context.fs_group == 10001


def prometheus_config() -> dict:
    return yaml.safe_load((REPO / "deploy" / "prometheus" / "prometheus.yml").read_text())


def test_prometheus_scrapes_services_of_the_stack_on_their_ports() -> None:
    services = compose()["services"]
    targets = {
        job["job_name"]: target
        for job in prometheus_config()["scrape_configs"]
        for group in job["static_configs"]
        for target in group["targets"]
    }
    assert targets == {
        "lepton-serving": "serving:5001",
        "mlflow": "mlflow:5000",
        "airflow": "statsd-exporter:9102",
    }
    assert "--port=5001" in services["serving"]["command"]
    assert "--web.listen-address=:9102" in services["statsd-exporter"]["command"]
    assert any(a.startswith("--expose-prometheus=") for a in services["mlflow"]["command"])
    # MLflow's /metrics answers admins only (tests/containers): the password from a secret file
    (mlflow_job,) = [j for j in prometheus_config()["scrape_configs"] if j["job_name"] == "mlflow"]
    assert mlflow_job["basic_auth"]["password_file"] == "/run/secrets/mlflow_admin_password"
    assert services["prometheus"]["secrets"] == ["mlflow_admin_password"]
    common = services["airflow-scheduler"]["environment"]
    assert common["AIRFLOW__METRICS__STATSD_HOST"] == "statsd-exporter"


def test_recording_rules_use_the_metrics_the_server_exposes() -> None:
    """Every lepton_serving_* series a rule reads is one `lepton-tasks serve` publishes."""
    from lepton_tasks.serving.metrics import ServingMetrics

    exposed = {
        sample.name
        for family in ServingMetrics("m").registry.collect()
        for sample in family.samples
    } | {
        f"{family.name}_{suffix}"
        for family in ServingMetrics("m").registry.collect()
        for suffix in ("bucket", "sum", "count", "total")
    }
    rules = yaml.safe_load((REPO / "deploy" / "prometheus" / "rules.yml").read_text())
    expressions = [rule["expr"] for group in rules["groups"] for rule in group["rules"]]
    used = {name for expr in expressions for name in re.findall(r"lepton_serving_\w+", expr)}
    assert used and used <= exposed, used - exposed
    assert {"lepton:serving_latency_p99:5m", "lepton:serving_server_errors:ratio5m"} <= {
        rule.get("record") for group in rules["groups"] for rule in group["rules"]
    }


def test_the_kubernetes_serving_hint_probes_what_the_server_answers() -> None:
    deployment, service = yaml.safe_load_all(
        (REPO / "deploy" / "helm" / "serving.yaml").read_text()
    )
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["args"][0] == "serve" and "--port=5001" in container["args"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/ping"
    assert container["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]


def test_make_env_takes_the_engines_socket_and_writes_where_asked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import importlib.util
    import socket

    spec = importlib.util.spec_from_file_location("make_env", REPO / "scripts" / "make_env.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    engine = tmp_path / "engine.sock"
    with socket.socket(socket.AF_UNIX) as listening:
        listening.bind(str(engine))
        monkeypatch.setenv("DOCKER_HOST", f"unix://{engine}")
        target = tmp_path / "elsewhere" / "stack.env"
        target.parent.mkdir()
        monkeypatch.setattr("sys.argv", ["make_env.py", "--output", str(target)])
        module.main()
    values = dict(line.split("=", 1) for line in target.read_text().splitlines() if "=" in line)
    assert values["DOCKER_SOCKET"] == str(engine)
    assert values["DOCKER_GID"] == str(engine.stat().st_gid)
    assert values["AIRFLOW_UID"] == "50000"  # never the host's uid: DAGs live in the image
