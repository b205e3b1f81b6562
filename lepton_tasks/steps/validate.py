"""Validate: a Great Expectations suite over a per-example table of the snapshot.

One row per example (split, label, shape, pixel statistics, content hash, source batch). The
suite checks the class set, image shape, pixel range, blank images, missing values, duplicates,
examples per split and class balance; with a reference snapshot it also checks drift of the
label distribution and of the pixel intensity. A failure names each failed expectation with its
observed value, and the batches that fail on their own are quarantined.
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

from lepton_tasks import storage
from lepton_tasks.data.snapshot import SPLITS, iter_shards, read_manifest
from lepton_tasks.errors import ClassSetError, DataValidationError, InputDataError
from lepton_tasks.quarantine import quarantine_bad_data
from lepton_tasks.results import ValidateResult, records_result
from lepton_tasks.run_folder import RunFolder
from lepton_tasks.settings import Settings, get_settings

log = logging.getLogger(__name__)

SUITE_NAME = "lepton_snapshot"


def example_table(snapshot_uri: str) -> pd.DataFrame:
    """One row per example: split, label, shape, pixel statistics, content hash, batch.

    Built shard by shard into preallocated compact columns (categories for the names, the
    first 8 bytes of the content hash as an integer), about 23 bytes per example, so the
    images are never all in memory and a million examples fit in ~22 MB.
    """
    manifest = read_manifest(snapshot_uri)
    total = sum(int(manifest["split_counts"][split]) for split in SPLITS)
    columns = {
        "split": np.empty(total, np.int8),
        "label": np.empty(total, np.int16),
        "height": np.empty(total, np.uint16),
        "width": np.empty(total, np.uint16),
        "channels": np.empty(total, np.uint16),
        "pixel_min": np.empty(total, np.uint8),
        "pixel_max": np.empty(total, np.uint8),
        "pixel_mean": np.empty(total, np.float32),  # an image's mean: float32 is exact enough
        # 64 bits of the sha256: a chance collision among 10^6 examples is ~3e-8
        "content_hash": np.empty(total, np.uint64),
        "batch": np.empty(total, np.int16),
    }
    filled = 0
    for split_index, split in enumerate(SPLITS):
        for shard in iter_shards(snapshot_uri, split):
            _check_shard(shard, filled, total, manifest, snapshot_uri)
            filled = _fill_rows(columns, filled, split_index, shard)
    if filled != total:
        raise InputDataError(
            f"the shards hold {filled} examples, the manifest says {total}: the snapshot is "
            "incomplete or was changed",
            where=snapshot_uri,
        )
    table: dict[str, Any] = dict(columns)
    table["split"] = _names(table["split"], list(SPLITS))
    table["label"] = _names(table["label"], manifest["class_names"])
    table["batch"] = _names(table["batch"], [b["name"] for b in manifest["batches"]] or ["source"])
    return pd.DataFrame(table, copy=False)  # the columns as built: no second copy


def _names(codes: np.ndarray, names: list[str]) -> pd.Categorical:
    """Codes as a categorical of their names: a byte or two a row.

    Two batches may share a name (a.npz and a.parquet): the categories are the distinct names.
    """
    distinct = sorted(set(names))
    remap = np.asarray([distinct.index(name) for name in names], dtype=np.int32)
    return pd.Categorical.from_codes(remap[codes], categories=distinct)


def _check_shard(
    shard: dict[str, np.ndarray], filled: int, total: int, manifest: dict[str, Any], where: str
) -> None:
    """A shard as ingest writes it: uint8 images, labels and batches in range, room left."""
    images, labels, batches = shard["x"], shard["y"], shard["b"]
    problem = None
    if filled + len(images) > total:
        problem = f"the shards hold more examples than the manifest's {total}"
    elif images.dtype != np.uint8:
        problem = f"images of type {images.dtype}, not uint8"
    elif len(labels) and not 0 <= labels.min() <= labels.max() < len(manifest["class_names"]):
        problem = "labels outside the class set"
    elif len(batches) and not 0 <= batches.min() <= batches.max() < max(
        1, len(manifest["batches"])
    ):
        problem = "batch numbers outside the manifest's batches"
    if problem:
        raise InputDataError(f"{problem}: the snapshot was not written by ingest", where=where)


def _fill_rows(
    columns: dict[str, np.ndarray], start: int, split_index: int, shard: dict[str, np.ndarray]
) -> int:
    """Write one shard's per-example statistics into `columns` from row `start`; the next row."""
    images = shard["x"]
    rows = slice(start, start + len(images))
    flat = images.reshape(len(images), -1)
    columns["split"][rows] = split_index
    columns["label"][rows] = shard["y"]
    columns["height"][rows] = images.shape[1]
    columns["width"][rows] = images.shape[2]
    columns["channels"][rows] = images.shape[3] if images.ndim == 4 else 1
    columns["pixel_min"][rows] = flat.min(axis=1)
    columns["pixel_max"][rows] = flat.max(axis=1)
    columns["pixel_mean"][rows] = flat.mean(axis=1, dtype=np.float64)
    columns["content_hash"][rows] = np.frombuffer(shard["h"].tobytes(), ">u8")[::2]
    columns["batch"][rows] = shard["b"]
    return rows.stop


def build_suite(
    n_rows: int,
    manifest: dict[str, Any],
    settings: Settings,
    reference: dict[str, Any] | None,
    *,
    whole_snapshot: bool = True,
) -> Any:
    """The expectation suite for a table of `n_rows` examples of the snapshot in `manifest`.

    With `whole_snapshot=False` (one batch of several) the per-split counts are left out; with
    a `reference` manifest the drift checks are added. Call it inside `run_suite`: GE 1.x builds
    expectations against an active context.
    """
    import great_expectations as gx

    classes = list(manifest["class_names"])
    expectations = _example_expectations(manifest, settings)
    if whole_snapshot:
        expectations += _split_expectations(settings)
    expectations += _class_share_expectations(classes, n_rows, settings)
    if reference is not None:
        expectations += _drift_expectations(classes, reference, settings)
    suite = gx.ExpectationSuite(name=SUITE_NAME)
    for expectation in expectations:
        suite.add_expectation(expectation)
    return suite


def _example_expectations(manifest: dict[str, Any], settings: Settings) -> list[Any]:
    """Per-example checks: labels, shape, pixel range, blanks, missing values, duplicates."""
    import great_expectations as gx

    E = gx.expectations
    height, width = manifest["image_shape"][:2]
    return [
        E.ExpectTableRowCountToBeBetween(min_value=1, meta={"check": "examples in total"}),
        E.ExpectColumnValuesToBeInSet(
            column="label",
            value_set=list(manifest["class_names"]),
            meta={"check": "labels in the class set"},
        ),
        E.ExpectColumnValuesToBeInSet(
            column="height", value_set=[height], meta={"check": "image height"}
        ),
        E.ExpectColumnValuesToBeInSet(
            column="width", value_set=[width], meta={"check": "image width"}
        ),
        E.ExpectColumnMinToBeBetween(
            column="pixel_min", min_value=0, meta={"check": "lowest pixel"}
        ),
        E.ExpectColumnMaxToBeBetween(
            column="pixel_max", max_value=255, meta={"check": "highest pixel"}
        ),
        E.ExpectColumnValuesToNotBeNull(column="pixel_mean", meta={"check": "no missing pixels"}),
        E.ExpectColumnValuesToBeBetween(
            column="pixel_max",
            min_value=1,
            mostly=0.99,
            meta={"check": "blank images (at most 1 %)"},
        ),
        E.ExpectColumnProportionOfUniqueValuesToBeBetween(
            column="content_hash",
            min_value=1.0 - settings.max_duplicate_rate,
            meta={"check": f"duplicate rate (at most {settings.max_duplicate_rate:.0%})"},
        ),
    ]


def _split_expectations(settings: Settings) -> list[Any]:
    """Enough examples in each split (val only when one is configured)."""
    import great_expectations as gx

    return [
        gx.expectations.ExpectTableRowCountToBeBetween(
            min_value=settings.min_examples_per_split,
            row_condition=f'split=="{split}"',
            condition_parser="pandas",
            meta={"check": f"examples in split '{split}'"},
        )
        for split in SPLITS
        if not (split == "val" and settings.val_fraction == 0)
    ]


def _class_share_expectations(classes: list[str], n_rows: int, settings: Settings) -> list[Any]:
    """Class balance: each class's share of the rows within the configured bounds."""
    import great_expectations as gx

    low = math.floor(settings.min_class_share * n_rows)
    high = math.ceil(settings.max_class_share * n_rows)
    return [
        gx.expectations.ExpectTableRowCountToBeBetween(
            min_value=low,
            max_value=high,
            row_condition=f'label=="{name}"',
            condition_parser="pandas",
            meta={
                "check": f"class '{name}' share between {settings.min_class_share:.0%} and "
                f"{settings.max_class_share:.0%} of {n_rows}"
            },
        )
        for name in classes
    ]


def _drift_expectations(
    classes: list[str], reference: dict[str, Any], settings: Settings
) -> list[Any]:
    """Label distribution (KL divergence) and pixel intensity against the reference snapshot."""
    import great_expectations as gx

    E = gx.expectations
    counts = np.asarray([reference["label_counts"].get(c, 0) for c in classes], dtype=float)
    weights = (counts + 1.0) / (counts + 1.0).sum()  # smoothed: no infinite divergence
    mean = reference["pixel_mean"]
    return [
        E.ExpectColumnKLDivergenceToBeLessThan(
            column="label",
            partition_object={"values": classes, "weights": weights.tolist()},
            threshold=settings.max_label_kl_divergence,
            meta={"check": f"label drift vs snapshot {reference['snapshot_id']} (KL)"},
        ),
        E.ExpectColumnMeanToBeBetween(
            column="pixel_mean",
            min_value=mean - settings.max_pixel_mean_shift,
            max_value=mean + settings.max_pixel_mean_shift,
            meta={"check": f"pixel intensity drift vs snapshot {reference['snapshot_id']}"},
        ),
    ]


def _context(docs_dir: str | None) -> Any:
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    if docs_dir is not None:
        context.add_data_docs_site(
            site_name="lepton",
            site_config={
                "class_name": "SiteBuilder",
                "store_backend": {
                    "class_name": "TupleFilesystemStoreBackend",
                    "base_directory": docs_dir,
                },
                "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
            },
        )
    return context


def run_suite(
    table: pd.DataFrame, make_suite: Callable[[], Any], docs_dir: str | None = None
) -> Any:
    """Validate `table`; the suite is built inside the context, as GE 1.x requires."""
    import great_expectations as gx
    from great_expectations.checkpoint import UpdateDataDocsAction

    context = _context(docs_dir)
    suite = make_suite()
    batch = (
        context.data_sources.add_pandas("snapshot")
        .add_dataframe_asset("examples")
        .add_batch_definition_whole_dataframe("all")
    )
    suite = context.suites.add(suite)
    definition = context.validation_definitions.add(
        gx.ValidationDefinition(name="snapshot_examples", data=batch, suite=suite)
    )
    actions = [UpdateDataDocsAction(name="data_docs", site_names=["lepton"])] if docs_dir else []
    checkpoint = context.checkpoints.add(
        gx.Checkpoint(name="lepton", validation_definitions=[definition], actions=actions)
    )
    result = checkpoint.run(batch_parameters={"dataframe": table})
    return next(iter(result.run_results.values()))


def describe(result: Any, batch: str | None = None) -> list[dict[str, Any]]:
    """Each expectation of a GE validation result as a row: check, success, observed, expected."""
    rows = []
    for item in result.results:
        config = item.expectation_config
        kwargs = config.kwargs
        observed = item.result.get("observed_value")
        if observed is None and "unexpected_percent" in item.result:
            observed = f"{item.result['unexpected_percent']:.2f}% unexpected"
            if item.result.get("partial_unexpected_list"):
                observed += f", e.g. {item.result['partial_unexpected_list'][:3]}"
        if item.exception_info and item.exception_info.get("raised_exception"):
            observed = f"error: {item.exception_info.get('exception_message')}"
        expected = {
            k: kwargs[k]
            for k in ("min_value", "max_value", "value_set", "threshold", "mostly")
            if kwargs.get(k) is not None
        }
        rows.append(
            {
                "check": (config.meta or {}).get("check", config.type),
                "expectation": config.type,
                "column": kwargs.get("column"),
                "condition": kwargs.get("row_condition"),
                "success": bool(item.success),
                "observed": _short(observed),
                "expected": _short(expected),
                "batch": batch,
            }
        )
    return rows


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    text = str(value)
    return text if len(text) <= 200 else text[:197] + "..."


@records_result
def validate(
    snapshot_uri: str,
    run_dir: str,
    reference_uri: str | None = None,
    data_docs: bool = True,
    model_name: str | None = None,
) -> ValidateResult:
    """Check a snapshot with the expectation suite, and for drift against a reference.

    Args:
        snapshot_uri: the snapshot to check (ingest's `snapshot_uri`).
        run_dir: the run folder; the summary and Data Docs go to its `validate/`.
        reference_uri: a snapshot to check drift against; "champion" for the one the current
            champion of `model_name` was trained on (no drift checks when there is none).
        data_docs: build the HTML Data Docs.
        model_name: whose champion is the reference [default: LEPTON_MODEL_NAME].

    Returns:
        The snapshot checked, how many expectations passed, and the summary's URI.

    Raises:
        DataValidationError: names each failed expectation with its observed value; the
            batches that fail on their own are quarantined.
    """
    settings = get_settings()
    manifest = read_manifest(snapshot_uri)
    if reference_uri == "champion":
        reference_uri = champion_snapshot(model_name or settings.model_name)
    folder = RunFolder(run_dir)
    table = example_table(snapshot_uri)
    reference = _comparable_reference(reference_uri, manifest, table)
    checks, docs_uri = _check(table, manifest, settings, reference, folder if data_docs else None)
    failed = [c for c in checks if not c["success"]]
    quarantined: list[str] = []
    if failed:
        failed += _failing_batches(table, manifest, settings, reference)
        quarantined = _quarantine_failing(manifest, failed)
    summary = {
        "snapshot_id": manifest["snapshot_id"],
        "success": not failed,
        "evaluated": len(checks),
        "failed": len([c for c in checks if not c["success"]]),
        "checks": checks + [c for c in failed if c["batch"]],
        "reference_snapshot_id": reference["snapshot_id"] if reference else None,
        "data_docs": docs_uri,
        "quarantined": quarantined,
    }
    storage.write_json(folder.validation_summary_uri, summary)
    if failed:
        raise _validation_error(manifest, checks, failed, quarantined, folder)
    return ValidateResult(
        run_dir=run_dir,
        snapshot_uri=snapshot_uri,
        snapshot_id=manifest["snapshot_id"],
        success=True,
        evaluated=len(checks),
        summary_uri=folder.validation_summary_uri,
        data_docs_uri=docs_uri,
        reference_snapshot_id=reference["snapshot_id"] if reference else None,
    )


def _check(
    table: pd.DataFrame,
    manifest: dict[str, Any],
    settings: Settings,
    reference: dict[str, Any] | None,
    docs_folder: RunFolder | None,
) -> tuple[list[dict[str, Any]], str | None]:
    """Run the whole-snapshot suite; with a folder, also build its Data Docs there."""
    with tempfile.TemporaryDirectory() as scratch:
        docs_dir = os.path.join(scratch, "data_docs") if docs_folder else None
        result = run_suite(
            table, lambda: build_suite(len(table), manifest, settings, reference), docs_dir
        )
        docs_uri = None
        if docs_folder and docs_dir and os.path.isdir(docs_dir):
            storage.copy_tree(docs_dir, docs_folder.data_docs_uri)
            docs_uri = storage.join(docs_folder.data_docs_uri, "index.html")
    return describe(result), docs_uri


def _validation_error(
    manifest: dict[str, Any],
    checks: list[dict[str, Any]],
    failed: list[dict[str, Any]],
    quarantined: list[str],
    folder: RunFolder,
) -> DataValidationError:
    lines = "; ".join(
        f"{c['check']}{' in batch ' + c['batch'] if c['batch'] else ''}: observed "
        f"{c['observed']}, expected {c['expected']}"
        for c in failed
    )
    note = f"; quarantined {', '.join(quarantined)}" if quarantined else ""
    return DataValidationError(
        f"{len([c for c in failed if not c['batch']])} of {len(checks)} expectations failed "
        f"on snapshot {manifest['snapshot_id']}: {lines}{note}",
        failures=failed,
        where=folder.validation_summary_uri,
    )


def _comparable_reference(
    reference_uri: str | None, manifest: dict[str, Any], table: pd.DataFrame
) -> dict[str, Any] | None:
    """The reference manifest, if its class set is the snapshot's.

    A class set read from the data must be the champion's: the model's outputs are its
    classes, in order. A new class fails the run (its batches are quarantined), as does a
    missing one; a class set given on purpose (--classes, LEPTON_CLASSES) is a new start, with
    no drift checks against a champion of other classes.
    """
    reference = read_manifest(reference_uri) if reference_uri else None
    if reference is None or reference["class_names"] == manifest["class_names"]:
        return reference
    ours, theirs = manifest["class_names"], reference["class_names"]
    if manifest.get("class_source") == "explicit":
        log.warning("class set %s given on purpose (champion's: %s): no drift checks", ours, theirs)
        return None
    new = [c for c in ours if c not in theirs]
    missing = [c for c in theirs if c not in ours]
    if not new and not missing:
        raise ClassSetError(
            f"the champion's classes are {theirs}, in this order; the data's, read from its "
            f"labels, are {ours}: set LEPTON_CLASSES to the champion's order",
            where=manifest["source"],
        )
    failed = [
        {"check": "labels within the champion's classes", "batch": str(name), "success": False,
         "observed": sorted(set(rows["label"]) & set(new)), "expected": theirs}
        for name, rows in table.groupby("batch", sort=False)
        if set(rows["label"]) & set(new)
    ]  # fmt: skip
    quarantined = _quarantine_failing(manifest, failed) if failed else []
    what = f"new class(es) {new}" if new else f"the champion's class(es) {missing} are missing"
    raise ClassSetError(
        f"{what}: the champion of this model knows {theirs}, the data holds {ours}. A new class "
        "needs a new model (another model_name) or the new class set given on purpose "
        "(LEPTON_CLASSES for the workers, --classes by hand)"
        + (
            f"; quarantined {', '.join(quarantined)} (move it back into the zone to train on it)"
            if quarantined
            else ""
        ),
        failures=failed,
        where=manifest["source"],
    )


def champion_snapshot(model_name: str) -> str | None:
    """The snapshot the current champion was trained on, if it is still readable."""
    from lepton_tasks import tracking
    from lepton_tasks.registry import champion_version

    tracking.setup()
    version = champion_version(model_name)
    uri = version.tags.get("lepton.snapshot_uri") if version else None
    if uri and storage.exists(storage.join(uri, "manifest.json")):
        log.info("drift reference: champion v%s's snapshot %s", version.version, uri)
        return uri
    log.info("no champion snapshot to compare with; drift checks skipped")
    return None


def _failing_batches(
    table: pd.DataFrame,
    manifest: dict[str, Any],
    settings: Settings,
    reference: dict[str, Any] | None,
) -> list[dict[str, Any]]:
    """With several batches, run the per-batch part of the suite on each to find the culprits."""
    if len(manifest["batches"]) < 2:
        return []
    failures = []
    for name, rows in table.groupby("batch", sort=False):
        result = run_suite(
            rows,
            lambda n=len(rows): build_suite(n, manifest, settings, reference, whole_snapshot=False),
        )
        failures += [c for c in describe(result, batch=str(name)) if not c["success"]]
    return failures


def _quarantine_failing(manifest: dict[str, Any], failed: list[dict[str, Any]]) -> list[str]:
    """Quarantine the batches that fail on their own, or the whole source if it is one batch."""
    bad = {c["batch"] for c in failed if c["batch"]}
    batches = manifest["batches"]
    if len(batches) == 1:  # one batch: it is the culprit, whether or not it was singled out
        bad = {batches[0]["name"]}
    origins = [b["origin"] for b in batches if b["name"] in bad and b.get("origin")]
    if not origins and len(batches) > 1:
        return []  # only the combination fails: nothing to single out, the run still stops
    error = DataValidationError(
        "failed data validation: "
        + "; ".join(f"{c['check']}: observed {c['observed']}" for c in failed)
    )
    try:
        return quarantine_bad_data(manifest["source"], origins, error)
    except Exception as failure:  # the failed expectations, not the quarantine, are the news
        log.warning("could not quarantine %s: %s", origins, failure)
        return []
