"""Features of correctly classified vs misclassified samples (one head, one test set).

Reads the test split's features and the `correct` column of evaluate's predictions.parquet
(matched on `row`). For every feature (the seed report printed only the top 10): mean_correct,
mean_misclassified, mean_diff (misclassified − correct), var_correct, var_misclassified,
var_diff, Cohen's d, Welch t, df, p, BH q. The significant features (q < alpha) are grouped by
k-means in the (mean difference, variance difference) plane, both made scale-free so that
features with different scales are comparable: mean_diff / pooled sd (= Cohen's d) and
var_diff / pooled variance. Writes features.csv, summary.json, clusters.png.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from scripts import stats
from scripts.analysis_common import merge_options, pyplot, save_figure, write_summary, write_table
from scripts.featio import FeatgapError, parse_json_arg, read_split, run_cli, shard_folder

DEFAULTS = {"alpha": 0.05, "clusters": 3}
FILES = ("features.csv", "summary.json", "clusters.png")


def correct_vs_misclassified(x: np.ndarray, correct: np.ndarray) -> pd.DataFrame:
    if correct.all() or (~correct).all() or correct.sum() < 2 or (~correct).sum() < 2:
        raise FeatgapError("need at least 2 correct and 2 misclassified samples to compare their features")
    mc, mm = stats.moments(x[correct]), stats.moments(x[~correct])
    welch = stats.welch_from_moments(mc, mm)
    pooled = ((mc.n - 1) * mc.var + (mm.n - 1) * mm.var) / (mc.n + mm.n - 2)
    with np.errstate(divide="ignore", invalid="ignore"):
        var_diff_std = np.where(pooled > 0, (mm.var - mc.var) / pooled, 0.0)
    return pd.DataFrame({
        "feature": np.arange(x.shape[1]),
        "mean_correct": mc.mean, "mean_misclassified": mm.mean, "mean_diff": mm.mean - mc.mean,
        "var_correct": mc.var, "var_misclassified": mm.var, "var_diff": mm.var - mc.var,
        "cohens_d": stats.cohens_d(mc, mm), "var_diff_std": var_diff_std,
        "t": welch.t, "df": welch.df, "p": welch.p, "q": stats.bh_q(welch.p),
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
            "cluster": c, "n_features": int(len(members)), "mean_cohens_d": float(d), "mean_var_diff_std": float(v),
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
    ax.set_xlabel("mean difference / pooled sd (misclassified − correct)")
    ax.set_ylabel("variance difference / pooled variance")
    ax.set_title("k-means of the significant features")
    ax.legend(fontsize=7)
    y = -np.log10(np.clip(table["q"].to_numpy(), 1e-300, 1))
    ax2.scatter(table["cohens_d"], y, s=6, c=np.where(table["significant"], "#c0504d", "#7f7f7f"))
    ax2.set_xlabel("Cohen's d (misclassified − correct)")
    ax2.set_ylabel("−log10 BH q")
    ax2.set_title("all features")
    fig.suptitle(title)
    return save_figure(fig, path)


def misclass(*, predictions: str | Path, manifest: str | Path, out_dir: str | Path, options: dict | None = None,
             seed: int = 0, head_name: str | None = None, test_name: str | None = None) -> dict[str, Any]:
    started = time.perf_counter()
    opts = merge_options(options, DEFAULTS, "analysis.misclass")
    alpha = float(opts["alpha"])
    out = Path(out_dir)
    head = head_name or Path(predictions).parent.parent.name
    test = test_name or Path(predictions).parent.name
    pred = pq.read_table(predictions, columns=["row", "correct"])
    split = read_split(shard_folder(manifest), features=True, columns=("row",))
    pred_row = pred.column("row").to_numpy()
    if len(pred_row) != len(split.row) or not np.array_equal(pred_row, split.row):
        raise FeatgapError(f"{predictions}: rows do not match {manifest} (re-run evaluate for this split)")
    correct = pred.column("correct").to_numpy(zero_copy_only=False).astype(bool)
    files = {name: out / name for name in FILES}
    if min(correct.sum(), (~correct).sum()) < 2:
        # A (near-)perfect or useless head: nothing to compare; say so instead of failing the run.
        return _degenerate(files, correct, split.features.shape[1], head, test, alpha, started, seed,
                           [predictions, manifest])
    table, clusters = cluster(correct_vs_misclassified(split.features, correct), alpha, int(opts["clusters"]), seed)
    write_table(table, files["features.csv"])
    figure = plot_clusters(table, clusters, f"{head} on {test}: correct vs misclassified samples",
                           files["clusters.png"])
    n_sig, d = int(table["significant"].sum()), len(table)
    top = table.reindex(table["t"].abs().sort_values(ascending=False).index).head(10)
    numbers = {
        "alpha": alpha, "n_features": d, "n_correct": int(correct.sum()), "n_misclassified": int((~correct).sum()),
        "n_significant": n_sig, "share_significant": n_sig / d,
        "n_higher_mean_misclassified": int((table["significant"] & (table["mean_diff"] > 0)).sum()),
        "n_higher_var_misclassified": int((table["significant"] & (table["var_diff"] > 0)).sum()),
        "median_var_ratio": float(np.median(table["var_misclassified"] / table["var_correct"].where(table["var_correct"] > 0))),
        "clusters": clusters,
        "top_features": top[["feature", "mean_diff", "var_diff", "cohens_d", "t", "q"]].to_dict(orient="records"),
    }
    largest = max(clusters, key=lambda c: c["n_features"]) if clusters else None
    verdict = (
        f"On {test}, {numbers['n_misclassified']} misclassified samples differ from the {numbers['n_correct']} correct ones "
        f"in {n_sig} of {d} features (Welch t, BH q < {alpha})"
        + (f"; k-means finds {len(clusters)} group{'s' if len(clusters) != 1 else ''}, the largest ({largest['n_features']} features) with "
           f"{largest['description']}" if largest else "")
        + f"; across all features misclassified samples have {numbers['median_var_ratio']:.2f}× the variance (median)."
    )
    return write_summary(files["summary.json"], verdict=verdict, figures=[figure], table=files["features.csv"],
                         numbers=numbers, started=started, seed=seed, inputs=[predictions, manifest],
                         extra={"head": head, "test": test})


def _degenerate(files, correct, dim, head, test, alpha, started, seed, inputs) -> dict[str, Any]:
    plt = pyplot()
    table = pd.DataFrame({"feature": np.arange(dim)})
    for col in ("mean_correct", "mean_misclassified", "mean_diff", "var_correct", "var_misclassified", "var_diff",
                "cohens_d", "var_diff_std", "t", "df", "p", "q"):
        table[col] = np.nan
    table["significant"], table["cluster"] = False, -1
    write_table(table, files["features.csv"])
    fig, ax = plt.subplots(figsize=(5, 2))
    ax.axis("off")
    ax.text(0.5, 0.5, f"{int((~correct).sum())} misclassified, {int(correct.sum())} correct: nothing to compare",
            ha="center", va="center")
    figure = save_figure(fig, files["clusters.png"])
    numbers = {"alpha": alpha, "n_features": dim, "n_correct": int(correct.sum()),
               "n_misclassified": int((~correct).sum()), "n_significant": 0, "share_significant": 0.0,
               "clusters": [], "top_features": []}
    verdict = (f"On {test}, {head} has {numbers['n_misclassified']} misclassified and {numbers['n_correct']} correct "
               "samples: too few in one group (< 2) to compare their features.")
    return write_summary(files["summary.json"], verdict=verdict, figures=[figure], table=files["features.csv"],
                         numbers=numbers, started=started, seed=seed, inputs=inputs, extra={"head": head, "test": test})


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Features of correct vs misclassified samples.")
    parser.add_argument("--predictions", required=True, help="results/eval/{head}/{test}/predictions.parquet")
    parser.add_argument("--manifest", required=True, help="results/parquet/{test}.manifest.json")
    parser.add_argument("--out-dir", required=True)
    parser.add_argument("--options", default="{}")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--head-name")
    parser.add_argument("--test-name")
    args = parser.parse_args(argv)
    summary = misclass(predictions=args.predictions, manifest=args.manifest, out_dir=args.out_dir,
                       options=parse_json_arg(args.options, "options"), seed=args.seed,
                       head_name=args.head_name, test_name=args.test_name)
    print(summary["verdict"])


if __name__ == "__main__":
    run_cli(main)
