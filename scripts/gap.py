"""Per-class accuracy drop from test set 1 to test set 2 for one head.

Reads the two metrics.json files written by evaluate (per-class accuracy and mean true-class
probability) and the class-count table (train rows per class, class names); never a feature.
Writes per_class.csv (one row per class, ranked by drop), summary.json (paired t and Wilcoxon
signed-rank across classes, how concentrated the drop is, the classes with the largest drop),
drop_distribution.png and top_drops.png.

Ranking: by accuracy drop, ties broken by the drop in mean true-class probability (with 10
test-2 images per class, accuracy moves in steps of 0.1, so ties are common).
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

DEFAULTS = {"alpha": 0.05, "top_k": 20}
FILES = ("per_class.csv", "summary.json", "drop_distribution.png", "top_drops.png")


def per_class_gap(m1: pd.DataFrame, m2: pd.DataFrame, counts: pd.DataFrame) -> pd.DataFrame:
    if len(m1) != len(m2) or len(m1) != len(counts):
        raise FeatgapError(f"class counts disagree: test1 {len(m1)}, test2 {len(m2)}, class table {len(counts)}")
    frame = pd.DataFrame({
        "class": counts["class"], "name": counts["name"], "train_rows": counts["train_rows"],
        "n_test1": m1["n"], "n_test2": m2["n"],
        "acc_test1": m1["accuracy"].astype(float), "acc_test2": m2["accuracy"].astype(float),
        "p_label_test1": m1["mean_p_label"].astype(float), "p_label_test2": m2["mean_p_label"].astype(float),
    })
    # Rounded so that equal drops tie exactly (0.75 − 0.2 vs 0.85 − 0.3) when ranked.
    frame["drop"] = (frame["acc_test1"] - frame["acc_test2"]).round(12)
    frame["p_label_drop"] = frame["p_label_test1"] - frame["p_label_test2"]
    # Per class: is test 2 accuracy lower than test 1? Fisher exact test on the 2×2 counts.
    fisher = []
    for row in frame.itertuples():
        if row.n_test1 > 0 and row.n_test2 > 0:
            c1, c2 = round(row.acc_test1 * row.n_test1), round(row.acc_test2 * row.n_test2)
            table = [[c1, row.n_test1 - c1], [c2, row.n_test2 - c2]]
            fisher.append(sps.fisher_exact(table, alternative="greater").pvalue)
        else:
            fisher.append(np.nan)
    frame["fisher_p"] = fisher
    valid = frame["fisher_p"].notna()
    frame["fisher_q"] = np.nan
    frame.loc[valid, "fisher_q"] = stats.bh_q(frame.loc[valid, "fisher_p"].to_numpy())
    frame = frame.sort_values(["drop", "p_label_drop", "class"], ascending=[False, False, True], kind="stable",
                              na_position="last")
    frame.insert(0, "rank", np.arange(1, len(frame) + 1))
    return frame.reset_index(drop=True)


def plot_distribution(frame: pd.DataFrame, head: str, path: Path) -> str:
    plt = pyplot()
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    valid = frame.dropna(subset=["drop"])
    ax.hist(valid["drop"], bins=min(41, max(10, len(valid) // 5)), color="#4f81bd")
    ax.axvline(0, color="k", lw=0.8)
    ax.axvline(valid["drop"].mean(), color="#c0504d", lw=1.2, label=f"mean {valid['drop'].mean():+.3f}")
    ax.set_xlabel("per-class accuracy drop (test1 − test2)")
    ax.set_ylabel("classes")
    ax.legend(fontsize=8)
    ax.set_title(f"{head}: distribution of per-class drops")
    rng = np.random.default_rng(0)
    jitter = lambda n: rng.uniform(-0.006, 0.006, n)  # noqa: E731 - tied accuracies overlap otherwise
    ax2.scatter(valid["acc_test1"] + jitter(len(valid)), valid["acc_test2"] + jitter(len(valid)), s=8, alpha=0.6)
    ax2.plot([0, 1], [0, 1], color="k", lw=0.8, ls="--")
    for row in valid.head(5).itertuples():
        ax2.annotate(str(row.name), (row.acc_test1, row.acc_test2), fontsize=7, xytext=(3, -8), textcoords="offset points")
    ax2.set_xlabel("accuracy on test1")
    ax2.set_ylabel("accuracy on test2")
    ax2.set_title("per class (below the diagonal: harder on test2)")
    return save_figure(fig, path)


def plot_top(frame: pd.DataFrame, k: int, head: str, path: Path) -> str:
    plt = pyplot()
    top = frame.head(k).iloc[::-1]
    fig, ax = plt.subplots(figsize=(7, 0.3 * max(len(top), 3) + 1.2))
    y = np.arange(len(top))
    ax.barh(y + 0.2, top["acc_test1"], 0.4, label="test1", color="#4f81bd")
    ax.barh(y - 0.2, top["acc_test2"], 0.4, label="test2", color="#c0504d")
    ax.set_yticks(y, [f"{n} ({t} train)" for n, t in zip(top["name"], top["train_rows"])], fontsize=7)
    ax.set_xlabel("accuracy")
    ax.set_xlim(0, 1)
    ax.legend(fontsize=7, loc="lower right")
    ax.set_title(f"{head}: classes with the largest drop")
    return save_figure(fig, path)


def gap(*, metrics1: str | Path, metrics2: str | Path, class_counts: str | Path, out_dir: str | Path,
        options: dict | None = None, head_name: str | None = None, seed: int = 0) -> dict[str, Any]:
    started = time.perf_counter()
    opts = merge_options(options, DEFAULTS, "analysis.gap")
    alpha, k = float(opts["alpha"]), int(opts["top_k"])
    out = Path(out_dir)
    head = head_name or Path(metrics1).parent.parent.name
    frame = per_class_gap(load_per_class(metrics1), load_per_class(metrics2), read_class_counts(class_counts))
    files = {name: out / name for name in FILES}
    write_table(frame, files["per_class.csv"])
    figures = [plot_distribution(frame, head, files["drop_distribution.png"]),
               plot_top(frame, k, head, files["top_drops.png"])]
    valid = frame.dropna(subset=["drop"])
    tests = stats.paired_tests(valid["acc_test1"].to_numpy(), valid["acc_test2"].to_numpy())
    drops = valid["drop"].to_numpy()
    positive = np.clip(drops, 0, None)
    top_decile = max(1, int(np.ceil(0.1 * len(drops))))
    share_top = float(np.sort(positive)[::-1][:top_decile].sum() / positive.sum()) if positive.sum() > 0 else None
    n_sig = int((valid["fisher_q"] < alpha).sum())
    numbers = {
        "n_classes": int(len(valid)), "alpha": alpha,
        "mean_acc_test1": float(valid["acc_test1"].mean()), "mean_acc_test2": float(valid["acc_test2"].mean()),
        "mean_drop": tests["mean_diff"], "median_drop": tests["median_diff"],
        "paired_t": tests["paired_t"], "paired_t_p": tests["paired_t_p"],
        "wilcoxon": tests["wilcoxon"], "wilcoxon_p": tests["wilcoxon_p"],
        "share_classes_dropping": float((drops > 0).mean()), "share_classes_improving": float((drops < 0).mean()),
        "share_of_drop_from_top_decile": share_top,
        "n_classes_significant_drop": n_sig,
        "top_classes": frame.head(k)[["rank", "class", "name", "train_rows", "acc_test1", "acc_test2", "drop",
                                      "fisher_q"]].to_dict(orient="records"),
    }
    names = ", ".join(f"{r.name} ({r.acc_test1:.0%}→{r.acc_test2:.0%})" for r in frame.head(3).itertuples())
    significant = tests["wilcoxon_p"] is not None and np.isfinite(tests["wilcoxon_p"]) and tests["wilcoxon_p"] < alpha
    verdict = (
        f"Per class, {head} is {tests['mean_diff']:+.1%} less accurate on test set 2 on average "
        f"(median {tests['median_diff']:+.1%}; paired t {fmt_p(tests['paired_t_p'])}, Wilcoxon {fmt_p(tests['wilcoxon_p'])}"
        f"{'' if significant else ', not significant'}); {numbers['share_classes_dropping']:.0%} of classes drop"
        + (f", the top 10% of classes account for {share_top:.0%} of the total drop" if share_top is not None else "")
        + f", {n_sig} classes drop significantly on their own (Fisher q < {alpha}); largest drops: {names}."
    )
    return write_summary(files["summary.json"], verdict=verdict, figures=figures, table=files["per_class.csv"],
                         numbers=numbers, started=started, seed=seed, inputs=[metrics1, metrics2, class_counts],
                         extra={"head": head})


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Per-class accuracy drop from test set 1 to test set 2.")
    parser.add_argument("--metrics1", required=True, help="results/eval/{head}/test1/metrics.json")
    parser.add_argument("--metrics2", required=True, help="results/eval/{head}/test2/metrics.json")
    parser.add_argument("--class-counts", required=True)
    parser.add_argument("--out-dir", required=True)
    parser.add_argument("--options", default="{}")
    parser.add_argument("--head-name")
    args = parser.parse_args(argv)
    summary = gap(metrics1=args.metrics1, metrics2=args.metrics2, class_counts=args.class_counts,
                  out_dir=args.out_dir, options=parse_json_arg(args.options, "options"), head_name=args.head_name)
    print(summary["verdict"])


if __name__ == "__main__":
    run_cli(main)
