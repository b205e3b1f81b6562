"""Write .env from .env.example with every `generate` replaced by a fresh random secret."""

from __future__ import annotations

import base64
import grp
import os
import secrets
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def secret_for(key: str) -> str:
    if key == "AIRFLOW_FERNET_KEY":  # Fernet wants 32 url-safe base64-encoded bytes
        return base64.urlsafe_b64encode(secrets.token_bytes(32)).decode()
    return secrets.token_urlsafe(32)


def host_value(key: str, default: str) -> str:
    if key == "AIRFLOW_UID":
        return str(os.getuid())
    if key == "DOCKER_GID":
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
    target = ROOT / ".env"
    if target.exists() and "--force" not in sys.argv:
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
