"""A content cache of step results: a step whose inputs are the same content as an earlier
successful run's reuses that run's result instead of recomputing it.

The key is content only (the snapshot's sha256, the parameters, the code version), never a
name or a time, so a cached result can only be served for exactly the inputs it was made from.
Entries live under `<artifact root>/_cache/<step>/<key>.json`, written atomically.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, TypeVar

from pydantic import BaseModel

from lepton_tasks import storage
from lepton_tasks.settings import get_settings

R = TypeVar("R", bound=BaseModel)


def cache_key(**inputs: Any) -> str:
    """The sha256 of the inputs, as canonical JSON."""
    return hashlib.sha256(json.dumps(inputs, sort_keys=True, default=str).encode()).hexdigest()


def _uri(step: str, key: str) -> str:
    return storage.join(get_settings().runs_root, "_cache", step, f"{key}.json")


def lookup(step: str, key: str, model: type[R]) -> R | None:
    """The result stored under `key`, or None."""
    uri = _uri(step, key)
    if not storage.exists(uri):
        return None
    return model.model_validate(storage.read_json(uri))


def store(step: str, key: str, result: BaseModel) -> None:
    """Keep a successful result under `key`."""
    storage.write_json(_uri(step, key), result.model_dump(mode="json"))
