"""Batch scoring with the registered champion: every format, labels optional, bad batches set
aside, the champion pinned by version."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from mlflow import MlflowClient

from lepton_tasks.steps.score import score
from tests.conftest import run_cli, write_npz
from tests.production.conftest import MODEL, Registry, champion_predictions


def inbox(home: Path) -> Path:
    folder = home / "inbox"
    folder.mkdir(exist_ok=True)
    return folder


def test_an_inbox_of_unlabelled_and_labelled_batches_is_scored_and_moved_out(
    production_home: Registry, tmp_path: Path
) -> None:
    from PIL import Image

    images, labels = production_home.images, production_home.labels
    box = inbox(production_home.home)
    np.savez(box / "a-unlabelled.npz", x=images[:200])  # no 'y': nothing to compare with
    write_npz(box / "b-feedback.npz", images[200:500], labels[200:500])
    pictures = box / "c-pictures"
    pictures.mkdir()
    for i in range(5):
        Image.fromarray(images[500 + i]).save(pictures / f"img-{i}.png")
    (box / ".d-still-copying.npz").write_bytes(b"partial")  # the landing protocol: not yet

    result = score(MODEL, str(box), str(tmp_path / "predictions"))

    assert result.model_version == "1" and result.count == 505
    assert [b.name for b in result.batches] == ["a-unlabelled", "b-feedback", "c-pictures"]
    first = pq.read_table(result.batches[0].output_uri).to_pandas()
    assert list(first.columns) == [
        "key",
        "predicted_class",
        "confidence",
        "probabilities",
        "label",
        "model_name",
        "model_version",
        "scored_at",
    ]
    expected = champion_predictions("1", images[:200])
    assert first["predicted_class"].tolist() == [str(c) for c in expected]
    assert first["key"].iloc[3] == "a-unlabelled:3" and first["label"].isna().all()
    assert set(first["model_version"]) == {"1"} and len(first["probabilities"].iloc[0]) == 10
    # the labelled batch reports the champion's accuracy on it, computed from its own rows
    feedback = pq.read_table(result.batches[1].output_uri).to_pandas()
    hits = (feedback["predicted_class"] == feedback["label"]).mean()
    assert result.batches[1].accuracy == pytest.approx(hits) and result.accuracy == pytest.approx(
        hits
    )
    pictures_out = pq.read_table(result.batches[2].output_uri).to_pandas()
    assert pictures_out["key"].tolist() == [f"img-{i}.png" for i in range(5)]
    # each scored batch left the inbox for _scored/, the in-progress file stayed
    assert sorted(p.name for p in box.iterdir()) == [".d-still-copying.npz", "_scored"]
    assert all(b.moved_to and Path(b.moved_to).exists() for b in result.batches)
    # the MLflow run names the version it scored with, and sums what it saw
    run = MlflowClient().get_run(result.mlflow_run_id)
    assert run.data.tags["lepton.model_version"] == "1" and run.data.tags["lepton.step"] == "score"
    assert run.data.metrics["examples"] == 505 and sum(result.predicted_counts.values()) == 505


def test_one_parquet_file_for_a_dataset_given_directly(
    production_home: Registry, tmp_path: Path
) -> None:
    source = write_npz(
        tmp_path / "day.npz", production_home.images[:64], production_home.labels[:64]
    )
    result = score(MODEL, str(source), str(tmp_path / "out" / "day.parquet"))
    table = pq.read_table(tmp_path / "out" / "day.parquet")
    assert table.num_rows == 64 and result.output.endswith("day.parquet")
    assert json.loads(table.schema.metadata[b"lepton.class_names"]) == [str(d) for d in range(10)]
    assert source.exists()  # the user's own file is read, never moved
    assert (tmp_path / "out" / "_lepton" / "score" / "result.json").exists()


def test_the_champion_is_the_one_pinned_by_version(
    production_home: Registry, tmp_path: Path
) -> None:
    client = MlflowClient()
    client.set_registered_model_alias(MODEL, "champion", "2")
    source = write_npz(tmp_path / "x.npz", production_home.images[:50], production_home.labels[:50])
    result = score(MODEL, str(source), str(tmp_path / "out.parquet"))
    assert result.model_version == "2"
    frame = pq.read_table(tmp_path / "out.parquet").to_pandas()
    assert frame["predicted_class"].tolist() == [
        str(c) for c in champion_predictions("2", production_home.images[:50])
    ]


def test_a_bad_batch_is_quarantined_with_a_named_error_and_the_others_are_kept(
    production_home: Registry, tmp_path: Path
) -> None:
    box = inbox(production_home.home)
    write_npz(box / "a-good.npz", production_home.images[:30], production_home.labels[:30])
    (box / "b-corrupt.npz").write_bytes(b"PK\x03\x04 not really a zip")
    write_npz(box / "c-later.npz", production_home.images[:30], production_home.labels[:30])
    env = {
        "LEPTON_HOME": str(production_home.home),
        "MLFLOW_TRACKING_URI": production_home.tracking_uri,
    }

    done = run_cli("score", f"--input={box}", f"--output={tmp_path / 'out'}", env=env)

    assert done.code == 3, done.stderr[-2000:]
    assert done.error_line.startswith("lepton-tasks score: InputDataError: not a readable .npz")
    assert "b-corrupt.npz" in done.error_line and "quarantined to" in done.error_line
    (reason,) = (box / "_quarantine").glob("*/reason.json")
    assert json.loads(reason.read_text())["error"] == "InputDataError"
    # the good batches around it were scored and moved out: one bad batch holds up no other
    assert sorted(p.name for p in box.iterdir()) == ["_quarantine", "_scored"]
    assert sorted(p.name for p in (tmp_path / "out").glob("*.parquet")) == [
        "a-good.parquet",
        "c-later.parquet",
    ]


def test_a_batch_folder_of_several_files_is_scored_whole_then_moved(
    production_home: Registry, tmp_path: Path
) -> None:
    """Before the review: the folder moved out after its first file, the second never scored."""
    day = inbox(production_home.home) / "2026-11-27"
    day.mkdir()
    write_npz(day / "morning.npz", production_home.images[:20], production_home.labels[:20])
    np.savez(day / "evening.npz", x=production_home.images[20:50])
    result = score(MODEL, str(day.parent), str(tmp_path / "out"))
    assert [b.name for b in result.batches] == ["2026-11-27/evening", "2026-11-27/morning"]
    assert result.count == 50 and not day.exists()
    (moved,) = {b.moved_to for b in result.batches}
    assert sorted(p.name for p in Path(moved).iterdir()) == ["evening.npz", "morning.npz"]
    assert sorted(p.name for p in (tmp_path / "out").glob("*.parquet")) == [
        "2026-11-27__evening.parquet",
        "2026-11-27__morning.parquet",
    ]


def test_a_planted_scored_link_is_refused_and_nothing_moves_through_it(
    production_home: Registry, tmp_path: Path
) -> None:
    box = inbox(production_home.home)
    elsewhere = tmp_path / "training-landing"
    elsewhere.mkdir()
    (box / "_scored").symlink_to(elsewhere)
    np.savez(box / "batch.npz", x=production_home.images[:10])
    with pytest.raises(OSError, match="symbolic link"):
        score(MODEL, str(box), str(tmp_path / "out"))
    assert (box / "batch.npz").exists() and list(elsewhere.iterdir()) == []


def test_a_folder_of_images_given_directly_is_scored(
    production_home: Registry, tmp_path: Path
) -> None:
    from PIL import Image

    pictures = tmp_path / "pictures"
    (pictures / "cats").mkdir(parents=True)
    (pictures / "dogs").mkdir()
    Image.fromarray(production_home.images[0]).save(pictures / "cats" / "1.png")
    Image.fromarray(production_home.images[1]).save(pictures / "dogs" / "1.png")
    flat = tmp_path / "flat"
    flat.mkdir()
    Image.fromarray(production_home.images[2]).save(flat / "x.png")
    result = score(MODEL, str(flat), str(tmp_path / "flat.parquet"))
    assert result.count == 1 and flat.exists()
    # class folders: keys keep the folder, so same-named files stay apart (and the labels are
    # the folder names, which are not the champion's classes: they count as wrong, not as bad)
    named = score(MODEL, str(pictures), str(tmp_path / "named.parquet"))
    keys = pq.read_table(tmp_path / "named.parquet").column("key").to_pylist()
    assert keys == ["cats/1.png", "dogs/1.png"] and named.accuracy == 0.0


def test_images_of_another_size_are_refused_and_quarantined(
    production_home: Registry, tmp_path: Path
) -> None:
    box = inbox(production_home.home)
    np.savez(box / "mnist-sized.npz", x=np.zeros((4, 28, 28), np.uint8))
    env = {
        "LEPTON_HOME": str(production_home.home),
        "MLFLOW_TRACKING_URI": production_home.tracking_uri,
    }
    done = run_cli("score", f"--input={box}", f"--output={tmp_path / 'out'}", env=env)
    assert done.code == 3
    assert "InputDataError: images are 28x28, but lepton-digits v1 takes 8x8x1" in done.error_line
    assert list((box / "_quarantine").glob("*/mnist-sized.npz"))


def test_an_empty_inbox_is_a_skip_and_no_champion_is_a_registry_error(
    production_home: Registry, tmp_path: Path
) -> None:
    env = {
        "LEPTON_HOME": str(production_home.home),
        "MLFLOW_TRACKING_URI": production_home.tracking_uri,
    }
    empty = run_cli("score", f"--output={tmp_path / 'out'}", env=env)
    assert empty.code == 10 and "nothing to score" in empty.error_line
    source = write_npz(tmp_path / "x.npz", production_home.images[:5], production_home.labels[:5])
    unknown = run_cli(
        "score", "--model-name=nobody", f"--input={source}", f"--output={tmp_path / 'o'}", env=env
    )
    assert unknown.code == 9 and "'nobody' has no champion" in unknown.error_line


def test_file_names_that_are_not_utf8_are_scored_keyed_and_moved_like_any_other(
    production_home: Registry, tmp_path: Path
) -> None:
    """Names are bytes on disk. Before: an inbox with `a.npz`, `b-imgs/caf\\xe9.png` and `c.npz`
    failed on the Parquet `key` column (UnicodeEncodeError, exit 1): `b` was neither scored nor
    quarantined and `c` never scored, on every run."""
    import os

    from PIL import Image

    box = inbox(production_home.home)
    write_npz(box / "a.npz", production_home.images[:10], production_home.labels[:10])
    pictures = os.path.join(os.fsencode(box), b"b-imgs")
    os.mkdir(pictures)
    for i in range(3):
        Image.fromarray(production_home.images[i]).save(
            os.fsdecode(os.path.join(pictures, b"caf\xe9-%d.png" % i)), format="PNG"
        )
    write_npz(box / "c.npz", production_home.images[10:20], production_home.labels[10:20])
    env = {
        "LEPTON_HOME": str(production_home.home),
        "MLFLOW_TRACKING_URI": production_home.tracking_uri,
    }

    done = run_cli("score", f"--input={box}", f"--output={tmp_path / 'out'}", env=env)

    assert done.code == 0, done.stderr[-2000:]
    keys = pq.read_table(tmp_path / "out" / "b-imgs.parquet").column("key").to_pylist()
    assert keys == [f"caf\\xe9-{i}.png" for i in range(3)]  # escaped where text is needed
    assert sorted(p.name for p in (tmp_path / "out").glob("*.parquet")) == [
        "a.parquet",
        "b-imgs.parquet",
        "c.parquet",
    ]
    assert sorted(p.name for p in box.iterdir()) == ["_scored"]  # every entry moved out whole
    (moved,) = (box / "_scored").glob("*/b-imgs")
    assert sorted(os.listdir(os.fsencode(moved))) == [b"caf\xe9-%d.png" % i for i in range(3)]
