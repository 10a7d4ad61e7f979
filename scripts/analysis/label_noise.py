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

With ImageNet ReaL labels for test set 1 (`real_rows`: rows.parquet of the real_labels check, scripts.
real_labels), the share is bounded by what ReaL supports: on test set 1, a share p of the confident
disagreements has the prediction in the image's ReaL set (label noise); assuming test set 2's confident
disagreements are label noise no more often, its extra label noise is at most p × (D2 − D1) points
(D = confident disagreements per image, points). The evidence block then reports min(calibration share,
ReaL bound), both computed on the same class resamples; with no confident disagreement on test set 1, p
is 0 (nothing supports a claim).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from scripts.lib.analysis import evidence
from scripts.lib.analysis.common import pyplot, save_figure, write_summary, write_table
from scripts.lib.analysis.step import analysis_cli, begin
from scripts.lib.featio.errors import FeatgapError

OUTPUTS = {"table": ".csv", "summary": ".json", "figure": ".png"}


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


def real_bounded_share(conf1, wrong1, labels1, in_real1, conf2, wrong2, labels2, *, threshold: float,
                       n_boot: int, seed: int) -> dict[str, Any]:
    """min(calibration share, ReaL bound) in points, with its class-resampled interval, and the parts."""
    conf1, conf2 = np.asarray(conf1, float), np.asarray(conf2, float)
    wrong1, wrong2, in_real1 = np.asarray(wrong1, bool), np.asarray(wrong2, bool), np.asarray(in_real1, bool)
    dis1, dis2 = wrong1 & (conf1 >= threshold), wrong2 & (conf2 >= threshold)

    def parts(i1, i2) -> tuple[float, float, float]:
        d1, d2 = dis1[i1], dis2[i2]
        p = float(in_real1[i1][d1].mean()) if d1.any() else 0.0
        bound = 100 * p * (d2.mean() - d1.mean()) if len(i1) and len(i2) else np.nan
        share = 100 * (excess_rate(conf2[i2], wrong2[i2], threshold) - excess_rate(conf1[i1], wrong1[i1], threshold))
        return share, float(bound), p

    def bounded(i1, i2) -> float:
        share, bound, _ = parts(i1, i2)
        return min(share, bound)

    share, bound, p = parts(np.arange(len(conf1)), np.arange(len(conf2)))
    return {"points": min(share, bound), "ci95": evidence.class_bootstrap(bounded, labels1, labels2, n_boot=n_boot,
                                                                         seed=seed),
            "real_bound_points": bound, "calibration_share_points": share,
            "real_label_noise_share_test1": p, "bounded_by_real": bound < share,
            "confident_disagreement_points_test1": 100 * float(dis1.mean()),
            "confident_disagreement_points_test2": 100 * float(dis2.mean())}


def _read_real_rows(path: str | Path, p1: pd.DataFrame) -> np.ndarray:
    """pred_in_real of test set 1, aligned with its predictions (same rows, same predictions)."""
    rows = pd.read_parquet(path, columns=["row", "pred", "category"])
    if len(rows) != len(p1) or not np.array_equal(rows["row"].to_numpy(), p1["row"].to_numpy()):
        raise FeatgapError(f"{path}: its rows are not those of the test-1 predictions ({len(rows)} vs {len(p1)} rows); "
                           "expected the real_labels check of the same head: run snakemake again")
    if not np.array_equal(rows["pred"].to_numpy(), p1["pred"].to_numpy()):
        raise FeatgapError(f"{path}: predictions differ from the test-1 predictions; expected the real_labels check of "
                           "the same head: run snakemake again")
    return (rows["category"] == "in_real").to_numpy()


def _read(path: str | Path) -> pd.DataFrame:
    frame = pd.read_parquet(path, columns=["row", "path", "label", "pred", "confidence", "correct"])
    if frame.empty:
        raise FeatgapError(f"{path}: no predictions")
    return frame


def label_noise(*, predictions1: str | Path, predictions2: str | Path, outputs: Mapping[str, str | Path],
                options: dict | None = None, head_name: str, seed: int = 0,
                real_rows: str | Path | None = None) -> dict[str, Any]:
    started, opts, files = begin("label_noise", options, outputs, OUTPUTS)
    head = head_name
    p1, p2 = _read(predictions1), _read(predictions2)
    result = label_noise_share(p1["confidence"], ~p1["correct"].astype(bool), p1["label"], p2["confidence"],
                               ~p2["correct"].astype(bool), p2["label"], threshold=float(opts["threshold"]),
                               n_boot=int(opts["bootstrap"]), seed=seed)
    gap = 100 * float(p1["correct"].mean() - p2["correct"].mean())
    confident = p2[(p2["confidence"] >= result["threshold"]) & ~p2["correct"].astype(bool)]
    examples = confident.sort_values(["confidence", "row"], ascending=[False, True]).head(int(opts["examples"]))
    write_table(examples, files["table"])
    figure = plot_confidence(p1, p2, result["threshold"], head, files["figure"])
    real = None
    if real_rows:
        real = real_bounded_share(p1["confidence"], ~p1["correct"].astype(bool), p1["label"],
                                  _read_real_rows(real_rows, p1), p2["confidence"], ~p2["correct"].astype(bool),
                                  p2["label"], threshold=result["threshold"], n_boot=int(opts["bootstrap"]), seed=seed)
    lo, hi = result["ci95"]
    sentence = (f"Test set 2 has {result['excess_test2']:.1f} points of confident disagreements (confidence ≥ "
                f"{result['threshold']:g}, prediction ≠ label) beyond what calibration predicts, test set 1 "
                f"{result['excess_test1']:.1f}: {result['points']:.1f} points of the gap (95% interval {lo:.1f} to "
                f"{hi:.1f}, classes resampled)"
                + ("." if lo > 0 or real is not None else
                   ": no evidence that wrong or ambiguous test-2 labels account for part of the gap."))
    points, ci = result["points"], result["ci95"]
    if real is not None:
        points, ci = real["points"], real["ci95"]
        sentence += (f" ReaL labels of test set 1: {real['real_label_noise_share_test1']:.0%} of its confident "
                     f"disagreements have the prediction in the ReaL set, so test set 2's extra confident disagreements "
                     f"({real['confident_disagreement_points_test2']:.1f} − "
                     f"{real['confident_disagreement_points_test1']:.1f} points) support at most "
                     f"{real['real_bound_points']:.1f} points of label noise; share "
                     + ("bounded by ReaL" if real["bounded_by_real"] else "within the ReaL bound")
                     + f": {points:.1f} points (95% interval {ci[0]:.1f} to {ci[1]:.1f}, classes resampled)"
                     + ("." if ci[0] > 0 else ": no evidence that wrong or ambiguous test-2 labels account for part of the gap."))
    block = evidence.reading("confident_disagreements", points, ci, sentence=sentence, unit="classes resampled",
                             real_labels=real is not None)
    numbers = {**result, **({(k if k.startswith("real_") else f"real_{k}"): v for k, v in real.items()}
                            if real else {}), "gap_points": gap, "examples": examples[["path", "label", "pred", "confidence"]]
               .head(10).to_dict(orient="records")}
    return write_summary(files["summary"], verdict=sentence, figures=[figure], table=files["table"],
                         numbers=numbers, started=started, seed=seed,
                         inputs=[predictions1, predictions2] + ([real_rows] if real_rows else []),
                         extra={"head": head, "reading": block})


def plot_confidence(p1: pd.DataFrame, p2: pd.DataFrame, threshold: float, head: str, path: Path) -> str:
    """Reliability of both sets: accuracy per confidence decile against the diagonal."""
    from scripts.lib.analysis.common import mpl_text

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
    analysis_cli(
        label_noise,
        description="Confident disagreements between labels and predictions, test set 2 vs test set 1.",
        declared=OUTPUTS,
        inputs={
            "predictions1": "test-1 predictions.parquet",
            "predictions2": "test-2 predictions.parquet",
        },
        extra=lambda p: p.add_argument("--real-rows", help="the ReaL check's rows.parquet (when test set 1 is the ReaL set)"),
        argv=argv,
    )


if __name__ == "__main__":
    main()
