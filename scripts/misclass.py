"""Features of correctly classified vs misclassified samples (one head, one test set), and the
comparison of that signature between the two test sets (`compare`).

Reads the test split's features and labels and the `correct` column of evaluate's
predictions.parquet (matched on `row`). Errors depend strongly on the class, and features tell
classes apart, so a raw correct-vs-misclassified comparison mostly finds class features (in a
simulation where errors depend on class only, 4 of 256 features came out "significant"). Every
test is therefore *within class*: the coefficient of "misclassified" in feature ~ misclassified
+ class, with robust (HC1) standard errors (scripts.stats_classes.within_class_effect). Per
feature: raw means and variances (descriptive), within_diff (misclassified − correct, within
class), within-class variances, Cohen's d = within_diff / pooled within-class sd, t, df, p, BH
q, and the unadjusted Welch t / q for contrast. The significant features (q < alpha) are
grouped by k-means in the (Cohen's d, variance difference / pooled variance) plane. Writes
the outputs table, summary, figure.

`compare` reads both test sets' features.csv and asks what the gap question needs: does the
within-class signature of a misclassified image differ between test set 1 and test set 2?
(z test of the two within-class effects per feature, BH q). Writes compare.csv,
summary.json, compare.png.
"""
from __future__ import annotations

import argparse
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
from scipy import stats as sps

from scripts import stats, stats_classes
from scripts.analysis_common import (
    fmt_p,
    mpl_text,
    pyplot,
    save_figure,
    write_summary,
    write_table,
)
from scripts.featio import (
    FeatgapError,
    parse_json_arg,
    read_split,
    run_cli,
)
from scripts.options import merge_options
from scripts.step_outputs import add_output_args, output_paths, parse_outputs
from scripts.threads import add_threads_arg, limit_threads

OUTPUTS = {"table": ".csv", "summary": ".json", "figure": ".png"}


def correct_vs_misclassified(x: np.ndarray, correct: np.ndarray, labels: np.ndarray | None = None) -> pd.DataFrame:
    """Per feature, misclassified vs correct images, tested within class (`labels`; None: all
    images one class, i.e. no adjustment)."""
    if correct.all() or (~correct).all() or correct.sum() < 2 or (~correct).sum() < 2:
        raise FeatgapError("need at least 2 correct and 2 misclassified samples to compare their features")
    labels = np.zeros(len(correct), np.int64) if labels is None else np.asarray(labels)
    mc, mm = stats.moments(x[correct]), stats.moments(x[~correct])
    raw = stats.welch_from_moments(mc, mm)
    within = stats_classes.within_class_effect(x, ~correct, labels)
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
        "t": within["t"], "df": within["df"], "p": within["p"], "q": stats.bh_q(within["p"]),
        "t_unadjusted": raw.t, "q_unadjusted": stats.bh_q(raw.p),
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
             seed: int = 0, head_name: str | None = None, test_name: str | None = None) -> dict[str, Any]:
    started = time.perf_counter()
    opts = merge_options(options, "analysis.misclass")
    alpha = float(opts["alpha"])
    files = output_paths(outputs, OUTPUTS, "misclass")
    head = head_name or Path(predictions).parent.parent.name
    test = test_name or Path(predictions).parent.name
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
        "features). Whether this explains the gap is read from the comparison with the other test set."
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


COMPARE_OUTPUTS = {"table": ".csv", "summary": ".json", "figure": ".png"}


def compare_tables(t1: pd.DataFrame, t2: pd.DataFrame) -> pd.DataFrame:
    """Per feature: the within-class effect of being misclassified on each test set and the z test
    of their difference (independent test sets: the variances add)."""
    if len(t1) != len(t2) or not np.array_equal(t1["feature"], t2["feature"]):
        raise FeatgapError(f"the two features.csv tables disagree: {len(t1)} vs {len(t2)} features")
    b1, b2 = t1["within_diff"].to_numpy(float), t2["within_diff"].to_numpy(float)
    se = np.sqrt(t1["within_se"].to_numpy(float) ** 2 + t2["within_se"].to_numpy(float) ** 2)
    with np.errstate(divide="ignore", invalid="ignore"):
        z = (b2 - b1) / se
    p = np.where(np.isfinite(z), 2 * sps.norm.sf(np.abs(z)), np.nan)
    return pd.DataFrame({"feature": t1["feature"], "within_diff_test1": b1, "within_diff_test2": b2,
                         "q_test1": t1["q"], "q_test2": t2["q"], "difference": b2 - b1, "se": se, "z": z, "p": p,
                         "q": stats.bh_q(p)})


def compare(*, features1: str | Path, features2: str | Path, outputs: Mapping[str, str | Path], options: dict | None = None,
            head_name: str | None = None, seed: int = 0) -> dict[str, Any]:
    started = time.perf_counter()
    opts = merge_options(options, "analysis.misclass")
    alpha = float(opts["alpha"])
    files = output_paths(outputs, COMPARE_OUTPUTS, "misclass compare")
    head = head_name or Path(features1).parent.parent.name
    t1, t2 = pd.read_csv(features1), pd.read_csv(features2)
    need = {"feature", "within_diff", "within_se", "q"}
    for path, table in ((features1, t1), (features2, t2)):
        if not need <= set(table.columns):
            raise FeatgapError(f"{path}: expected columns {sorted(need)} (re-run misclass), found {list(table.columns)}")
    table = compare_tables(t1, t2)
    write_table(table, files["table"])
    valid = table.dropna(subset=["within_diff_test1", "within_diff_test2"])
    rho = stats.spearman(valid["within_diff_test1"], valid["within_diff_test2"])
    d = len(table)
    n1, n2 = int((table["q_test1"] < alpha).sum()), int((table["q_test2"] < alpha).sum())
    n_differ = int((table["q"] < alpha).sum())
    share = n_differ / d if d else 0.0
    evidence = "moderate" if share >= 0.05 else "weak" if n_differ > 0 else "none"
    numbers = {"alpha": alpha, "n_features": d, "n_significant_test1": n1, "n_significant_test2": n2,
               "n_features_differ_between_sets": n_differ, "share_features_differ_between_sets": share,
               "spearman_effects_test1_test2": rho, "evidence": evidence,
               "units": {"z": "images within class on each test set; the two test sets independent"},
               "verdict_rests_on": ["n_features_differ_between_sets", "share_features_differ_between_sets"],
               "top_features": table.reindex(table["z"].abs().sort_values(ascending=False).index).head(10)[
                   ["feature", "within_diff_test1", "within_diff_test2", "z", "q"]].to_dict(orient="records")}
    figure = _plot_compare(table, alpha, f"{head}: within-class effect of being misclassified, test1 vs test2",
                           files["figure"])
    similar = rho["rho"] is not None and np.isfinite(rho["rho"])
    verdict = (
        f"Within class, misclassified images differ from correct ones in {n1} features on test set 1 and {n2} on "
        f"test set 2 (BH q < {alpha})"
        + (f"; agreement of the effects between the sets: Spearman ρ = {rho['rho']:+.2f} ({fmt_p(rho['p'])})"
           if similar else "")
        + f"; {n_differ} of {d} features have a different effect on test set 2 (BH q < {alpha}), so "
        + ("the misclassified images of test set 2 stand out in their own way, which may help explain the gap."
           if n_differ else "no evidence that misclassification on test set 2 has a signature of its own that "
           "would explain the gap.")
    )
    return write_summary(files["summary"], verdict=verdict, figures=[figure], table=files["table"],
                         numbers=numbers, started=started, seed=seed, inputs=[features1, features2],
                         extra={"head": head})


def _plot_compare(table: pd.DataFrame, alpha: float, title: str, path: Path) -> str:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    sig = (table["q"] < alpha).to_numpy()
    ax.scatter(table["within_diff_test1"][~sig], table["within_diff_test2"][~sig], s=6, color="#7f7f7f",
               label=f"same effect (q ≥ {alpha:g})")
    ax.scatter(table["within_diff_test1"][sig], table["within_diff_test2"][sig], s=12, color="#c0504d",
               label=f"different effect ({int(sig.sum())})")
    lim = np.nanmax(np.abs(table[["within_diff_test1", "within_diff_test2"]].to_numpy())) if len(table) else 1.0
    lim = lim if np.isfinite(lim) and lim > 0 else 1.0
    ax.plot([-lim, lim], [-lim, lim], color="k", lw=0.8, ls="--")
    ax.set_xlabel("misclassified − correct on test1 (within class)")
    ax.set_ylabel("misclassified − correct on test2 (within class)")
    ax.legend(fontsize=7)
    ax.set_title(mpl_text(title), fontsize=9)
    return save_figure(fig, path)


def main(argv: Sequence[str] | None = None) -> None:
    import sys

    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["compare"]:
        return compare_main(argv[1:])
    parser = argparse.ArgumentParser(description="Features of correct vs misclassified samples (within class).")
    parser.add_argument("--predictions", required=True, help="results/eval/{head}/{test}/predictions.parquet")
    parser.add_argument("--manifest", required=True, help="results/parquet/{test}.manifest.json")
    add_output_args(parser, OUTPUTS)
    parser.add_argument("--options", default="{}")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--head-name")
    parser.add_argument("--test-name")
    add_threads_arg(parser)
    args = parser.parse_args(argv)
    limit_threads(args.threads)
    summary = misclass(predictions=args.predictions, manifest=args.manifest, outputs=parse_outputs(args.output),
                       options=parse_json_arg(args.options, "options"), seed=args.seed,
                       head_name=args.head_name, test_name=args.test_name)
    print(summary["verdict"])


def compare_main(argv: Sequence[str]) -> None:
    parser = argparse.ArgumentParser(prog="scripts.misclass compare",
                                     description="Within-class misclassification effects, test1 vs test2.")
    parser.add_argument("--features1", required=True, help="results/analysis/misclass/{head}/test1/features.csv")
    parser.add_argument("--features2", required=True, help="results/analysis/misclass/{head}/test2/features.csv")
    add_output_args(parser, COMPARE_OUTPUTS)
    parser.add_argument("--options", default="{}")
    parser.add_argument("--head-name")
    args = parser.parse_args(argv)
    summary = compare(features1=args.features1, features2=args.features2, outputs=parse_outputs(args.output),
                      options=parse_json_arg(args.options, "options"), head_name=args.head_name)
    print(summary["verdict"])


if __name__ == "__main__":
    run_cli(main)
