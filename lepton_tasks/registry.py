"""The model registry as Lepton uses it: the champion, its moves, their history, a summary.

Steps and the Lepton page import this; it imports no step. Every call goes to MLflow's
registry (`MLFLOW_TRACKING_URI`), with MLflow's failures turned into named errors.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
import urllib.request
import uuid
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from typing import Any

from lepton_tasks import storage, tracking
from lepton_tasks.data.snapshot import read_manifest
from lepton_tasks.errors import ChampionMovedError, RegistryError, UsageError
from lepton_tasks.redact import redact
from lepton_tasks.results import ModelInfo, RollbackResult, VersionInfo, records_result
from lepton_tasks.settings import get_settings

log = logging.getLogger(__name__)

# One registered-model tag per promotion or rollback: MLflow keeps each tag value in a
# VARCHAR(5000) (enforced by PostgreSQL), so a history in one tag overflows after a few dozen
# events. Keys sort in time order. The single JSON-list tag of earlier releases is still read.
HISTORY_TAG_PREFIX = "lepton.promotion."
LEGACY_HISTORY_TAG = "lepton.promotion_history"
MAX_REASON_CHARS = 1000
# The champion lock is a registered model of this name: creating a registered model is atomic
# in MLflow's database (its name is unique), on SQLite and PostgreSQL alike, and needs no
# storage shared between the workers and the Airflow web server.
LOCK_SUFFIX = ".lepton-lock"
# Every registered model Lepton's register step made or wrote to carries this tag: the Lepton
# page lists (and may roll back) these, and no other model of the registry.
MANAGED_TAG = "lepton.managed"


def champion_version(model_name: str) -> Any | None:
    """The version `champion` points at; None when the model or the alias does not exist."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient()
    with tracking.tracking_errors("looking up the champion"):
        # A server with authentication answers 403, not 404, for a model that does not exist
        # (nobody holds a permission on it): search, which any user may, says whether it does.
        if "'" in model_name:
            raise UsageError(f"a registered model name cannot hold a quote: {model_name!r}")
        if not client.search_registered_models(filter_string=f"name = '{model_name}'"):
            return None
        try:
            return client.get_model_version_by_alias(model_name, "champion")
        except MlflowException as exc:
            if "RESOURCE_DOES_NOT_EXIST" in str(exc.error_code) or "not found" in str(exc).lower():
                return None
            raise


def champion_number(model_name: str) -> str | None:
    """The champion's version number, or None.

    Over MLflow's REST API when the store is a server: no MLflow import, which costs seconds,
    and check-inputs runs every night.
    """
    uri = tracking.tracking_uri()
    if uri.startswith(("http://", "https://")):
        found = _champion_over_rest(uri, model_name)
        if found is not _UNKNOWN:
            return found  # type: ignore[return-value]
    tracking.setup()
    champion = champion_version(model_name)
    return str(champion.version) if champion is not None else None


_UNKNOWN = object()
# Client settings the one GET does not apply (workspaces, TLS options, auth plugins): with any
# of them set, MLflow's own client answers.
_CLIENT_ONLY = (
    "MLFLOW_WORKSPACE",
    "MLFLOW_TRACKING_INSECURE_TLS",
    "MLFLOW_TRACKING_CLIENT_CERT_PATH",
    "MLFLOW_TRACKING_SERVER_CERT_PATH",
    "MLFLOW_TRACKING_AUTH",
)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def _champion_over_rest(uri: str, model_name: str) -> object:
    """The alias lookup as one GET.

    `_UNKNOWN` for anything but a plain answer (TLS settings, errors, a server that hides
    missing models behind 403), which the full client then handles and reports.
    """
    import base64
    import os
    import urllib.error
    import urllib.parse

    if any(os.environ.get(name) for name in _CLIENT_ONLY):
        return _UNKNOWN
    query = urllib.parse.urlencode({"name": model_name, "alias": "champion"})
    request = urllib.request.Request(
        f"{uri.rstrip('/')}/api/2.0/mlflow/registered-models/alias?{query}"
    )
    if token := os.environ.get("MLFLOW_TRACKING_TOKEN"):
        request.add_header("Authorization", f"Bearer {token}")
    elif user := os.environ.get("MLFLOW_TRACKING_USERNAME"):
        secret = f"{user}:{os.environ.get('MLFLOW_TRACKING_PASSWORD', '')}".encode()
        request.add_header("Authorization", f"Basic {base64.b64encode(secret).decode()}")
    # No redirects: a 3xx goes to the full client, and credentials never follow it elsewhere.
    opener = urllib.request.build_opener(_NoRedirect)
    try:
        with opener.open(request, timeout=10) as response:
            return str(json.load(response)["model_version"]["version"])
    except urllib.error.HTTPError as exc:
        body = exc.read().decode(errors="replace")
        return None if exc.code == 404 and "RESOURCE_DOES_NOT_EXIST" in body else _UNKNOWN
    except (OSError, ValueError, KeyError):
        return _UNKNOWN


def shorten(text: str, limit: int = MAX_REASON_CHARS) -> str:
    """A free-text reason cut to fit a tag value, marked where it was cut."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def promotion_history(tags: Mapping[str, str]) -> list[dict[str, Any]]:
    """The registered model's promotions and rollbacks, oldest first, from its tags."""
    history: list[dict[str, Any]] = []
    raw = [tags.get(LEGACY_HISTORY_TAG, "[]")]
    raw += [tags[k] for k in sorted(k for k in tags if k.startswith(HISTORY_TAG_PREFIX))]
    for value in raw:
        try:
            entry = json.loads(value)
        except json.JSONDecodeError:  # a hand-edited tag must not take the page down
            log.warning("skipping an unreadable promotion record: %.80s", value)
            continue
        history += entry if isinstance(entry, list) else [entry]
    return history


@contextlib.contextmanager
def champion_lock(client: Any, model_name: str, holder: str) -> Iterator[None]:
    """Hold the lock every champion move of `model_name` takes (register and rollback).

    Each hold has its own token: only the holder releases it, and a stale lock is broken
    only if it is still the one found stale.

    Raises:
        RegistryError: another holder kept it past LEPTON_REGISTRY_LOCK_TIMEOUT_S.
    """
    settings = get_settings()
    name = f"{model_name}{LOCK_SUFFIX}"
    token = uuid.uuid4().hex
    deadline = time.monotonic() + settings.registry_lock_timeout_s
    while not _try_lock(client, name, holder, token):
        held = _lock_tags(client, name)
        if held and time.time() - float(held.get("lepton.lock_since", "0")) > (
            settings.registry_lock_stale_s
        ):
            _break_stale(client, name, held)
        if time.monotonic() > deadline:
            who = f" by {held.get('lepton.lock_holder', '?')}" if held else ""
            raise RegistryError(f"the champion of '{model_name}' is locked{who}; try again later")
        time.sleep(0.5)
    try:
        yield
    finally:
        _release(client, name, token)


def _try_lock(client: Any, name: str, holder: str, token: str) -> bool:
    from mlflow.exceptions import MlflowException

    tags = {
        "lepton.lock_holder": holder,
        "lepton.lock_since": str(time.time()),
        "lepton.lock_token": token,
    }
    try:
        client.create_registered_model(name, tags=tags, description="Lepton: champion lock")
    except MlflowException as exc:
        if "RESOURCE_ALREADY_EXISTS" in str(exc.error_code):
            return False
        raise
    return True


def _lock_tags(client: Any, name: str) -> dict[str, str] | None:
    from mlflow.exceptions import MlflowException

    try:
        return dict(client.get_registered_model(name).tags)
    except MlflowException:  # released in between
        return None


def _break_stale(client: Any, name: str, seen: dict[str, str]) -> None:
    now = _lock_tags(client, name)
    if now is None or now.get("lepton.lock_token") != seen.get("lepton.lock_token"):
        return  # released or taken again since it was read
    log.warning("breaking a stale champion lock held by %s", seen.get("lepton.lock_holder"))
    _release(client, name, seen.get("lepton.lock_token", ""))


def _release(client: Any, name: str, token: str) -> None:
    """Delete the lock if it is still `token`'s.

    A failure is logged, never raised: the move it guarded has happened, or failed for its own
    reason.
    """
    held = _lock_tags(client, name)
    if held is None or held.get("lepton.lock_token", "") != token:
        return
    try:
        client.delete_registered_model(name)
    except Exception:
        log.warning("could not release the champion lock %s", name, exc_info=True)


def move_champion(
    client: Any,
    model_name: str,
    version: str,
    entry: dict[str, Any],
    *,
    expected: str | None,
) -> str | None:
    """Move `champion` to `version` if it still points at `expected` (None: no champion).

    Under the champion lock: the check and the move are one step for every mover. The event
    is recorded first, then the alias moves; if the move fails, the record is taken back, so
    the history never shows a promotion that did not happen nor misses one that did.

    Returns:
        The previous champion version.

    Raises:
        ChampionMovedError: the champion is not `expected` any more; nothing was changed.
    """
    holder = " ".join(str(entry[k]) for k in ("by", "pipeline_run_id") if entry.get(k)) or "?"
    with champion_lock(client, model_name, holder):
        current = champion_version(model_name)
        previous = str(current.version) if current else None
        if previous != expected:
            raise ChampionMovedError(
                f"the champion of '{model_name}' is {_v(previous)}, not {_v(expected)} as when "
                f"this was decided; nothing was moved",
                where=model_name,
            )
        _record_and_move(client, model_name, version, {**entry, "previous": previous})
    return previous


def _v(version: str | None) -> str:
    return f"v{version}" if version else "none"


def _record_and_move(client: Any, model_name: str, version: str, entry: dict[str, Any]) -> None:
    now = datetime.now(UTC)
    entry = {
        **entry,
        "version": version,
        "reason": shorten(str(entry.get("reason") or "")),
        "at": now.isoformat(timespec="seconds"),
    }
    key = f"{HISTORY_TAG_PREFIX}{now:%Y%m%dT%H%M%S%fZ}-{uuid.uuid4().hex[:8]}"
    # unescaped, so the cut above bounds the stored size (MLflow counts characters)
    client.set_registered_model_tag(model_name, key, json.dumps(entry, ensure_ascii=False))
    try:
        client.set_registered_model_alias(model_name, "champion", version)
    except Exception:
        try:
            client.delete_registered_model_tag(model_name, key)
        except Exception:  # the original failure is the one to report
            log.warning("could not take back history record %s", key, exc_info=True)
        raise


NO_EXPECTATION = "any"


@records_result
def rollback(
    model_name: str | None,
    version: str,
    reason: str,
    who: str,
    run_dir: str,
    expected_champion: str | None = NO_EXPECTATION,
) -> RollbackResult:
    """Point `champion` at an earlier version, recording who did it and why.

    Args:
        model_name: the registered model [default: LEPTON_MODEL_NAME].
        version: the version to make champion.
        reason: why, recorded in the promotion history.
        who: who rolls back, recorded too.
        run_dir: where the result is kept.
        expected_champion: the champion the caller saw ("" or None: none); the rollback is
            refused if it moved since. By default, whichever champion there is now.

    Returns:
        The new and the previous champion version.

    Raises:
        RegistryError: no reason, an unknown version, or the lock is held too long.
        ChampionMovedError: the champion is not the one the caller saw any more.
    """
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    model_name = model_name or get_settings().model_name
    if not reason.strip():
        raise RegistryError("a rollback needs a reason")
    tracking.setup()
    client = MlflowClient()
    with tracking.tracking_errors("rolling back"):
        try:
            client.get_model_version(model_name, version)
        except MlflowException as exc:
            raise RegistryError(f"no version {version} of model '{model_name}'") from exc
        if expected_champion == NO_EXPECTATION:
            current = champion_version(model_name)
            expected_champion = str(current.version) if current else None
        entry = {"by": who, "reason": f"rollback: {reason}"}
        previous = move_champion(
            client, model_name, version, entry, expected=expected_champion or None
        )
    return RollbackResult(
        run_dir=run_dir,
        model_name=model_name,
        champion_version=version,
        previous_champion_version=previous,
    )


def lepton_models() -> list[str]:
    """The registered models Lepton manages (tagged by register), by name."""
    from mlflow import MlflowClient

    tracking.setup()
    with tracking.tracking_errors("listing the registered models"):
        models = MlflowClient().search_registered_models(
            filter_string=f"tags.`{MANAGED_TAG}` = 'true'", max_results=1000
        )
    return sorted(model.name for model in models if not model.name.endswith(LOCK_SUFFIX))


def _class_names(tags: Mapping[str, str]) -> list[str] | None:
    try:
        names = json.loads(tags.get("lepton.class_names") or "null")
    except json.JSONDecodeError:  # a hand-edited tag must not take the page down
        return None
    return [str(n) for n in names] if isinstance(names, list) else None


def describe_model(model_name: str | None = None) -> ModelInfo:
    """The registered model's versions, newest first, with aliases, metrics and lineage."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    model_name = model_name or get_settings().model_name
    tracking.setup()
    client = MlflowClient()
    with tracking.tracking_errors("reading the registry"):
        try:
            model = client.get_registered_model(model_name)
        except MlflowException as exc:
            raise RegistryError(f"no registered model '{model_name}'") from exc
        versions = client.search_model_versions(f"name='{model_name}'")
    # search results carry no aliases; the registered model has the alias -> version map
    aliases: dict[str, list[str]] = {}
    for alias, number in (model.aliases or {}).items():
        aliases.setdefault(str(number), []).append(alias)
    rows = []
    for version in sorted(versions, key=lambda v: int(v.version), reverse=True):
        tags = version.tags
        rows.append(
            VersionInfo(
                version=str(version.version),
                aliases=sorted(aliases.get(str(version.version), [])),
                metrics={
                    k.removeprefix("lepton.metric."): float(v)
                    for k, v in tags.items()
                    if k.startswith("lepton.metric.")
                },
                snapshot_id=tags.get("lepton.snapshot_id"),
                snapshot_count=int(tags["lepton.snapshot_count"])
                if "lepton.snapshot_count" in tags
                else None,
                architecture=tags.get("lepton.architecture"),
                class_names=_class_names(tags),
                pipeline_run_id=tags.get("lepton.pipeline_run_id") or None,
                dag_id=tags.get("lepton.dag_id"),
                dag_run_id=tags.get("lepton.dag_run_id"),
                train_run_id=tags.get("lepton.train_run_id"),
                decision=tags.get("lepton.decision"),
                created_at=datetime.fromtimestamp(version.creation_timestamp / 1000, UTC).isoformat(
                    timespec="seconds"
                ),
            )
        )
    history = promotion_history(model.tags)
    return ModelInfo(
        run_dir="",
        model_name=model_name,
        tracking_uri=redact(tracking.tracking_uri()),
        versions=rows,
        promotion_history=history,
    )


def class_names_of(version: Any) -> list[str] | None:
    """A registered version's class set: its tag, else the manifest of its snapshot."""
    tags = version.tags or {}
    if "lepton.class_names" in tags:
        return list(json.loads(tags["lepton.class_names"]))
    uri = tags.get("lepton.snapshot_uri")
    if uri and storage.exists(storage.join(uri, "manifest.json")):
        return list(read_manifest(uri)["class_names"])
    return None
