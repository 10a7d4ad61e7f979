"""Cross-split QC: do train and the two test sets fit together? → results/qc/cross.json.

Checks (violations fail the step unless validate.on_violation is warn; evaluation takes this file
as an input, so a violation stops it):
  * every class present in a test split has training rows (else no head can ever predict it);
  * no image path occurs both in train and in a test split (leakage), nor in both test splits;
  * all splits have the same feature dimension.
Reads labels and paths only, never features: seconds even for the 1.28M-row train split.
(Train's own checks, e.g. at least two classes, are in its per-split QC, which training needs.)
"""
from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from itertools import combinations
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa

from scripts.lib.featio.cli import run_cli
from scripts.lib.featio.errors import FeatgapError
from scripts.lib.featio.jsonio import read_json, write_json
from scripts.lib.featio.provenance import meta_block
from scripts.lib.featio.reader import iter_row_groups

SPLITS = ("train", "test1", "test2")
EXAMPLES = 5


def paths_and_labels(manifest: str | Path) -> pl.DataFrame:
    tables = list(iter_row_groups(manifest, columns=("path", "label")))
    return pl.from_arrow(pa.concat_tables(tables))


def cross_check(manifests: dict[str, str | Path]) -> tuple[dict[str, Any], list[str]]:
    """The cross-split QC record and the list of violations."""
    started = time.perf_counter()
    info = {split: read_json(path) for split, path in manifests.items()}
    frames = {split: paths_and_labels(path) for split, path in manifests.items()}
    problems: list[str] = []
    record: dict[str, Any] = {"splits": {}, "test_classes_without_train_rows": {}, "shared_paths": {}}
    train_classes = set(frames["train"]["label"].unique().to_list())
    for split, frame in frames.items():
        record["splits"][split] = {"rows": frame.height, "classes": frame["label"].n_unique(),
                                   "dim": info[split]["dim"]}
    dims = {split: info[split]["dim"] for split in frames}
    if len(set(dims.values())) > 1:
        problems.append(f"feature dimensions differ between splits: {dims}")
    for test in ("test1", "test2"):
        missing = sorted(set(frames[test]["label"].unique().to_list()) - train_classes)
        record["test_classes_without_train_rows"][test] = missing
        if missing:
            problems.append(f"{test}: {len(missing)} classes have no training rows (e.g. labels {missing[:EXAMPLES]}); "
                            "no head can predict them")
    for a, b in combinations(SPLITS, 2):
        left = frames[a].filter(pl.col("path") != "")["path"]
        shared = left.filter(left.is_in(frames[b]["path"].implode())).unique().sort()
        record["shared_paths"][f"{a}&{b}"] = {"count": shared.len(), "examples": shared.head(EXAMPLES).to_list()}
        if shared.len():
            kind = "leakage: test images in the training data" if a == "train" else "the same images in both test sets"
            problems.append(f"{shared.len()} paths occur in both {a} and {b} ({kind}; e.g. '{shared[0]}')")
    record["violations"] = problems
    record["meta"] = meta_block(started=started,
                                input_fingerprints=[info[s].get("source_fingerprint", {}) for s in SPLITS])
    return record, problems


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for split in SPLITS:
        parser.add_argument(f"--{split}", required=True, help=f"{split} manifest")
    parser.add_argument("--out", required=True)
    parser.add_argument("--on-violation", choices=["fail", "warn"], default="fail")
    args = parser.parse_args(argv)
    record, problems = cross_check({split: getattr(args, split) for split in SPLITS})
    for problem in problems:
        print(f"QC {args.on_violation}: {problem}", file=sys.stderr)
    if problems and args.on_violation == "fail":
        raise FeatgapError(f"{len(problems)} cross-split QC violation(s): " + "; ".join(problems)
                           + " (set validate.on_violation: warn to continue anyway)")
    write_json(args.out, record)
    print(f"{args.out}: splits fit together" if not problems else f"{args.out}: {len(problems)} warnings")


if __name__ == "__main__":
    run_cli(main)
