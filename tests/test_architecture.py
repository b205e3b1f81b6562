"""The shape of the code, checked: layers import only downwards, steps never import each other,
functions stay short enough to read and test alone."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LIBRARY = REPO / "lepton_tasks"
STEPS = LIBRARY / "steps"
PLUGINS = REPO / "plugins"
MAX_FUNCTION_LINES = 60


def imported_modules(path: Path) -> set[str]:
    modules: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            modules |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            modules.add(node.module)
            modules |= {f"{node.module}.{alias.name}" for alias in node.names}
    return modules


def python_files(*folders: Path) -> list[Path]:
    return sorted(p for folder in folders for p in folder.rglob("*.py"))


def test_the_task_library_never_imports_airflow_or_the_plugins() -> None:
    for path in python_files(LIBRARY):
        leaks = {
            m for m in imported_modules(path) if m.split(".")[0] in {"airflow", "lepton_airflow"}
        }
        assert not leaks, f"{path.relative_to(REPO)} imports {sorted(leaks)}"


@pytest.mark.parametrize("step", sorted(p.stem for p in STEPS.glob("*.py") if p.stem != "__init__"))
def test_no_step_module_imports_another(step: str) -> None:
    others = {p.stem for p in STEPS.glob("*.py")} - {step, "__init__"}
    imported = imported_modules(STEPS / f"{step}.py")
    bad = {m for m in imported if m.startswith("lepton_tasks.steps.") and m.split(".")[2] in others}
    assert not bad, f"steps/{step}.py imports {sorted(bad)}"


def test_no_function_is_longer_than_it_can_be_read() -> None:
    long = []
    for path in python_files(LIBRARY, PLUGINS):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(REPO)}:{node.lineno} {node.name} ({lines})")
    assert not long, "longer than 60 lines, docstring included: " + ", ".join(long)


def test_one_settings_class_per_layer_and_each_variable_defined_once() -> None:
    import sys

    sys.path.insert(0, str(PLUGINS))
    from lepton_airflow.settings import ORCHESTRATION_ONLY, RuntimeSettings
    from lepton_tasks.settings import Settings

    assert issubclass(RuntimeSettings, Settings)
    added = set(RuntimeSettings.model_fields) - set(Settings.model_fields)
    assert {f"LEPTON_{name.upper()}" for name in added} == ORCHESTRATION_ONLY
    assert "LEPTON_HOME" not in ORCHESTRATION_ONLY  # the steps' setting, which runtimes set
