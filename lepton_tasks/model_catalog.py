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


def model_source(name: str) -> str:
    """Where an architecture's code comes from, for the lineage: "module:function (dist x.y)"."""
    from importlib.metadata import PackageNotFoundError, packages_distributions, version

    target = installed_models().get(name) or name
    top = target.split(":", 1)[0].split(".", 1)[0]
    dists = packages_distributions().get(top, [])
    try:
        return f"{target} ({dists[0]} {version(dists[0])})" if dists else target
    except PackageNotFoundError:
        return target
