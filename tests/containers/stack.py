"""The production stack's parts on a real Docker engine: PostgreSQL, the MLflow image, volumes.

Everything a service runs with is read from `docker-compose.yml` and `.env.example`, not copied:
the same command line, environment, user, read-only root and volumes. What Compose v2 would add
and this machine lacks (its own network, service names as hosts) is replaced by the host's
loopback: containers use `--network host`, service names resolve to 127.0.0.1 (`--add-host`),
and each server gets a free port instead of its fixed one (`--port`, `PGPORT`). `--host` is
narrowed from 0.0.0.0 to 127.0.0.1 for the same reason: on the host network 0.0.0.0 would be
every interface of the machine.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tests.stack import free_port

REPO = Path(__file__).resolve().parents[2]
TASK_IMAGE = "lepton/task:0.2.0"
MLFLOW_IMAGE = "lepton/mlflow:0.2.0"


def docker(
    *args: str, check: bool = True, timeout: float = 600, env: dict[str, str] | None = None
) -> str:
    done = subprocess.run(
        ["docker", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env={**os.environ, **(env or {})},
    )
    if check and done.returncode != 0:
        raise RuntimeError(f"docker {' '.join(args[:3])}: {done.stderr.strip()[-2000:]}")
    return done.stdout


def engine_reachable() -> bool:
    try:
        docker("version", "--format", "{{.Server.Version}}", timeout=20)
    except (RuntimeError, OSError, subprocess.TimeoutExpired):
        return False
    return True


def image_exists(image: str) -> bool:
    return (
        subprocess.run(["docker", "image", "inspect", image], capture_output=True).returncode == 0
    )


# --- the compose file, as Compose would read it -------------------------------------------------


def compose_file() -> dict[str, Any]:
    return yaml.safe_load((REPO / "docker-compose.yml").read_text())


def generated_env() -> dict[str, str]:
    """`.env` as `make env` writes it: every `generate` a fresh secret."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_env", REPO / "scripts" / "make_env.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    env = {}
    for line in (REPO / ".env.example").read_text().splitlines():
        if "=" in line and not line.startswith("#"):
            key, value = line.split("=", 1)
            env[key] = module.secret_for(key) if value == "generate" else value
    return env


def interpolate(value: Any, env: dict[str, str]) -> Any:
    """Compose's `${VAR}`, `${VAR:-default}` and `$$`, applied through lists and mappings."""
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if not isinstance(value, str):
        return value

    def substitute(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(3)
        if env.get(name):
            return env[name]
        if default is not None:
            return default
        raise KeyError(f"docker-compose.yml uses ${{{name}}}, which has no value")

    text = re.sub(r"(?<!\$)\$\{([A-Z0-9_]+)(:-([^}]*))?\}", substitute, value)
    return text.replace("$$", "$")


@dataclass
class Service:
    """One service of the compose file, interpolated, as `docker run` arguments."""

    name: str
    spec: dict[str, Any]
    env: dict[str, str]

    @classmethod
    def load(cls, name: str, env: dict[str, str]) -> Service:
        return cls(name, interpolate(compose_file()["services"][name], env), env)

    @property
    def environment(self) -> dict[str, str]:
        return {k: str(v) for k, v in (self.spec.get("environment") or {}).items()}

    def run(self, volumes: dict[str, str], extra_env: dict[str, str], *options: str) -> str:
        """`docker run` this service; its environment passes through docker's own environment
        (`-e NAME`), so no secret shows on a command line."""
        env = {**self.environment, **extra_env}
        args = [*options, *self.run_args(volumes, env)]
        return docker("run", *args, env=env)

    def run_args(self, volumes: dict[str, str], env: dict[str, str]) -> list[str]:
        """`docker run` options for this service: user, read-only root, tmpfs, volumes (named
        volumes renamed through `volumes`), the names of its environment variables."""
        network = self.spec.get("network_mode", "host")
        args = ["--network", network]
        if network == "host":
            args += ["--add-host", "postgres:127.0.0.1", "--add-host", "mlflow:127.0.0.1"]
        if "user" in self.spec:
            args += ["--user", str(self.spec["user"])]
        if self.spec.get("read_only"):
            args.append("--read-only")
        for path in self.spec.get("tmpfs", []):
            args += ["--tmpfs", path]
        for mount in self.spec.get("volumes", []):
            source, target = mount.split(":", 2)[:2]
            args += ["-v", f"{volumes.get(source, source)}:{target}"]
        for key in env:
            args += ["-e", key]
        if "entrypoint" in self.spec:
            entrypoint = self.spec["entrypoint"]
            args += ["--entrypoint", entrypoint[0]]
            return [*args, self.spec["image"], *entrypoint[1:], *self.spec.get("command", [])]
        return [*args, self.spec["image"], *self.spec.get("command", [])]


# --- PostgreSQL: a throwaway cluster ------------------------------------------------------------


def pg_bin(name: str) -> str:
    found = shutil.which(name)
    if found:
        return found
    for version in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (version / name).exists():
            return str(version / name)
    raise FileNotFoundError(f"{name}: install Debian's postgresql package")


@dataclass
class Postgres:
    """`initdb` + `pg_ctl` in a temporary folder, on a free loopback port; as the `postgres`
    user when run as root (PostgreSQL refuses to run as root)."""

    root: Path
    port: int = field(default_factory=free_port)

    def _as_owner(self, *command: str, env: dict[str, str] | None = None) -> None:
        prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        subprocess.run(
            [*prefix, *command],
            check=True,
            capture_output=True,
            env={**os.environ, **(env or {})},
            timeout=120,
        )

    def start(self) -> None:
        data = self.root / "data"
        data.mkdir(parents=True)
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres")
            shutil.chown(data, "postgres")
        # the socket (init script, as the superuser) trusts; TCP (MLflow) checks passwords
        self._as_owner(
            pg_bin("initdb"),
            "-D",
            str(data),
            "-U",
            "postgres",
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
        )
        self._as_owner(
            pg_bin("pg_ctl"),
            "-D",
            str(data),
            "-l",
            str(self.root / "postgres.log"),
            "-o",
            f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1",
            "-w",
            "start",
        )

    def stop(self) -> None:
        self._as_owner(pg_bin("pg_ctl"), "-D", str(self.root / "data"), "-m", "fast", "stop")

    def run_init_script(self, service: Service) -> None:
        """docker/postgres/init-databases.sh with the postgres service's environment, as the
        official image runs it on a first start."""
        script = REPO / "docker" / "postgres" / "init-databases.sh"
        env = {**service.environment, "PGHOST": str(self.root), "PGPORT": str(self.port)}
        subprocess.run(
            ["bash", str(script)],
            check=True,
            capture_output=True,
            env={**os.environ, **env},
            timeout=60,
        )


# --- containers --------------------------------------------------------------------------------


def wait_for_http(url: str, timeout: float, container: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        state = docker("inspect", "-f", "{{.State.Status}}", container, check=False).strip()
        if state in ("exited", "dead"):
            break
        time.sleep(1)
    logs = subprocess.run(["docker", "logs", "--tail", "40", container], capture_output=True)
    raise RuntimeError(f"{url} did not answer; {container} logs:\n{logs.stderr.decode()[-3000:]}")


class ContainerWatcher:
    """Inspects every container of `image` while it runs: its config and `docker diff` (what
    it changed in its own filesystem). Step containers live seconds, so it polls."""

    def __init__(self, image: str) -> None:
        self.image = image
        self.seen: dict[str, dict[str, Any]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def __enter__(self) -> ContainerWatcher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _poll(self) -> None:
        while not self._stop.is_set():
            self.poll_once()
            time.sleep(0.3)

    def poll_once(self) -> None:
        ids = docker("ps", "-q", "--filter", f"ancestor={self.image}", check=False).split()
        for cid in ids:
            if cid in self.seen:
                continue
            raw = docker("inspect", cid, check=False)
            if not raw.strip():
                continue
            (info,) = json.loads(raw)
            info["Diff"] = docker("diff", cid, check=False).split("\n")
            self.seen[cid] = info


@dataclass
class ContainerStack:
    """PostgreSQL, the MLflow server from `lepton/mlflow` and its `mlflow-init`, and a fresh
    `lepton-data` volume prepared by `lepton-data-init`: the compose services the steps need."""

    root: Path
    env: dict[str, str] = field(default_factory=generated_env)
    suffix: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    mlflow_port: int = field(default_factory=free_port)
    postgres: Postgres | None = None
    containers: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.env["MLFLOW_PORT"] = str(self.mlflow_port)
        self.volumes = {
            name: f"lepton-test-{name}-{self.suffix}"
            for name in ("lepton-data", "mlflow-artifacts", "mlflow-auth")
        }

    @property
    def mlflow_url(self) -> str:
        return f"http://127.0.0.1:{self.mlflow_port}"

    @property
    def data_volume(self) -> str:
        return self.volumes["lepton-data"]

    def localize(self, text: str) -> str:
        """The compose network replaced by loopback: a free port for MLflow, loopback only."""
        port = str(self.mlflow_port)
        return (
            text.replace("--host=0.0.0.0", "--host=127.0.0.1")
            .replace("--port=5000", f"--port={port}")
            .replace("mlflow:5000", f"mlflow:{port}")
        )

    def localize_service(self, service: Service) -> Service:
        spec = dict(service.spec)
        spec["command"] = [self.localize(str(a)) for a in spec.get("command", [])]
        spec["environment"] = {k: self.localize(str(v)) for k, v in service.environment.items()}
        return Service(service.name, spec, service.env)

    def start(self) -> None:
        for volume in self.volumes.values():
            docker("volume", "create", volume)
        # not under pytest's folders: those are private to root, and PostgreSQL runs as postgres
        self.postgres = Postgres(Path(tempfile.mkdtemp(prefix="lepton-pg-")))
        self.postgres.start()
        self.postgres.run_init_script(Service.load("postgres", self.env))
        pg = {"PGPORT": str(self.postgres.port)}
        mlflow = Service.load("mlflow", self.env)
        name = f"lepton-test-mlflow-{self.suffix}"
        self.localize_service(mlflow).run(self.volumes, pg, "-d", "--name", name)
        self.containers.append(name)
        wait_for_http(f"{self.mlflow_url}/health", 180, name)
        init = Service.load("mlflow-init", self.env)
        self.localize_service(init).run(self.volumes, {}, "--rm")
        Service.load("lepton-data-init", self.env).run(self.volumes, {}, "--rm")

    def stop(self) -> None:
        for name in self.containers:
            docker("rm", "-f", "-v", name, check=False)
        for volume in self.volumes.values():
            docker("volume", "rm", "-f", volume, check=False)
        if self.postgres:
            self.postgres.stop()
            shutil.rmtree(self.postgres.root, ignore_errors=True)

    # credentials of the two MLflow users
    @property
    def admin(self) -> dict[str, str]:
        return {
            "MLFLOW_TRACKING_URI": self.mlflow_url,
            "MLFLOW_TRACKING_USERNAME": "admin",
            "MLFLOW_TRACKING_PASSWORD": self.env["MLFLOW_ADMIN_PASSWORD"],
        }

    @property
    def steps_user(self) -> dict[str, str]:
        init = Service.load("mlflow-init", self.env).environment
        return {
            "MLFLOW_TRACKING_URI": self.mlflow_url,
            "MLFLOW_TRACKING_USERNAME": init["LEPTON_MLFLOW_USER"],
            "MLFLOW_TRACKING_PASSWORD": init["LEPTON_MLFLOW_PASSWORD"],
        }

    def task(self, *args: str, user: str | None = None) -> str:
        """A one-off `lepton-tasks` container on the data volume (as a user would drop data)."""
        options = ["--rm", "--network", "none", "-v", f"{self.data_volume}:/opt/lepton"]
        if user:
            options += ["--user", user]
        return docker("run", *options, TASK_IMAGE, *args)

    def shell(self, command: str) -> str:
        """A shell in a task container on the data volume, to look at what the steps left."""
        return docker(
            "run", "--rm", "--network", "none", "-v", f"{self.data_volume}:/opt/lepton",
            "--entrypoint", "/bin/sh", TASK_IMAGE, "-c", command,
        )  # fmt: skip
