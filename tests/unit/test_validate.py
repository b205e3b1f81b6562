"""Validate: the GE suite passes real data and names each failure with its observed value."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from lepton_tasks.errors import DataValidationError
from lepton_tasks.results import ValidateResult
from lepton_tasks.steps.ingest import ingest
from lepton_tasks.steps.validate import validate
from tests.conftest import digits, ingested_snapshot, write_npz


def snapshot_of(tmp_path: Path, name: str, images: np.ndarray, labels: np.ndarray) -> str:
    run = tmp_path / name
    ingest(str(write_npz(tmp_path / f"{name}.npz", images, labels)), str(run))
    return str(run)


def validate_run(run: str | Path, **options: object) -> ValidateResult:
    """Validate the snapshot that ingest left in the run folder `run`."""
    return validate(ingested_snapshot(run), str(run), **options)


def failed_checks(excinfo: pytest.ExceptionInfo[DataValidationError]) -> dict[str, dict]:
    return {f["check"]: f for f in excinfo.value.failures}


def test_real_digits_pass_and_data_docs_are_written(tmp_path: Path, lepton_env: Path) -> None:
    run = tmp_path / "run"
    ingest("sklearn:digits", str(run))
    result = validate_run(str(run))
    assert result.success and result.evaluated >= 20
    assert Path(result.data_docs_uri).is_file()
    assert "lepton_snapshot" in Path(result.data_docs_uri).read_text()
    summary = json.loads(Path(result.summary_uri).read_text())
    assert summary["success"] and summary["failed"] == 0


def test_class_imbalance_names_the_class_and_its_count(tmp_path: Path, lepton_env: Path) -> None:
    images, labels = digits()
    keep = (labels != 3) | (np.arange(len(labels)) % 30 == 0)  # keep 1 in 30 threes
    run = snapshot_of(tmp_path, "skewed", images[keep], labels[keep])
    with pytest.raises(DataValidationError) as caught:
        validate_run(run, data_docs=False)
    failures = failed_checks(caught)
    (check,) = [name for name in failures if name.startswith("class '3'")]
    assert failures[check]["observed"] == str(int(keep[labels == 3].sum()))
    assert "class '3' share" in caught.value.message
    assert caught.value.exit_code == 5


def test_duplicates_fail_the_duplicate_rate(tmp_path: Path, lepton_env: Path) -> None:
    images, labels = digits()
    images = np.concatenate([images, images[:300]])
    labels = np.concatenate([labels, labels[:300]])
    run = snapshot_of(tmp_path, "dupes", images, labels)
    with pytest.raises(DataValidationError, match="duplicate rate") as caught:
        validate_run(run, data_docs=False)
    observed = float(failed_checks(caught)["duplicate rate (at most 5%)"]["observed"])
    assert observed == pytest.approx(1797 / 2097, abs=1e-3)


def test_too_few_examples_per_split(tmp_path: Path, lepton_env: Path) -> None:
    images, labels = digits()
    run = snapshot_of(tmp_path, "tiny", images[:60], labels[:60])
    with pytest.raises(DataValidationError, match="examples in split 'test'"):
        validate_run(run, data_docs=False)


def test_drift_against_a_reference_snapshot(tmp_path: Path, lepton_env: Path) -> None:
    images, labels = digits()
    reference = snapshot_of(tmp_path, "ref", images, labels)
    inverted = snapshot_of(tmp_path, "inverted", 255 - images, labels)
    ok = validate_run(reference, reference_uri=ingested_snapshot(reference), data_docs=False)
    assert ok.success and ok.reference_snapshot_id
    with pytest.raises(DataValidationError, match="pixel intensity drift") as caught:
        validate_run(inverted, reference_uri=ingested_snapshot(reference), data_docs=False)
    assert "label drift" not in " ".join(failed_checks(caught))


def test_failing_landing_batch_is_found_and_quarantined(tmp_path: Path, lepton_env: Path) -> None:
    images, labels = digits()
    landing = lepton_env / "landing"  # the configured landing zone
    write_npz(landing / "batch-001.npz", images[:1200], labels[:1200])
    ones = labels == 1
    write_npz(landing / "batch-002.npz", images[ones][:150], labels[ones][:150])  # only 1s
    run = tmp_path / "run"
    ingest(str(landing), str(run))
    with pytest.raises(DataValidationError, match="in batch batch-002") as caught:
        validate_run(str(run), data_docs=False)
    assert {f["batch"] for f in caught.value.failures} == {None, "batch-002"}
    assert "quarantined" in caught.value.message
    assert not (landing / "batch-002.npz").exists()
    assert (landing / "batch-001.npz").exists()
    (quarantined,) = (landing / "_quarantine").iterdir()
    assert json.loads((quarantined / "reason.json").read_text())["error"] == "DataValidationError"


def test_single_landing_batch_that_fails_is_moved_not_the_landing_zone(
    tmp_path: Path, lepton_env: Path
) -> None:
    images, labels = digits()
    landing = lepton_env / "landing"  # the configured landing zone
    blank = np.zeros_like(images[:400])
    write_npz(landing / "batch-001.npz", blank, labels[:400])
    run = tmp_path / "run"
    ingest(str(landing), str(run))
    with pytest.raises(DataValidationError, match="blank images"):
        validate_run(str(run), data_docs=False)
    assert not (landing / "batch-001.npz").exists()
    (quarantined,) = (landing / "_quarantine").iterdir()
    assert (quarantined / "batch-001.npz").is_file()
    assert not (lepton_env / "quarantine").exists()  # the landing zone was not copied whole


def test_two_batches_of_one_name_validate(tmp_path: Path, lepton_env: Path) -> None:
    """a.npz and a.parquet in one landing zone are both batch 'a'."""
    x, y = digits()
    landing = tmp_path / "landing"
    write_npz(landing / "a.npz", x[:900], y[:900])
    write_npz(landing / "b.npz", x[900:], y[900:])
    run = tmp_path / "run"
    snapshot = ingest(str(landing), str(run)).snapshot_uri
    manifest_path = Path(snapshot) / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    assert len(manifest["batches"]) == 2
    for batch in manifest["batches"]:
        batch["name"] = "a"
    manifest_path.write_text(json.dumps(manifest))
    assert validate(snapshot, str(run), data_docs=False).success


def test_shards_the_manifest_does_not_describe_are_refused(
    tmp_path: Path, lepton_env: Path
) -> None:
    from lepton_tasks.errors import InputDataError

    x, y = digits()
    run = tmp_path / "run"
    snapshot = ingest(str(write_npz(tmp_path / "d.npz", x, y)), str(run)).snapshot_uri
    manifest_path = Path(snapshot) / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    shard = Path(snapshot) / manifest["shards"]["train"][0]
    arrays = dict(np.load(shard))
    arrays["y"] = arrays["y"] + 40  # labels outside the class set
    np.savez(shard, **arrays)
    with pytest.raises(InputDataError, match="labels outside the class set"):
        validate(snapshot, str(run), data_docs=False)
    arrays["y"] = arrays["y"] - 40
    np.savez(shard, **arrays)
    manifest["split_counts"]["train"] += 5  # the manifest promises more than the shards hold
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(InputDataError, match="the shards hold"):
        validate(snapshot, str(run), data_docs=False)
