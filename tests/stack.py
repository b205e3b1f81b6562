"""The embedded stack as users start it (`make ui`): `airflow standalone` (its scheduler,
triggerer, dag processor and API server) and `mlflow server`.

Each test session gets its own folder, free ports and a known admin password, so nothing here
reads or writes the developer's `.lepton/` and two sessions never collide.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
ADMIN_USER = "admin"
ADMIN_PASSWORD = "lepton-browser-test"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class StackError(RuntimeError):
    """A server of the stack did not come up; the message ends with its log."""


@dataclass
class Stack:
    root: Path
    airflow_port: int = field(default_factory=free_port)
    mlflow_port: int = field(default_factory=free_port)
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    # Variables of this stack's own on top of the defaults (e.g. the scheduler's settings).
    extra_env: dict[str, str] = field(default_factory=dict)

    @property
    def lepton_home(self) -> Path:
        return self.root / "lepton"

    @property
    def airflow_home(self) -> Path:
        return self.root / "airflow"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def airflow_url(self) -> str:
        return f"http://127.0.0.1:{self.airflow_port}"

    @property
    def mlflow_url(self) -> str:
        return f"http://127.0.0.1:{self.mlflow_port}"

    @property
    def python(self) -> Path:
        return BIN / "python"

    @property
    def tracking_uri(self) -> str:
        return f"sqlite:///{self.lepton_home}/mlflow.db"

    def environment(self) -> dict[str, str]:
        """What scripts/airflow-env.sh and scripts/ui.sh export, with this stack's paths."""
        env = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith(("AIRFLOW", "LEPTON_", "MLFLOW_"))
        }
        env.update(
            {
                "PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}",
                "LEPTON_HOME": str(self.lepton_home),
                "MLFLOW_TRACKING_URI": self.tracking_uri,
                "LEPTON_MLFLOW_UI_URL": self.mlflow_url,
                "AIRFLOW_HOME": str(self.airflow_home),
                "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
                "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
                "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
                "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
                "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
                "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{ADMIN_USER}:admin",
                "AIRFLOW__API__HOST": "127.0.0.1",
                "AIRFLOW__API__PORT": str(self.airflow_port),
                "AIRFLOW__API__BASE_URL": self.airflow_url,
                "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.airflow_url}/execution/",
                # No scheduled runs: on first sight of the DAG the scheduler would start the latest
                # nightly run (catchup off still runs the most recent interval), and with
                # max_active_runs=1 the run the test triggers would wait behind it.
                "AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": "False",
                # One api-server worker: enough for one browser, and half the start-up time.
                "AIRFLOW__API__WORKERS": "1",
                "GX_ANALYTICS_ENABLED": "False",
                "TF_CPP_MIN_LOG_LEVEL": "2",
            }
        )
        env.update(self.extra_env)
        return env

    def seed_champion(self, epochs: str, *evaluate_options: str) -> None:
        """A champion v1 trained on the bundled digits by the CLI, before the stack starts."""
        self.lepton_home.mkdir(parents=True)
        self.logs.mkdir(parents=True)
        seed = self.root / "seed-run"
        for step, extra in [
            ("ingest", ["--source", "sklearn:digits"]),
            ("validate", []),
            ("train", ["--epochs", epochs]),
            ("evaluate", list(evaluate_options)),
            ("register", []),
        ]:
            command = [str(BIN / "lepton-tasks"), step, "--run-dir", str(seed), *extra]
            self.run_cli(f"seed-{step}", command)

    def api(self, method: str, path: str, body: object | None = None) -> Any:
        """Airflow's REST API (`/api/v2/...`) as the admin user; the JSON answer."""
        if not hasattr(self, "_token"):
            self._token = self._request(
                "POST", "/auth/token", {"username": ADMIN_USER, "password": ADMIN_PASSWORD}
            )["access_token"]
        return self._request(method, path, body, self._token)

    def _request(
        self, method: str, path: str, body: object | None, token: str | None = None
    ) -> Any:
        headers = {"Content-Type": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        request = urllib.request.Request(
            self.airflow_url + path,
            method=method,
            data=None if body is None else json.dumps(body).encode(),
            headers=headers,
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read() or b"null")

    def start(self) -> None:
        for folder in (self.lepton_home, self.airflow_home, self.logs):
            folder.mkdir(parents=True, exist_ok=True)
        # The simple auth manager keeps the passwords it generates in this file; a user already
        # in it keeps its password.
        passwords = self.airflow_home / "simple_auth_manager_passwords.json.generated"
        passwords.write_text(json.dumps({ADMIN_USER: ADMIN_PASSWORD}))
        self._spawn(
            "mlflow",
            [
                str(BIN / "mlflow"),
                "server",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.mlflow_port),
                "--backend-store-uri",
                self.tracking_uri,
                "--workers",
                "1",
            ],
        )
        self._spawn("airflow", [str(BIN / "airflow"), "standalone"])

    def _spawn(self, name: str, command: list[str]) -> None:
        log = (self.logs / f"{name}.log").open("wb")
        self.processes[name] = subprocess.Popen(
            command,
            env=self.environment(),
            cwd=self.root,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: stop() takes its children too
        )

    def run_cli(self, name: str, command: list[str], timeout: float = 600) -> str:
        """Run a command in the stack's environment; its output goes to logs/<name>.log."""
        done = subprocess.run(
            command,
            env=self.environment(),
            cwd=self.root,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        (self.logs / f"{name}.log").write_text(done.stdout + done.stderr)
        if done.returncode != 0:
            raise StackError(
                f"{' '.join(command)} exited {done.returncode}:\n{done.stderr[-3000:]}"
            )
        return done.stdout

    def wait_until_ready(self, timeout: float = 300) -> None:
        self._wait("mlflow", f"{self.mlflow_url}/health", lambda body: b"OK" in body, timeout)
        self._wait(
            "airflow",
            f"{self.airflow_url}/api/v2/monitor/health",
            _all_components_healthy,
            timeout,
        )

    def _wait(self, name: str, url: str, ready: Callable[[bytes], bool], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            process = self.processes[name]
            if process.poll() is not None:
                raise StackError(f"{name} exited with {process.returncode}:\n{self.log_tail(name)}")
            try:
                with urllib.request.urlopen(url, timeout=5) as response:
                    if ready(response.read()):
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(1)
        raise StackError(f"{name} not ready at {url} after {timeout:.0f} s:\n{self.log_tail(name)}")

    def log_tail(self, name: str, chars: int = 4000) -> str:
        path = self.logs / f"{name}.log"
        return path.read_text(errors="replace")[-chars:] if path.exists() else "(no log)"

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process in self.processes.values():
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


def _all_components_healthy(body: bytes) -> bool:
    health = json.loads(body)
    components = ("metadatabase", "scheduler", "triggerer", "dag_processor")
    return all((health.get(name) or {}).get("status") == "healthy" for name in components)
