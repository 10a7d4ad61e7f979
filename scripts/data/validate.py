"""Data quality of one converted split: counts, ranges, consistency → results/qc/{split}.json.

Checks (each recorded; violations fail the step unless on_violation=warn):
  * rows and per-class counts against the configured expectations;
  * labels in 0..C-1; NaN / inf count (convert already refuses them; QC re-counts);
  * duplicate paths;
  * layout `imagenet`: the folder of each path maps to exactly one label and back, and a numeric
    folder (ImageNetV2: `imagenetv2-matched-frequency-format-val/<label>/…`) equals the label.
Features are streamed one row group at a time, so memory stays small for the 1.28M-row train split.
Each shard's CRC-32 is checked against the manifest first (training and evaluation depend on QC,
so a shard corrupted after conversion stops them with one line saying what to do).
"""
from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
from tqdm import tqdm

from scripts.lib.featio.arrow import features_to_numpy
from scripts.lib.featio.cli import run_cli
from scripts.lib.featio.errors import FeatgapError
from scripts.lib.featio.jsonio import parse_json_arg, read_json, write_json
from scripts.lib.featio.provenance import meta_block
from scripts.lib.featio.reader import iter_row_groups
from scripts.lib.featio.shards import verify_split


def label_path_table(manifest: Path) -> pl.DataFrame:
    tables = list(iter_row_groups(manifest, columns=("row", "path", "label")))
    return pl.from_arrow(pa.concat_tables(tables))


def feature_stats(manifest: Path, dim: int) -> dict[str, Any]:
    """Streamed per-feature mean/std/min/max and the count of non-finite values."""
    total = np.zeros(dim)
    total_sq = np.zeros(dim)
    low = np.full(dim, np.inf)
    high = np.full(dim, -np.inf)
    n, nonfinite = 0, 0
    for table in tqdm(iter_row_groups(manifest, columns=("features",)), desc="qc features", unit="group",
                      mininterval=2):
        block = features_to_numpy(table.column("features"), dim)
        finite = np.isfinite(block)
        nonfinite += int((~finite).sum())
        block = np.where(finite, block, 0.0).astype(np.float64)
        total += block.sum(axis=0)
        total_sq += (block * block).sum(axis=0)
        low = np.minimum(low, block.min(axis=0))
        high = np.maximum(high, block.max(axis=0))
        n += len(block)
    mean = total / max(n, 1)
    std = np.sqrt(np.maximum(total_sq / max(n, 1) - mean**2, 0.0))
    return {
        "nonfinite_values": nonfinite,
        "feature_mean_range": [float(mean.min()), float(mean.max())],
        "feature_std_range": [float(std.min()), float(std.max())],
        "value_min": float(low.min()),
        "value_max": float(high.max()),
        "constant_features": int((std == 0).sum()),
    }


def layout_checks(frame: pl.DataFrame) -> tuple[dict[str, Any], list[str]]:
    """ImageNet-style paths: `<split>/<folder>/<file>`; folder ↔ label must be one-to-one."""
    parts = frame.select(pl.col("label"), pl.col("path").str.split("/").list.get(-2, null_on_oob=True).alias("folder"))
    if parts["folder"].null_count() == frame.height:
        return {"layout": "no folders in paths"}, []
    problems = []
    pairs = parts.drop_nulls().unique()
    per_folder = pairs.group_by("folder").agg(pl.col("label").n_unique().alias("n")).filter(pl.col("n") > 1)
    per_label = pairs.group_by("label").agg(pl.col("folder").n_unique().alias("n")).filter(pl.col("n") > 1)
    if per_folder.height:
        problems.append(f"{per_folder.height} path folders hold more than one label (e.g. '{per_folder['folder'][0]}')")
    if per_label.height:
        problems.append(f"{per_label.height} labels are spread over more than one folder (e.g. label {per_label['label'][0]})")
    numeric = parts.filter(pl.col("folder").str.contains(r"^\d+$"))
    mismatched = numeric.filter(pl.col("folder").cast(pl.Int64) != pl.col("label").cast(pl.Int64))
    if mismatched.height:
        first = frame.filter(
            pl.col("path").str.split("/").list.get(-2, null_on_oob=True).str.contains(r"^\d+$")
            & (pl.col("path").str.split("/").list.get(-2, null_on_oob=True).cast(pl.Int64, strict=False)
               != pl.col("label").cast(pl.Int64))
        ).row(0, named=True)
        problems.append(
            f"{mismatched.height} rows whose numeric folder differs from the label "
            f"(first: row {first['row']}, path '{first['path']}', label {first['label']})"
        )
    checks = {
        "folders": int(pairs["folder"].n_unique()),
        "numeric_folder_rows": numeric.height,
        "numeric_folder_label_mismatches": mismatched.height,
        "folders_with_several_labels": per_folder.height,
        "labels_with_several_folders": per_label.height,
    }
    return checks, problems


def validate_split(manifest_path: str | Path, split: str, *, num_classes: int, expected: dict | None = None,
                   layout: str = "imagenet") -> tuple[dict[str, Any], list[str]]:
    """Compute the QC record of a split and the list of violated expectations."""
    started = time.perf_counter()
    manifest = read_json(manifest_path)
    verified_bytes = verify_split(manifest_path)  # whole-file checksums, once per conversion
    frame = label_path_table(manifest_path)
    counts = frame.group_by("label").len().sort("label")
    per_class = np.zeros(num_classes, dtype=np.int64)
    labels = counts["label"].to_numpy().astype(np.int64)
    in_range = (labels >= 0) & (labels < num_classes)
    per_class[labels[in_range]] = counts["len"].to_numpy()[in_range]
    duplicated = frame.filter(pl.col("path").is_duplicated() & (pl.col("path") != ""))
    qc: dict[str, Any] = {
        "split": split,
        "rows": frame.height,
        "dim": manifest["dim"],
        "classes_present": int((per_class > 0).sum()),
        "num_classes": num_classes,
        "per_class_min": int(per_class.min()),
        "per_class_max": int(per_class.max()),
        "label_min": int(labels.min()),
        "label_max": int(labels.max()),
        "labels_out_of_range": int(counts.filter(~pl.col("label").is_between(0, num_classes - 1))["len"].sum()),
        "duplicate_paths": duplicated["path"].n_unique(),
        "row_ids_unique": frame["row"].n_unique() == frame.height,
        "checksummed_bytes": verified_bytes,
        **feature_stats(manifest_path, manifest["dim"]),
    }
    problems: list[str] = []
    if layout == "imagenet":
        qc["layout_checks"], layout_problems = layout_checks(frame)
        problems += layout_problems
    expected = expected or {}
    if expected.get("rows") is not None and qc["rows"] != expected["rows"]:
        problems.append(f"{qc['rows']} rows, expected {expected['rows']}")
    if expected.get("per_class_min") is not None and qc["per_class_min"] < expected["per_class_min"]:
        worst = int(np.argmin(per_class))
        problems.append(f"class {worst} has {qc['per_class_min']} rows, expected at least {expected['per_class_min']}")
    if expected.get("per_class_max") is not None and qc["per_class_max"] > expected["per_class_max"]:
        worst = int(np.argmax(per_class))
        problems.append(f"class {worst} has {qc['per_class_max']} rows, expected at most {expected['per_class_max']}")
    if split == "train" and qc["classes_present"] < 2:
        problems.append(f"{qc['classes_present']} class with rows; training a classifier needs at least 2")
    if qc["labels_out_of_range"]:
        problems.append(f"{qc['labels_out_of_range']} labels outside 0..{num_classes - 1}")
    if qc["nonfinite_values"]:
        problems.append(f"{qc['nonfinite_values']} NaN/inf feature values")
    if qc["duplicate_paths"]:
        problems.append(f"{qc['duplicate_paths']} paths occur more than once (e.g. '{duplicated['path'][0]}')")
    qc["expected"] = expected
    qc["violations"] = problems
    qc["per_class_counts"] = per_class.tolist()
    qc["meta"] = meta_block(started=started, input_fingerprints=[manifest["source_fingerprint"]])
    return qc, problems


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--manifest", required=True)
    parser.add_argument("--split", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--expected", default="{}")
    parser.add_argument("--num-classes", type=int, required=True)
    parser.add_argument("--on-violation", choices=["fail", "warn"], default="fail")
    parser.add_argument("--layout", choices=["imagenet", "none"], default="imagenet")
    args = parser.parse_args(argv)
    qc, problems = validate_split(args.manifest, args.split, num_classes=args.num_classes,
                                  expected=parse_json_arg(args.expected, "expected"), layout=args.layout)
    print(f"{args.split}: {qc['rows']} rows, {qc['dim']} features, {qc['classes_present']}/{args.num_classes} classes, "
          f"{qc['per_class_min']}..{qc['per_class_max']} rows per class, {qc['duplicate_paths']} duplicate paths")
    source = read_json(args.manifest)["source"]
    for problem in problems:
        print(f"QC {args.on_violation}: {source}: {problem}", file=sys.stderr)
    if args.split == "train" and qc["classes_present"] < 2:  # no classifier can be trained: never waived
        raise FeatgapError(f"{source}: {qc['classes_present']} class with rows; training a classifier needs at "
                           "least 2 (validate.on_violation: warn does not waive this)")
    if problems and args.on_violation == "fail":
        raise FeatgapError(f"{source}: {len(problems)} QC violation(s): " + "; ".join(problems)
                           + " (set validate.on_violation: warn to continue anyway)")
    write_json(args.out, qc)


if __name__ == "__main__":
    run_cli(main)
