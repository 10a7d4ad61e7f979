"""class_counts step: rows per class in train / test1 / test2 → results/analysis/class_counts.csv.

Reads the label column only (the 1.28M-row train split costs a few MB), so the gap and imbalance
analyses never touch the training features. The table is built by
scripts.lib.analysis.common.class_counts (columns: class, name, train_rows, test1_rows, test2_rows).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from scripts.lib.analysis.common import class_counts
from scripts.lib.featio.cli import run_cli


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Rows per class in each split (labels only).")
    parser.add_argument("--train", required=True, help="train manifest")
    parser.add_argument("--test1", required=True, help="test1 manifest")
    parser.add_argument("--test2", required=True, help="test2 manifest")
    parser.add_argument("--num-classes", type=int, required=True)
    parser.add_argument("--class-names", default="")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    frame = class_counts(
        {"train": args.train, "test1": args.test1, "test2": args.test2},
        args.num_classes,
        args.class_names or None,
        args.out,
    )
    print(f"wrote {args.out}: {len(frame)} classes, {int(frame['train_rows'].sum())} train rows")


if __name__ == "__main__":
    run_cli(main)
