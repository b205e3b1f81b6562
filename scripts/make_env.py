"""Write .env from .env.example with every `generate` replaced by a fresh random secret.

    make_env.py [--output PATH] [--force]

PATH defaults to .env beside docker-compose.yml (`docker compose --env-file PATH` reads
another). The Docker socket and its group are taken from this host's engine (DOCKER_HOST).
"""

from __future__ import annotations

import argparse
import base64
import grp
import os
import secrets
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def secret_for(key: str) -> str:
    if key == "AIRFLOW_FERNET_KEY":  # Fernet wants 32 url-safe base64-encoded bytes
        return base64.urlsafe_b64encode(secrets.token_bytes(32)).decode()
    return secrets.token_urlsafe(32)


def docker_socket(default: str) -> str:
    """The engine's socket on this host: DOCKER_HOST's, when it is a local socket."""
    host = os.environ.get("DOCKER_HOST", "")
    return host.removeprefix("unix://") if host.startswith("unix:///") else default


def has_gpu() -> bool:
    import shutil
    import subprocess

    nvidia_smi = shutil.which("nvidia-smi")
    if not nvidia_smi:
        return False
    listed = subprocess.run([nvidia_smi, "-L"], capture_output=True, text=True, check=False)
    return listed.returncode == 0 and "GPU" in listed.stdout


def host_value(key: str, default: str) -> str:
    # AIRFLOW_UID stays the image's 50000: the DAGs are in the image and the data in named
    # volumes, so no host folder needs the host's uid (and root would run Airflow as root).
    if key == "DOCKER_SOCKET":
        return docker_socket(default)
    if key == "LEPTON_TRAIN_GPUS" and not has_gpu():
        print("make env: no GPU found (nvidia-smi): LEPTON_TRAIN_GPUS=0, train runs on the CPU")
        return "0"
    if key == "DOCKER_GID":
        socket = Path(docker_socket("/var/run/docker.sock"))
        if socket.exists():  # whoever may use the socket: its group
            return str(socket.stat().st_gid)
        try:
            return str(grp.getgrnam("docker").gr_gid)
        except KeyError:
            return default
    return default


def fresh_line(line: str) -> str:
    if "=" not in line or line.startswith("#"):
        return line
    key, value = line.split("=", 1)
    value = secret_for(key) if value == "generate" else host_value(key, value)
    return f"{key}={value}"


def add_missing(target: Path) -> None:
    """An .env from an earlier release keeps its values and gains the keys it lacks."""
    have = {line.split("=", 1)[0] for line in target.read_text().splitlines() if "=" in line}
    missing = [
        fresh_line(line)
        for line in (ROOT / ".env.example").read_text().splitlines()
        if "=" in line and not line.startswith("#") and line.split("=", 1)[0] not in have
    ]
    if missing:
        with target.open("a") as handle:
            handle.write("\n".join(missing) + "\n")
    added = ", ".join(line.split("=", 1)[0] for line in missing) or "nothing"
    print(f"{target} exists: kept its values, added {added} (--force replaces every secret)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=ROOT / ".env", help="default: .env")
    parser.add_argument("--force", action="store_true", help="replace every secret")
    args = parser.parse_args()
    target = args.output
    if target.exists() and not args.force:
        add_missing(target)
        return
    lines = [fresh_line(line) for line in (ROOT / ".env.example").read_text().splitlines()]
    # Created with mode 600: the secrets are never readable by others, not even for a moment.
    if target.exists():
        target.unlink()
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write("\n".join(lines) + "\n")
    print(f"wrote {target} (mode 600)")


if __name__ == "__main__":
    main()
