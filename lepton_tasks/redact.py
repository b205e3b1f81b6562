"""Secrets out of logs, results and pages: credentials inside URLs, and secret URLs whole."""

from __future__ import annotations

import re

# `scheme://user:password@host` -> `scheme://user:***@host`
_URL_CREDENTIALS = re.compile(r"(://[^/\s:@]+):[^/\s@]+@")
# Webhook URLs are their own credential (Slack, Teams, Discord...): only the host is shown.
_URLS = re.compile(r"(https?://[^/\s\"'<>]+)(/[^\s\"'<>]*)")


def _hide_hook_path(match: re.Match[str]) -> str:
    host, path = match.group(1), match.group(2)
    return f"{host}/***" if "hook" in (host + path).lower() else match.group(0)


def redact(text: str) -> str:
    """`text` with URL passwords and webhook paths replaced by `***`."""
    text = _URL_CREDENTIALS.sub(r"\1:***@", text)
    return _URLS.sub(_hide_hook_path, text)
