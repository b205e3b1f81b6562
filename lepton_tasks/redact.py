"""Secrets out of logs, results and pages: credentials inside URLs, and secret URLs whole."""

from __future__ import annotations

import re

# `scheme://user:password@host` -> `scheme://user:***@host` (also an empty user name)
_URL_CREDENTIALS = re.compile(r"(://[^/\s:@]*):[^/\s@]+@")
# `https://TOKEN@host`: a user name alone is a token in http(s) URLs
_URL_TOKEN_USER = re.compile(r"(https?://)[^/\s:@]+@")
# `?sig=...&token=...`: query parameters that carry credentials
_SECRET_QUERY = re.compile(
    r"([?&](?:[\w.-]*(?:sig|signature|token|key|secret|password|credential)[\w.-]*)=)[^&\s\"'<>]+",
    re.IGNORECASE,
)
# Webhook URLs are their own credential (Slack, Teams, Discord...): only the host is shown.
_URLS = re.compile(r"(https?://[^/\s\"'<>]+)(/[^\s\"'<>]*)")


def _hide_hook_path(match: re.Match[str]) -> str:
    host, path = match.group(1), match.group(2)
    return f"{host}/***" if "hook" in (host + path).lower() else match.group(0)


def redact(text: str) -> str:
    """`text` with URL passwords and webhook paths replaced by `***`."""
    text = _URL_CREDENTIALS.sub(r"\1:***@", text)
    text = _URL_TOKEN_USER.sub(r"\1***@", text)
    text = _SECRET_QUERY.sub(r"\1***", text)
    return _URLS.sub(_hide_hook_path, text)
