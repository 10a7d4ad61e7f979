"""Does training-set class imbalance explain per-class accuracy or the drop? (one head)

Reads the class-count table (train rows per class, from the label column only) and the two
metrics.json files of evaluate. Spearman ρ (with p) of train rows vs accuracy on test 1, on
test 2 and vs the drop; the same comparison between classes with the full number of training
rows and those with fewer (Mann–Whitney U). Writes per_class.csv, summary.json, scatter.png.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
from scipy import stats as sps

from scripts import stats
from scripts.analysis_common import (fmt_p, load_per_class, merge_options, pyplot, read_class_counts,
                                     save_figure, write_summary, write_table)
from scripts.featio import FeatgapError, parse_json_arg, run_cli

DEFAULTS = {"alpha": 0.05}
FILES = ("per_class.csv", "summary.json", "scatter.png")
TARGETS = (("acc_test1", "accuracy on test1"), ("acc_test2", "accuracy on test2"), ("drop", "drop (test1 − test2)"))


def plot_scatter(frame: pd.DataFrame, results: dict, head: str, path: Path) -> str:
    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    rng = np.random.default_rng(0)
    for ax, (col, label) in zip(axes, TARGETS):
        y = frame[col].to_numpy(float)
        ax.scatter(frame["train_rows"] + rng.uniform(-0.3, 0.3, len(frame)), y + rng.uniform(-0.004, 0.004, len(y)),
                   s=8, alpha=0.6)
        r = results[col]
        ax.set_title(f"Spearman ρ = {r['rho']:+.3f}, {fmt_p(r['p'])}" if r["rho"] is not None and np.isfinite(r["rho"])
                     else "Spearman ρ undefined (no spread)", fontsize=9)
        ax.set_xlabel("training rows of the class")
        ax.set_ylabel(label)
    fig.suptitle(f"{head}: class size in training vs per-class accuracy")
    return save_figure(fig, path)


def imbalance(*, class_counts: str | Path, metrics1: str | Path, metrics2: str | Path, out_dir: str | Path,
              options: dict | None = None, head_name: str | None = None, seed: int = 0) -> dict[str, Any]:
    started = time.perf_counter()
    opts = merge_options(options, DEFAULTS, "analysis.imbalance")
    alpha = float(opts["alpha"])
    out = Path(out_dir)
    head = head_name or Path(metrics1).parent.parent.name
    counts = read_class_counts(class_counts)
    m1, m2 = load_per_class(metrics1), load_per_class(metrics2)
    if not (len(counts) == len(m1) == len(m2)):
        raise FeatgapError(f"class counts disagree: class table {len(counts)}, test1 {len(m1)}, test2 {len(m2)}")
    frame = pd.DataFrame({"class": counts["class"], "name": counts["name"], "train_rows": counts["train_rows"],
                          "acc_test1": m1["accuracy"].astype(float), "acc_test2": m2["accuracy"].astype(float)})
    # Rounded so that equal drops tie exactly (0.75 − 0.2 vs 0.85 − 0.3) when ranked.
    frame["drop"] = (frame["acc_test1"] - frame["acc_test2"]).round(12)
    frame = frame.dropna(subset=["acc_test1", "acc_test2"])
    results = {col: stats.spearman(frame["train_rows"], frame[col]) for col, _ in TARGETS}
    full = frame["train_rows"] == frame["train_rows"].max()
    groups = {"n_full_classes": int(full.sum()), "n_reduced_classes": int((~full).sum()),
              "full_rows": int(frame["train_rows"].max())}
    for col, _ in TARGETS:
        groups[f"{col}_full"] = float(frame.loc[full, col].mean())
        groups[f"{col}_reduced"] = float(frame.loc[~full, col].mean()) if (~full).any() else None
        if full.sum() >= 2 and (~full).sum() >= 2:
            groups[f"{col}_mannwhitney_p"] = float(sps.mannwhitneyu(frame.loc[full, col], frame.loc[~full, col]).pvalue)
        else:
            groups[f"{col}_mannwhitney_p"] = None
    files = {name: out / name for name in FILES}
    write_table(frame.sort_values("train_rows", kind="stable"), files["per_class.csv"])
    figure = plot_scatter(frame, results, head, files["scatter.png"])
    numbers = {"alpha": alpha, "n_classes": int(len(frame)),
               "train_rows_min": int(frame["train_rows"].min()), "train_rows_max": int(frame["train_rows"].max()),
               "train_rows_ratio": float(frame["train_rows"].max() / max(frame["train_rows"].min(), 1)),
               **{f"spearman_{col}": results[col] for col, _ in TARGETS}, **groups}

    def describe(col: str) -> str:
        r = results[col]
        if r["rho"] is None or not np.isfinite(r["rho"]):
            return "undefined"
        return f"ρ = {r['rho']:+.2f} ({fmt_p(r['p'])})"

    sig = [col for col, _ in TARGETS if np.isfinite(results[col]["p"] if results[col]["p"] is not None else np.nan)
           and results[col]["p"] < alpha]
    drop_sig = "drop" in sig
    verdict = (
        f"Training rows per class ({numbers['train_rows_min']}–{numbers['train_rows_max']}) "
        + ("are significantly related to" if sig else "are not significantly related to")
        + f" {head}'s per-class accuracy (Spearman vs test1 {describe('acc_test1')}, vs test2 "
        f"{describe('acc_test2')}); vs the drop {describe('drop')}, so class imbalance "
        + ("helps explain" if drop_sig and results["drop"]["rho"] < 0 else "does not explain")
        + " why test set 2 is harder."
    )
    return write_summary(files["summary.json"], verdict=verdict, figures=[figure], table=files["per_class.csv"],
                         numbers=numbers, started=started, seed=seed, inputs=[class_counts, metrics1, metrics2],
                         extra={"head": head})


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Train class counts vs per-class accuracy and drop.")
    parser.add_argument("--class-counts", required=True)
    parser.add_argument("--metrics1", required=True)
    parser.add_argument("--metrics2", required=True)
    parser.add_argument("--out-dir", required=True)
    parser.add_argument("--options", default="{}")
    parser.add_argument("--head-name")
    args = parser.parse_args(argv)
    summary = imbalance(class_counts=args.class_counts, metrics1=args.metrics1, metrics2=args.metrics2,
                        out_dir=args.out_dir, options=parse_json_arg(args.options, "options"),
                        head_name=args.head_name)
    print(summary["verdict"])


if __name__ == "__main__":
    run_cli(main)
