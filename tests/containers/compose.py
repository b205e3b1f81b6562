"""`docker-compose.yml` brought up as it ships, by Compose v2, with `.env` from `make env`.

The file is used unchanged. What the test chooses goes into its own `.env` (in a temporary
folder, never the repository's): free loopback ports, no GPU for train, and, where the official
third-party images cannot be pulled, the stand-ins `scripts/containers/test.sh` built
(`LEPTON_STANDIN_IMAGES`: `POSTGRES_IMAGE=...,REDIS_IMAGE=...`), through the image variables
the compose file offers every user. The user's own COMPOSE_* variables are never passed on.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.stack import free_port

REPO = Path(__file__).resolve().parents[2]
PROJECT = "lepton"  # the compose file's `name:`
# Named in the compose file with `name:`: shared with any Lepton stack on the same engine.
FIXED_NAMES = {"volume": ["lepton-data"], "network": ["lepton"]}
TASK_IMAGE = "lepton/task:0.2.0"


class ComposeError(RuntimeError):
    """A compose command failed; the message ends with what it printed."""


def run(*args: str, timeout: float = 600, check: bool = True, **env: str) -> str:
    # the user's COMPOSE_* variables (a project name, profiles, another file) would change
    # which stack these commands act on: only the test's .env and arguments count
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("COMPOSE_")}
    done = subprocess.run(
        list(args),
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**inherited, **env},
        cwd=REPO,
        check=False,
    )
    if check and done.returncode != 0:
        output = (done.stdout + done.stderr).strip()[-4000:]
        raise ComposeError(f"{' '.join(args[:4])} exited {done.returncode}:\n{output}")
    return done.stdout


def engine_reachable() -> bool:
    try:
        run("docker", "version", "--format", "{{.Server.Version}}", timeout=20)
        return "v2." in run("docker", "compose", "version", timeout=20)
    except (ComposeError, OSError, subprocess.TimeoutExpired):
        return False


def missing_images(images: list[str]) -> list[str]:
    return [
        image
        for image in images
        if subprocess.run(["docker", "image", "inspect", image], capture_output=True).returncode
    ]


def foreign_stack() -> list[str]:
    """What a Lepton stack that is not this test's already holds on the engine: the test would
    share its volumes and network, and its `down --volumes` would delete them."""
    found = []
    for kind, names in FIXED_NAMES.items():
        for name in names:
            if run("docker", kind, "ls", "-q", "--filter", f"name=^{name}$").strip():
                found.append(f"{kind} {name}")
    label = f"label=com.docker.compose.project={PROJECT}"
    for kind, listing in (("volumes", ["volume", "ls"]), ("containers", ["ps", "-a"])):
        if run("docker", *listing, "-q", "--filter", label).strip():
            found.append(f"{kind} of compose project {PROJECT}")
    return found


@dataclass
class ComposeStack:
    root: Path
    settings: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.env_file = self.root / ".env"
        self.ports = {
            name: free_port()
            for name in ("AIRFLOW_PORT", "MLFLOW_PORT", "SERVING_PORT", "PROMETHEUS_PORT")
        }

    # --- configuration ---------------------------------------------------------------------

    def set_env(self, **values: str) -> None:
        """Values in the stack's .env, as a user edits theirs (replacing what is there)."""
        lines = [
            line
            for line in self.env_file.read_text().splitlines()
            if line.split("=", 1)[0] not in values
        ]
        lines += [f"{key}={value}" for key, value in values.items()]
        self.env_file.write_text("\n".join(lines) + "\n")

    def write_env(self) -> None:
        """`make env ENV_FILE=...`, then this test's values in place of the defaults."""
        run("make", "--no-print-directory", "env", f"ENV_FILE={self.env_file}")
        self.set_env(
            **{k: str(v) for k, v in self.ports.items()},
            LEPTON_TRAIN_GPUS="0",  # no GPU here: train runs in the CPU task image
            **self.settings,
        )

    @property
    def env(self) -> dict[str, str]:
        values = {}
        for line in self.env_file.read_text().splitlines():
            if "=" in line and not line.lstrip().startswith("#"):
                key, value = line.split("=", 1)
                values[key] = value
        return values

    def url(self, port: str) -> str:
        return f"http://127.0.0.1:{self.ports[port]}"

    def mlflow_user(self, username: str, password_variable: str) -> dict[str, str]:
        """MLflow's client variables for a user of the stack's MLflow, on its published port."""
        return {
            "MLFLOW_TRACKING_URI": self.url("MLFLOW_PORT"),
            "MLFLOW_TRACKING_USERNAME": username,
            "MLFLOW_TRACKING_PASSWORD": self.env[password_variable],
        }

    # --- compose -----------------------------------------------------------------------------

    def compose(self, *args: str, timeout: float = 900, check: bool = True) -> str:
        """A compose command on this stack; profiles come from COMPOSE_PROFILES in its .env."""
        command = ["docker", "compose", "--env-file", str(self.env_file), *args]
        return run(*command, timeout=timeout, check=check)

    def up(self) -> None:
        """`docker compose up -d --wait`: every service healthy, every init done."""
        try:
            self.compose("up", "-d", "--wait", "--no-build", timeout=900)
        except ComposeError as failed:
            raise ComposeError(f"{failed}\n{self.unhealthy_logs()}") from None

    def down(self, volumes: bool = False) -> None:
        """`make down`: every profile's services too, whatever COMPOSE_PROFILES says now."""
        options = ["--volumes"] if volumes else []
        self.compose("--profile", "celery", "down", *options, "--remove-orphans", timeout=300)

    def services(self) -> dict[str, dict[str, Any]]:
        raw = self.compose("ps", "--all", "--format", "json")
        rows = [json.loads(line) for line in raw.splitlines() if line.strip()]
        return {row["Service"]: row for row in rows}

    def unhealthy_logs(self) -> str:
        notes = []
        for name, row in self.services().items():
            if row.get("Health") not in ("healthy", "") or row["State"] not in ("running",):
                logs = self.compose("logs", "--no-color", "--tail", "30", name, check=False)
                notes.append(f"--- {name}: {row['State']} {row.get('Health')}\n{logs}")
        return "\n".join(notes)

    def cp_in(self, source: Path, service: str, target: str) -> None:
        self.compose("cp", str(source), f"{service}:{target}")

    def cp_out(self, service: str, source: str, target: Path) -> None:
        self.compose("cp", f"{service}:{source}", str(target))

    def exec(self, service: str, *command: str, check: bool = True) -> str:
        return self.compose("exec", "-T", service, *command, check=check)

    def restart(self, service: str) -> None:
        self.compose("restart", service, timeout=300)

    def container(self, service: str) -> dict[str, Any]:
        (info,) = json.loads(run("docker", "inspect", self.services()[service]["ID"]))
        return info

    def save_logs(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        for name in self.services():
            logs = self.compose("logs", "--no-color", "--timestamps", name, check=False)
            (folder / f"{name}.log").write_text(logs)

    def wait_healthy(self, service: str, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            row = self.services().get(service, {})
            if row.get("State") == "running" and row.get("Health") in ("healthy", ""):
                return
            time.sleep(2)
        raise ComposeError(f"{service} is not healthy:\n{self.unhealthy_logs()}")


class ContainerWatcher:
    """Inspects every container of `image` while it runs: its config and `docker diff` (what
    it changed in its own filesystem). Step containers live seconds, so it polls."""

    def __init__(self, image: str = TASK_IMAGE) -> None:
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
        """Each step container once, its `docker diff` again on every poll while it runs, so
        the last one seen is from late in its life. A container gone between two docker
        commands (the runtime removes it as soon as it ends) is simply skipped."""
        listed = run("docker", "ps", "-q", "--filter", f"ancestor={self.image}", check=False)
        for cid in listed.split():
            try:
                if cid not in self.seen:
                    (info,) = json.loads(run("docker", "inspect", cid))
                    if info["Config"]["Labels"].get("com.docker.compose.service"):
                        continue  # a service of the stack (serving), not a step
                    self.seen[cid] = info
                self.seen[cid]["Diff"] = run("docker", "diff", cid).split("\n")
            except (ComposeError, ValueError, subprocess.TimeoutExpired):
                continue

    def steps(self) -> set[str]:
        return {info["Config"]["Cmd"][0] for info in self.seen.values()}
