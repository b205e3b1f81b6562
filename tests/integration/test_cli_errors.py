"""Bad input through the real CLI: a named error, its exit code, one line, nothing lost."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from lepton_tasks.errors import EXIT_CODES
from tests.conftest import digits, run_cli, write_npz


def assert_clean_failure(done, error: str, fragment: str) -> None:
    assert done.code == EXIT_CODES[error], done.stderr
    assert error in done.error_line and fragment in done.error_line, done.stderr
    assert "Traceback" not in done.stderr
    assert done.stdout.strip() == ""  # no result line: nothing downstream may consume it


def test_unknown_source_format_and_missing_file(tmp_path: Path, lepton_env: Path) -> None:
    run = str(tmp_path / "run")
    assert_clean_failure(
        run_cli("ingest", "--run-dir", run, "--source", "sklearn:mnist"),
        "UnknownSourceError",
        "unknown bundled dataset 'mnist'",
    )
    assert_clean_failure(
        run_cli("ingest", "--run-dir", run, "--format", "hdf5"),
        "UnknownSourceError",
        "unknown format 'hdf5'",
    )
    missing = str(tmp_path / "missing.npz")
    done = run_cli("ingest", "--run-dir", run, "--source", missing)
    assert_clean_failure(done, "InputDataError", f"file not found ({missing})")
    error = json.loads((tmp_path / "run" / "ingest" / "error.json").read_text())
    assert error["error"] == "InputDataError" and error["exit_code"] == 3


def test_empty_landing_zone_fails_or_skips_as_asked(tmp_path: Path, lepton_env: Path) -> None:
    run, landing = str(tmp_path / "run"), tmp_path / "landing"
    (landing / "_quarantine").mkdir(parents=True)
    done = run_cli("ingest", "--run-dir", run, "--source", str(landing))
    assert_clean_failure(done, "InputDataError", "no dataset in folder")
    done = run_cli("ingest", "--run-dir", run, "--source", str(landing), "--when-empty", "skip")
    assert_clean_failure(done, "NothingToIngestError", f"nothing to train on ({landing})")
    error = json.loads((tmp_path / "run" / "ingest" / "error.json").read_text())
    assert error["exit_code"] == 10
    done = run_cli("ingest", "--run-dir", run, "--source", str(landing), "--when-empty", "maybe")
    assert_clean_failure(done, "UsageError", "--when-empty must be fail or skip, not 'maybe'")
    # A landing zone nothing has created yet is skipped too; a real source is read as always.
    never_created = str(tmp_path / "no-landing-yet")
    done = run_cli("ingest", "--run-dir", run, "--source", never_created, "--when-empty", "skip")
    assert done.code == 10, done.stderr
    done = run_cli("ingest", "--run-dir", run, "--source", "sklearn:digits", "--when-empty", "skip")
    assert done.code == 0 and done.result["count"] == 1797


def test_labels_outside_the_class_set_quarantine_the_landing_batch(
    tmp_path: Path, lepton_env: Path
) -> None:
    images, labels = digits()
    landing = lepton_env / "landing"  # the configured landing zone
    bad = labels[:200].astype(np.int64)
    bad[[3, 9]] = [10, 11]
    write_npz(landing / "batch-1.npz", images[:200], bad)
    digits_only = {"LEPTON_CLASSES": json.dumps([str(d) for d in range(10)])}  # given on purpose
    done = run_cli(
        "ingest", "--run-dir", str(tmp_path / "run"), "--source", str(landing), env=digits_only
    )
    assert_clean_failure(done, "InputDataError", "2 label(s) outside the class set")
    assert "first at index 3" in done.error_line and "batch-1.npz" in done.error_line
    assert list((landing / "_quarantine").iterdir())
    assert not (tmp_path / "run" / "ingest" / "result.json").exists()


def test_validation_failure_exit_code_names_the_expectation(
    tmp_path: Path, lepton_env: Path
) -> None:
    images, labels = digits()
    mostly_ones = (labels == 1) | (np.arange(len(labels)) < 60)
    source = write_npz(tmp_path / "ones.npz", images[mostly_ones], labels[mostly_ones])
    run = str(tmp_path / "run")
    assert run_cli("ingest", "--run-dir", run, "--source", str(source)).code == 0
    done = run_cli("validate", "--run-dir", run, "--no-data-docs")
    assert_clean_failure(done, "DataValidationError", "class '1' share")
    assert "observed" in done.error_line
    summary = json.loads((tmp_path / "run" / "validate" / "summary.json").read_text())
    assert not summary["success"] and summary["quarantined"]


def test_upstream_missing_and_bad_flags(tmp_path: Path, lepton_env: Path) -> None:
    run = str(tmp_path / "empty-run")
    assert_clean_failure(
        run_cli("validate", "--run-dir", run), "UpstreamMissingError", "no result of step 'ingest'"
    )
    assert run_cli("ingest", "--run-dir", run).code == 0
    assert_clean_failure(
        run_cli("train", "--run-dir", run, "--architecture", "vgg"),
        "UsageError",
        "unknown model 'vgg'",
    )
    bad_flag = run_cli("train", "--run-dir", run, "--epochs", "0")
    assert bad_flag.code == 2 and "Traceback" not in bad_flag.stderr


def test_unreachable_tracking_store_fails_before_training(tmp_path: Path, lepton_env: Path) -> None:
    run = str(tmp_path / "run")
    assert run_cli("ingest", "--run-dir", run).code == 0
    closed = {"MLFLOW_TRACKING_URI": "http://127.0.0.1:9"}
    assert_clean_failure(
        run_cli("train", "--run-dir", run, env=closed), "TrackingUnavailableError", "127.0.0.1:9"
    )
    assert not (tmp_path / "run" / "train" / "model.keras").exists()
    unwritable = {"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/ro.db/x/mlflow.db"}
    (tmp_path / "ro.db").write_text("a file where a folder should be")
    assert_clean_failure(
        run_cli("train", "--run-dir", run, env=unwritable),
        "TrackingUnavailableError",
        "cannot create the folder",
    )


def test_outcome_files_name_the_result_or_the_error(tmp_path: Path, lepton_env: Path) -> None:
    """What every runtime reads back instead of the log: LEPTON_RESULT_FILE, LEPTON_ERROR_FILE."""
    files = {
        "LEPTON_RESULT_FILE": str(tmp_path / "r.json"),
        "LEPTON_ERROR_FILE": str(tmp_path / "e.json"),
    }
    run = str(tmp_path / "run")
    done = run_cli("ingest", "--run-dir", run, "--source", "sklearn:digits", env=files)
    assert done.code == 0
    assert json.loads((tmp_path / "r.json").read_text()) == done.result
    assert not (tmp_path / "e.json").exists()

    missing = str(tmp_path / "missing.npz")
    done = run_cli("ingest", "--run-dir", run, "--source", missing, env=files)
    error = json.loads((tmp_path / "e.json").read_text())
    assert error["exit_code"] == done.code == 3 and error["line"] == done.error_line


def test_a_bug_still_leaves_a_one_line_error_record(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An unexpected exception keeps its traceback (exit 1), and the runtime still gets one
    line saying what it was, for the alert."""
    from lepton_tasks.cli import run_step

    error_file = tmp_path / "e.json"
    monkeypatch.setenv("LEPTON_ERROR_FILE", str(error_file))

    def broken_step():
        raise RuntimeError("disk on fire\nsecond line")

    with pytest.raises(RuntimeError):
        run_step("train", None, broken_step)
    error = json.loads(error_file.read_text())
    assert error["exit_code"] == 1
    assert error["line"] == "lepton-tasks train: unexpected RuntimeError: disk on fire second line"

    def leaky_step():
        raise ConnectionError("cannot reach http://lepton:s3cret@mlflow:5000/api")

    with pytest.raises(ConnectionError):
        run_step("register", None, leaky_step)
    error = json.loads(error_file.read_text())
    assert "s3cret" not in json.dumps(error) and "http://lepton:***@mlflow:5000" in error["line"]


def test_orchestrated_log_lines_carry_no_second_timestamp(tmp_path: Path, lepton_env: Path) -> None:
    run = str(tmp_path / "run")
    stamped = run_cli("ingest", "--run-dir", run, "--source", "sklearn:digits")
    plain = run_cli(
        "ingest", "--run-dir", run, "--source", "sklearn:digits",
        env={"LEPTON_LOG_TIMESTAMPS": "0"},
    )  # fmt: skip
    assert stamped.stderr.splitlines()[0][:4].isdigit()  # 2026-...
    assert plain.stderr.splitlines()[0].startswith("INFO lepton_tasks.")
