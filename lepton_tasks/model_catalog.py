"""Which architectures exist, by name, without importing any of them (the DAG's trigger form
lists them at parse time): Lepton's own, and every `lepton.models` entry point installed.

A package of yours registers a model in its pyproject.toml:

    [project.entry-points."lepton.models"]
    my_net = "my_package.my_module:build"

`build(input_shape, num_classes)` returns an uncompiled `keras.Model`.
"""

from __future__ import annotations

ENTRY_POINT_GROUP = "lepton.models"
BUILT_IN = ("lepton_cnn", "seed_cnn")


def installed_models() -> dict[str, str]:
    """Every architecture by name -> "module:function" (Lepton's own first)."""
    from importlib.metadata import entry_points

    found = {name: f"lepton_tasks.models:_{name}" for name in BUILT_IN}
    for point in entry_points(group=ENTRY_POINT_GROUP):
        found.setdefault(point.name, point.value)
    return found


def model_code_version(name: str) -> str:
    """A hash of the source of a model of yours (its module, or its whole package): an edit
    to it changes every cache key, even where the package's version does not. Lepton's own
    models are covered by Lepton's code version: ""."""
    import hashlib
    import importlib.util
    from pathlib import Path

    if name in BUILT_IN:
        return ""
    module = (installed_models().get(name) or name).split(":", 1)[0]
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return "unknown"
    if spec is None or not spec.origin or not Path(spec.origin).is_file():
        return "unknown"
    origin = Path(spec.origin)
    files = sorted(origin.parent.rglob("*.py")) if origin.name == "__init__.py" else [origin]
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def model_source(name: str) -> str:
    """Where an architecture's code comes from, for the lineage:
    "module:function (dist x.y, code <hash>)"."""
    from importlib.metadata import PackageNotFoundError, packages_distributions, version

    target = installed_models().get(name) or name
    top = target.split(":", 1)[0].split(".", 1)[0]
    code = model_code_version(name)
    details = [f"code {code}"] if code else []
    dists = packages_distributions().get(top, [])
    try:
        if dists:
            details.insert(0, f"{dists[0]} {version(dists[0])}")
    except PackageNotFoundError:
        pass
    return f"{target} ({', '.join(details)})" if details else target
