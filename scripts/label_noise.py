"""label_noise: are some test-2 labels wrong or ambiguous? (one head)

Input: the two predictions.parquet of evaluate (label, pred, calibrated confidence, path), nothing
else, so a later re-scoring with other labels (e.g. ImageNet ReaL) can feed the same function.

A confident disagreement is an image predicted with calibrated confidence ≥ `threshold` whose
prediction differs from its label. Calibration predicts how many of those there should be: the
sum of (1 − confidence) over the confident images. Per set, the excess = observed − predicted
confident disagreements, as a share of the set's images. A wrong label on an image the head
recognises produces exactly that: a confident prediction of the true class that the label calls
wrong. Share of the gap = test-2 excess − test-1 excess (points): the accuracy test set 2 would
gain if its confident disagreements were no more frequent than calibration predicts, relative to
test set 1. Interval: classes resampled (bias-corrected percentile). The most confident test-2
disagreements are listed with their paths, to be checked by eye.
"""
from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from scripts import evidence
from scripts.analysis_common import (
    merge_options,
    pyplot,
    save_figure,
    write_summary,
    write_table,
)
from scripts.featio import FeatgapError, parse_json_arg, run_cli

DEFAULTS = {"threshold": 0.8, "bootstrap": 500, "examples": 20}
FILES = ("disagreements.csv", "summary.json", "confidence.png")


def excess_rate(confidence: np.ndarray, wrong: np.ndarray, threshold: float) -> float:
    """(observed − calibration-predicted) confident disagreements per image."""
    confident = confidence >= threshold
    return float((wrong[confident].sum() - (1 - confidence[confident]).sum()) / max(len(confidence), 1))


def label_noise_share(conf1, wrong1, labels1, conf2, wrong2, labels2, *, threshold: float, n_boot: int,
                      seed: int) -> dict[str, Any]:
    """Points of the gap from test set 2's excess of confident disagreements over test set 1's."""
    conf1, conf2 = np.asarray(conf1, float), np.asarray(conf2, float)
    wrong1, wrong2 = np.asarray(wrong1, bool), np.asarray(wrong2, bool)

    def share(i1, i2):
        return 100 * (excess_rate(conf2[i2], wrong2[i2], threshold) - excess_rate(conf1[i1], wrong1[i1], threshold))

    points = share(np.arange(len(conf1)), np.arange(len(conf2)))
    ci = evidence.class_bootstrap(share, labels1, labels2, n_boot=n_boot, seed=seed)
    return {"points": points, "ci95": ci, "threshold": threshold,
            "excess_test1": 100 * excess_rate(conf1, wrong1, threshold),
            "excess_test2": 100 * excess_rate(conf2, wrong2, threshold),
            "confident_share_test1": float((conf1 >= threshold).mean()),
            "confident_share_test2": float((conf2 >= threshold).mean())}


def _read(path: str | Path) -> pd.DataFrame:
    frame = pd.read_parquet(path, columns=["row", "path", "label", "pred", "confidence", "correct"])
    if frame.empty:
        raise FeatgapError(f"{path}: no predictions")
    return frame


def label_noise(*, predictions1: str | Path, predictions2: str | Path, out_dir: str | Path,
                options: dict | None = None, head_name: str | None = None, seed: int = 0) -> dict[str, Any]:
    started = time.perf_counter()
    opts = merge_options(options, DEFAULTS, "analysis.label_noise")
    out = Path(out_dir)
    head = head_name or Path(predictions1).parent.parent.name
    p1, p2 = _read(predictions1), _read(predictions2)
    result = label_noise_share(p1["confidence"], ~p1["correct"].astype(bool), p1["label"], p2["confidence"],
                               ~p2["correct"].astype(bool), p2["label"], threshold=float(opts["threshold"]),
                               n_boot=int(opts["bootstrap"]), seed=seed)
    gap = 100 * float(p1["correct"].mean() - p2["correct"].mean())
    confident = p2[(p2["confidence"] >= result["threshold"]) & ~p2["correct"].astype(bool)]
    examples = confident.sort_values(["confidence", "row"], ascending=[False, True]).head(int(opts["examples"]))
    files = {name: out / name for name in FILES}
    write_table(examples, files["disagreements.csv"])
    figure = plot_confidence(p1, p2, result["threshold"], head, files["confidence.png"])
    lo, hi = result["ci95"]
    sentence = (f"Test set 2 has {result['excess_test2']:.1f} points of confident disagreements (confidence ≥ "
                f"{result['threshold']:g}, prediction ≠ label) beyond what calibration predicts, test set 1 "
                f"{result['excess_test1']:.1f}: {result['points']:.1f} points of the gap (95% interval {lo:.1f} to "
                f"{hi:.1f}, classes resampled)"
                + ("." if lo > 0 else ": no evidence that wrong or ambiguous test-2 labels explain the gap."))
    block = evidence.block("label_noise", result["points"], result["ci95"], gap_points=gap, sentence=sentence,
                           unit="classes resampled")
    numbers = {**result, "gap_points": gap, "examples": examples[["path", "label", "pred", "confidence"]]
               .head(10).to_dict(orient="records")}
    return write_summary(files["summary.json"], verdict=sentence, figures=[figure], table=files["disagreements.csv"],
                         numbers=numbers, started=started, seed=seed, inputs=[predictions1, predictions2],
                         extra={"head": head, "evidence": block})


def plot_confidence(p1: pd.DataFrame, p2: pd.DataFrame, threshold: float, head: str, path: Path) -> str:
    """Reliability of both sets: accuracy per confidence decile against the diagonal."""
    from scripts.analysis_common import mpl_text

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5, 4))
    for frame, name, color in ((p1, "test1", "#4f81bd"), (p2, "test2", "#c0504d")):
        bins = pd.qcut(frame["confidence"], 10, duplicates="drop")
        grouped = frame.groupby(bins, observed=True).agg(conf=("confidence", "mean"), acc=("correct", "mean"))
        ax.plot(grouped["conf"], grouped["acc"], marker="o", color=color, label=name)
    ax.plot([0, 1], [0, 1], color="k", lw=0.8, ls="--")
    ax.axvline(threshold, color="#7f7f7f", lw=0.8, ls=":", label=f"confident ≥ {threshold:g}")
    ax.set_xlabel("calibrated confidence")
    ax.set_ylabel("accuracy")
    ax.set_title(mpl_text(f"{head}: reliability (below the diagonal: more errors than predicted)"))
    ax.legend(fontsize=7)
    return save_figure(fig, path)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Confident disagreements beyond calibration (label noise).")
    parser.add_argument("--predictions1", required=True)
    parser.add_argument("--predictions2", required=True)
    parser.add_argument("--out-dir", required=True)
    parser.add_argument("--options", default="{}")
    parser.add_argument("--head-name")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    summary = label_noise(predictions1=args.predictions1, predictions2=args.predictions2, out_dir=args.out_dir,
                          options=parse_json_arg(args.options, "options"), head_name=args.head_name, seed=args.seed)
    print(summary["verdict"])


if __name__ == "__main__":
    run_cli(main)
