"""train_reference: the train split's per-class feature means and its global mean/std, for the
difficulty analysis. Streams the train split once, row group by row group, and writes
train_reference.npz (C × D floats, a few MB; the train matrix is never held in memory).
"""
from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from scripts.lib.featio.atomic import atomic_path
from scripts.lib.featio.cli import run_cli
from scripts.lib.featio.errors import FeatgapError
from scripts.lib.featio.reader import iter_row_groups


# ---------------------------------------------------------------- train reference
def train_reference(manifest: str | Path, num_classes: int, out: str | Path) -> dict[str, Any]:
    """Per-class means and global mean/std of the train features, in one streaming pass."""
    sums, counts, total, total_sq = None, np.zeros(num_classes), None, None
    for group in iter_row_groups(manifest, columns=("label", "features")):
        labels = group.column("label").to_numpy().astype(np.int64)
        flat = group.column("features").combine_chunks().values.to_numpy(zero_copy_only=False)
        x = flat.reshape(len(labels), -1).astype(np.float64)
        if sums is None:
            sums, total, total_sq = np.zeros((num_classes, x.shape[1])), np.zeros(x.shape[1]), np.zeros(x.shape[1])
        np.add.at(sums, labels, x)
        counts += np.bincount(labels, minlength=num_classes)
        total += x.sum(axis=0)
        total_sq += (x * x).sum(axis=0)
    if sums is None:
        raise FeatgapError(f"{manifest}: no train rows")
    n = counts.sum()
    mean = total / n
    std = np.sqrt(np.maximum(total_sq / n - mean**2, 1e-12))
    class_means = np.where(counts[:, None] > 0, sums / np.maximum(counts, 1)[:, None], np.nan)
    with atomic_path(out) as tmp, open(tmp, "wb") as handle:
        np.savez(handle, class_means=class_means.astype(np.float32), counts=counts.astype(np.int64),
                 mean=mean.astype(np.float32), std=std.astype(np.float32))
    return {"classes": int((counts > 0).sum()), "rows": int(n), "dim": int(sums.shape[1])}


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Train class means and global mean/std (one streaming pass).")
    parser.add_argument("--train", required=True, help="train manifest")
    parser.add_argument("--num-classes", type=int, required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    print(train_reference(args.train, args.num_classes, args.out))


if __name__ == "__main__":
    run_cli(main)
