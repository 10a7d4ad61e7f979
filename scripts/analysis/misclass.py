"""Features of correctly classified vs misclassified samples (one head, one test set).

Reads the test split's features and labels and the `correct` column of evaluate's
predictions.parquet (matched on `row`). Errors depend strongly on the class, and features tell
classes apart, so a raw correct-vs-misclassified comparison mostly finds class features (in a
simulation where errors depend on class only, 4 of 256 features came out "significant"). Every
test is therefore *within class*: the coefficient of "misclassified" in feature ~ misclassified
+ class, with robust (HC1) standard errors (scripts.lib.stats.clustered.within_class_effect). Per
feature: raw means and variances (descriptive), within_diff (misclassified − correct, within
class), within-class variances, Cohen's d = within_diff / pooled within-class sd, t, df, p, BH
q, and the unadjusted Welch t / q for contrast. The significant features (q < alpha) are
grouped by k-means in the (Cohen's d, variance difference / pooled variance) plane. Writes
the outputs table, summary, figure.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from scripts.lib.analysis.common import mpl_text, pyplot, save_figure, write_summary, write_table
from scripts.lib.analysis.step import analysis_cli, begin
from scripts.lib.featio.errors import FeatgapError
from scripts.lib.featio.reader import read_split
from scripts.lib.stats import clustered, inference

OUTPUTS = {"table": ".csv", "summary": ".json", "figure": ".png"}


def correct_vs_misclassified(x: np.ndarray, correct: np.ndarray, labels: np.ndarray | None = None) -> pd.DataFrame:
    """Per feature, misclassified vs correct images, tested within class (`labels`; None: all
    images one class, i.e. no adjustment)."""
    if correct.all() or (~correct).all() or correct.sum() < 2 or (~correct).sum() < 2:
        raise FeatgapError("need at least 2 correct and 2 misclassified samples to compare their features")
    labels = np.zeros(len(correct), np.int64) if labels is None else np.asarray(labels)
    mc, mm = inference.moments(x[correct]), inference.moments(x[~correct])
    raw = inference.welch_from_moments(mc, mm)
    within = clustered.within_class_effect(x, ~correct, labels)
    vc, vm = within["var_other_within"], within["var_flagged_within"]
    nc, nm = int(correct.sum()), int((~correct).sum())
    pooled = ((nc - 1) * vc + (nm - 1) * vm) / (nc + nm - 2)
    with np.errstate(divide="ignore", invalid="ignore"):
        d = np.where(pooled > 0, within["beta"] / np.sqrt(pooled), np.nan)
        var_diff_std = np.where(pooled > 0, (vm - vc) / pooled, np.nan)
    return pd.DataFrame({
        "feature": np.arange(x.shape[1]),
        "mean_correct": mc.mean, "mean_misclassified": mm.mean, "mean_diff": mm.mean - mc.mean,
        "var_correct": mc.var, "var_misclassified": mm.var,
        "within_diff": within["beta"], "within_se": within["se"],
        "var_correct_within": vc, "var_misclassified_within": vm, "var_diff": vm - vc,
        "cohens_d": d, "var_diff_std": var_diff_std,
        "t": within["t"], "df": within["df"], "p": within["p"], "q": inference.bh_q(within["p"]),
        "t_unadjusted": raw.t, "q_unadjusted": inference.bh_q(raw.p),
    })


def cluster(table: pd.DataFrame, alpha: float, k: int, seed: int) -> tuple[pd.DataFrame, list[dict]]:
    from sklearn.cluster import KMeans

    table = table.copy()
    table["significant"] = table["q"] < alpha
    table["cluster"] = -1
    sig = table[table["significant"]]
    k = min(k, len(sig))
    if k < 1:
        return table, []
    points = sig[["cohens_d", "var_diff_std"]].to_numpy()
    if k == 1:
        labels = np.zeros(len(sig), int)
    else:
        labels = KMeans(n_clusters=k, n_init=10, random_state=seed).fit_predict(points)
    # Stable cluster ids: ordered by centroid mean difference.
    centroids = np.array([points[labels == c].mean(0) for c in range(k)])
    order = np.argsort(centroids[:, 0], kind="stable")
    relabel = np.empty(k, int)
    relabel[order] = np.arange(k)
    labels = relabel[labels]
    table.loc[sig.index, "cluster"] = labels
    summary = []
    for c in range(k):
        members = sig[labels == c]
        d, v = members["cohens_d"].mean(), members["var_diff_std"].mean()
        summary.append({
            "cluster": c, "n_features": len(members), "mean_cohens_d": float(d), "mean_var_diff_std": float(v),
            "description": (f"{'higher' if d > 0 else 'lower'} mean and {'higher' if v > 0 else 'lower'} variance "
                            "in misclassified samples"),
            "features": members.sort_values("q")["feature"].head(20).tolist(),
        })
    return table, summary


def plot_clusters(table: pd.DataFrame, clusters: list[dict], title: str, path: Path) -> str:
    plt = pyplot()
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    ns = table[~table["significant"]]
    ax.scatter(ns["cohens_d"], ns["var_diff_std"], s=6, color="#bbbbbb", label="q ≥ alpha")
    cmap = plt.get_cmap("tab10")
    for c in clusters:
        sub = table[table["cluster"] == c["cluster"]]
        ax.scatter(sub["cohens_d"], sub["var_diff_std"], s=12, color=cmap(c["cluster"] % 10),
                   label=f"cluster {c['cluster']} ({c['n_features']})")
        ax.scatter([c["mean_cohens_d"]], [c["mean_var_diff_std"]], marker="X", s=90, color=cmap(c["cluster"] % 10),
                   edgecolor="k")
    ax.axhline(0, color="k", lw=0.6)
    ax.axvline(0, color="k", lw=0.6)
    ax.set_xlabel("within-class mean difference / pooled sd (misclassified − correct)")
    ax.set_ylabel("within-class variance difference / pooled variance")
    ax.set_title("k-means of the significant features (within class)")
    ax.legend(fontsize=7)
    y = -np.log10(np.clip(table["q"].fillna(1.0).to_numpy(), 1e-300, 1))
    ax2.scatter(table["cohens_d"], y, s=6, c=np.where(table["significant"], "#c0504d", "#7f7f7f"))
    ax2.set_xlabel("Cohen's d (misclassified − correct)")
    ax2.set_ylabel("−log10 BH q")
    ax2.set_title("all features")
    fig.suptitle(mpl_text(title))
    return save_figure(fig, path)


def misclass(*, predictions: str | Path, manifest: str | Path, outputs: Mapping[str, str | Path], options: dict | None = None,
             seed: int = 0, head_name: str, test_name: str) -> dict[str, Any]:
    started, opts, files = begin("misclass", options, outputs, OUTPUTS)
    alpha = float(opts["alpha"])
    head = head_name
    test = test_name
    pred = pq.read_table(predictions, columns=["row", "correct"])
    split = read_split(manifest, features=True, columns=("row", "label"))
    pred_row = pred.column("row").to_numpy()
    if len(pred_row) != len(split.row) or not np.array_equal(pred_row, split.row):
        raise FeatgapError(f"{predictions}: rows do not match {manifest} (re-run evaluate for this split)")
    correct = pred.column("correct").to_numpy(zero_copy_only=False).astype(bool)
    if min(correct.sum(), (~correct).sum()) < 2:
        # A (near-)perfect or useless head: nothing to compare; say so instead of failing the run.
        return _degenerate(files, correct, split.features.shape[1], head, test, alpha, started, seed,
                           [predictions, manifest])
    table, clusters = cluster(correct_vs_misclassified(split.features, correct, split.label), alpha,
                              int(opts["clusters"]), seed)
    write_table(table, files["table"])
    figure = plot_clusters(table, clusters, f"{head} on {test}: correct vs misclassified samples",
                           files["figure"])
    n_sig, d = int(table["significant"].sum()), len(table)
    top = table.reindex(table["t"].abs().sort_values(ascending=False).index).head(10)
    numbers = {
        "alpha": alpha, "n_features": d, "n_correct": int(correct.sum()), "n_misclassified": int((~correct).sum()),
        "n_significant": n_sig, "share_significant": n_sig / d,
        "n_significant_unadjusted": int((table["q_unadjusted"] < alpha).sum()),
        "units": {"t": "images, within class (class fixed effects, HC1 standard errors)"},
        "n_higher_mean_misclassified": int((table["significant"] & (table["mean_diff"] > 0)).sum()),
        "n_higher_var_misclassified": int((table["significant"] & (table["var_diff"] > 0)).sum()),
        "median_var_ratio": float(np.nanmedian(table["var_misclassified_within"]
                                               / table["var_correct_within"].where(table["var_correct_within"] > 0))),
        "clusters": clusters,
        "top_features": top[["feature", "mean_diff", "var_diff", "cohens_d", "t", "q"]].to_dict(orient="records"),
    }
    largest = max(clusters, key=lambda c: c["n_features"]) if clusters else None
    verdict = (
        f"On {test}, {numbers['n_misclassified']} misclassified samples differ from the {numbers['n_correct']} correct ones "
        f"in {n_sig} of {d} features within their class (BH q < {alpha}; {numbers['n_significant_unadjusted']} "
        "without removing class means)"
        + (f"; k-means finds {len(clusters)} group{'s' if len(clusters) != 1 else ''}, "
           f"the largest ({largest['n_features']} features) with {largest['description']}" if largest else "")
        + f"; within class, misclassified samples have {numbers['median_var_ratio']:.2f}× the variance (median over "
        "features). Whether this accounts for part of the gap is read from the comparison with the other test set."
    )
    return write_summary(files["summary"], verdict=verdict, figures=[figure], table=files["table"],
                         numbers=numbers, started=started, seed=seed, inputs=[predictions, manifest],
                         extra={"head": head, "test": test})


def _degenerate(files, correct, dim, head, test, alpha, started, seed, inputs) -> dict[str, Any]:
    plt = pyplot()
    table = pd.DataFrame({"feature": np.arange(dim)})
    for col in ("mean_correct", "mean_misclassified", "mean_diff", "var_correct", "var_misclassified", "within_diff",
                "within_se", "var_correct_within", "var_misclassified_within", "var_diff", "cohens_d", "var_diff_std",
                "t", "df", "p", "q", "t_unadjusted", "q_unadjusted"):
        table[col] = np.nan
    table["significant"], table["cluster"] = False, -1
    write_table(table, files["table"])
    fig, ax = plt.subplots(figsize=(5, 2))
    ax.axis("off")
    ax.text(0.5, 0.5, f"{int((~correct).sum())} misclassified, {int(correct.sum())} correct: nothing to compare",
            ha="center", va="center")
    figure = save_figure(fig, files["figure"])
    numbers = {"alpha": alpha, "n_features": dim, "n_correct": int(correct.sum()),
               "n_misclassified": int((~correct).sum()), "n_significant": 0, "share_significant": 0.0,
               "clusters": [], "top_features": []}
    verdict = (f"On {test}, {head} has {numbers['n_misclassified']} misclassified and {numbers['n_correct']} correct "
               "samples: too few in one group (< 2) to compare their features.")
    return write_summary(files["summary"], verdict=verdict, figures=[figure], table=files["table"],
                         numbers=numbers, started=started, seed=seed, inputs=inputs, extra={"head": head, "test": test})


def main(argv: Sequence[str] | None = None) -> None:
    analysis_cli(
        misclass,
        description="Features of correct vs misclassified samples (within class).",
        declared=OUTPUTS,
        inputs={
            "predictions": "results/eval/{head}/{test}/predictions.parquet",
            "manifest": "the test split's manifest",
        },
        per_test=True,
        argv=argv,
    )


if __name__ == "__main__":
    main()
