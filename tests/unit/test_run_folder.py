"""The run folder's layout and the outcome of a run's steps, read from it."""

from __future__ import annotations

from pathlib import Path

from lepton_tasks.results import IngestResult, read_result
from lepton_tasks.run_folder import RunFolder
from lepton_tasks.steps.ingest import ingest


def test_a_step_keeps_its_result_where_the_next_step_is_told_to_read_it(
    tmp_path: Path, lepton_env: Path
) -> None:
    run = str(tmp_path / "run")
    result = ingest("sklearn:digits", run)
    folder = RunFolder(run)
    assert result.result_uri == folder.result_uri("ingest")
    assert read_result(result.result_uri, IngestResult) == result


def test_first_failure_is_the_first_step_with_an_error_or_without_a_result(tmp_path: Path) -> None:
    folder = RunFolder(str(tmp_path / "run"))
    steps = ["ingest", "validate", "train"]
    assert folder.first_failure(steps) == ("ingest", None)  # nothing ran
    folder.save_result("ingest", {"step": "ingest"})
    folder.save_error("validate", {"error": "DataValidationError", "message": "class '3'"})
    assert folder.first_failure(steps) == (
        "validate",
        {"error": "DataValidationError", "message": "class '3'"},
    )
    folder.clear_error("validate")
    folder.save_result("validate", {})
    folder.save_result("train", {})
    assert folder.first_failure(steps) is None


def test_orchestrator_run_ids_become_safe_folder_names(tmp_path: Path) -> None:
    folder = RunFolder.for_orchestrator_run(
        str(tmp_path), "lepton_training", "manual__2026-01-01T02:00:00+00:00"
    )
    assert Path(folder.uri).parent == tmp_path / "lepton_training"
    assert ":" not in Path(folder.uri).name and "+" not in Path(folder.uri).name


def test_run_ids_that_differ_only_in_unsafe_characters_get_different_folders(
    tmp_path: Path,
) -> None:
    """Before (issue 12): `a:b` and `a_b` shared one run folder."""
    first = RunFolder.for_orchestrator_run(str(tmp_path), "dag", "a:b")
    second = RunFolder.for_orchestrator_run(str(tmp_path), "dag", "a_b")
    assert first.uri != second.uri
    assert Path(second.uri).name == "a_b"  # a safe id is kept as it is
