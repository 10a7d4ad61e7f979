"""difficulty: are test-2 images less typical than test-1 images? (one head)

Typicality of every test image from train and the features only: its distance to the
nearest train class mean in train-standardised space (label-free, so a wrong label
is label_noise's business, not difficulty's), after re-centring each test set on its
own mean (so a plain shift of the means is mean_shift's business). Then the
counterfactual: test set 1 re-weighted to test set 2's typicality distribution
(deciles of the pooled distance): share = test-1 accuracy − re-weighted test-1
accuracy, the part of the gap that test set 2's less typical images account for.
Interval: classes resampled (bias-corrected percentile).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from scripts.lib.analysis import evidence
from scripts.lib.analysis.common import mpl_text, pyplot, save_figure, write_summary, write_table
from scripts.lib.analysis.step import analysis_cli, begin
from scripts.lib.featio.errors import FeatgapError
from scripts.lib.featio.reader import read_split

OUTPUTS = {"table": ".csv", "summary": ".json", "figure": ".png"}


# ---------------------------------------------------------------- typicality and the share
def nearest_mean_distance(x: np.ndarray, reference: dict, batch_rows: int = 8192) -> np.ndarray:
    """Distance to the nearest train class mean, in train-standardised space, with the set
    re-centred on its own mean (the train mean takes its place)."""
    std = np.maximum(reference["std"].astype(np.float64), 1e-12)
    means = (reference["class_means"].astype(np.float64) - reference["mean"]) / std
    means = means[np.isfinite(means).all(axis=1)]
    own = np.asarray(x, dtype=np.float64).mean(axis=0)
    sq_means = (means**2).sum(axis=1)
    out = np.empty(len(x))
    for start in range(0, len(x), batch_rows):
        z = (np.asarray(x[start:start + batch_rows], dtype=np.float64) - own) / std
        d2 = (z**2).sum(axis=1)[:, None] - 2 * z @ means.T + sq_means[None, :]
        out[start:start + batch_rows] = np.sqrt(np.maximum(d2.min(axis=1), 0))
    return out


def reweighted_accuracy(score1, correct1, score2, edges) -> float:
    """Test-1 accuracy with its images re-weighted to test set 2's distribution over the bins."""
    b1, b2 = np.digitize(score1, edges), np.digitize(score2, edges)
    k = len(edges) + 1
    p2 = np.bincount(b2, minlength=k) / len(b2)
    n1 = np.bincount(b1, minlength=k)
    acc1 = np.bincount(b1, weights=correct1, minlength=k) / np.maximum(n1, 1)
    seen = n1 > 0  # a test-2 bin with no test-1 image: re-normalise over the bins test set 1 covers
    return float(np.sum(p2[seen] * acc1[seen]) / max(p2[seen].sum(), 1e-12))


def difficulty_share(score1, correct1, labels1, score2, correct2, labels2, *, bins: int, n_boot: int,
                     seed: int) -> dict[str, Any]:
    score1, score2 = np.asarray(score1, float), np.asarray(score2, float)
    correct1, correct2 = np.asarray(correct1, float), np.asarray(correct2, float)
    edges = np.quantile(np.concatenate([score1, score2]), np.linspace(0, 1, bins + 1)[1:-1])

    def share(i1, i2):
        return 100 * (correct1[i1].mean() - reweighted_accuracy(score1[i1], correct1[i1], score2[i2], edges))

    points = share(np.arange(len(score1)), np.arange(len(score2)))
    ci = evidence.class_bootstrap(share, labels1, labels2, n_boot=n_boot, seed=seed)
    return {"points": points, "ci95": ci, "bins": bins,
            "median_distance_test1": float(np.median(score1)), "median_distance_test2": float(np.median(score2)),
            "test1_top1_reweighted": float(reweighted_accuracy(score1, correct1, score2, edges))}


def difficulty(*, reference: str | Path, test1: str | Path, test2: str | Path, predictions1: str | Path,
               predictions2: str | Path, outputs: Mapping[str, str | Path], options: dict | None = None,
               head_name: str, seed: int = 0) -> dict[str, Any]:
    started, opts, files = begin("difficulty", options, outputs, OUTPUTS)
    head = head_name
    ref = dict(np.load(reference))
    scores, frames = {}, {}
    for test, manifest, preds in (("test1", test1, predictions1), ("test2", test2, predictions2)):
        split = read_split(manifest, features=True, columns=("row", "label"))
        pred = pd.read_parquet(preds, columns=["row", "label", "correct"]).set_index("row")
        if len(pred) != len(split.row) or not pred.index.isin(split.row).all():
            raise FeatgapError(f"{preds}: rows do not match {manifest}")
        scores[test] = nearest_mean_distance(split.features, ref, int(opts["batch_rows"]))
        frames[test] = pd.DataFrame({"set": test, "row": split.row, "label": split.label,
                                     "correct": pred.loc[split.row, "correct"].to_numpy(bool),
                                     "distance": scores[test]})
    f1, f2 = frames["test1"], frames["test2"]
    result = difficulty_share(f1["distance"], f1["correct"], f1["label"], f2["distance"], f2["correct"], f2["label"],
                              bins=int(opts["bins"]), n_boot=int(opts["bootstrap"]), seed=seed)
    gap = 100 * float(f1["correct"].mean() - f2["correct"].mean())
    write_table(pd.concat([f1, f2]), files["table"])
    figure = plot_typicality(f1, f2, head, files["figure"])
    lo, hi = result["ci95"]
    sentence = (f"Test-2 images lie further from the nearest train class mean (median {result['median_distance_test2']:.2f}"
                f" vs {result['median_distance_test1']:.2f}, each set re-centred); test set 1 re-weighted to test set "
                f"2's typicality loses {result['points']:.1f} of the {gap:.1f} points (95% interval {lo:.1f} to "
                f"{hi:.1f}, classes resampled)"
                + ("." if lo > 0 else ": no evidence that less typical test-2 images account for part of the gap."))
    block = evidence.reading("difficulty", result["points"], result["ci95"], sentence=sentence,
                             unit="classes resampled")
    return write_summary(files["summary"], verdict=sentence, figures=[figure], table=files["table"],
                         numbers={**result, "gap_points": gap}, started=started, seed=seed,
                         inputs=[reference, test1, test2, predictions1, predictions2],
                         extra={"head": head, "reading": block})


def plot_typicality(f1: pd.DataFrame, f2: pd.DataFrame, head: str, path: Path) -> str:
    plt = pyplot()
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    bins = np.quantile(pd.concat([f1["distance"], f2["distance"]]), np.linspace(0, 1, 31))
    for frame, name, color in ((f1, "test1", "#4f81bd"), (f2, "test2", "#c0504d")):
        ax.hist(frame["distance"], bins=bins, density=True, alpha=0.55, color=color, label=name)
        groups = frame.groupby(pd.qcut(frame["distance"], 10, duplicates="drop"), observed=True)
        acc = groups.agg(d=("distance", "mean"), acc=("correct", "mean"))
        ax2.plot(acc["d"], acc["acc"], marker="o", color=color, label=name)
    ax.set_xlabel("distance to the nearest train class mean")
    ax.set_ylabel("density")
    ax.legend(fontsize=7)
    ax2.set_xlabel("distance (decile means)")
    ax2.set_ylabel("accuracy")
    ax2.legend(fontsize=7)
    fig.suptitle(mpl_text(f"{head}: typicality of the test images"))
    return save_figure(fig, path)


def main(argv: Sequence[str] | None = None) -> None:
    analysis_cli(
        difficulty,
        description="Typicality of the test images (difficulty, one head).",
        declared=OUTPUTS,
        inputs={
            "reference": "train_reference.npz",
            "test1": "test1 manifest",
            "test2": "test2 manifest",
            "predictions1": "test-1 predictions.parquet",
            "predictions2": "test-2 predictions.parquet",
        },
        argv=argv,
    )


if __name__ == "__main__":
    main()
