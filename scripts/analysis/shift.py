"""Test set 1 vs test set 2 feature distributions (covariate shift).

reads the two test splits' features only. Per feature: means, sds, mean difference
(test2 − test1), Cohen's d, variance ratio, Welch t / df / p, Benjamini–Hochberg q,
two-sample KS statistic / p / q. A multivariate two-sample test: a cross-validated
logistic-regression domain classifier (standardise → L2 logistic regression, stratified
K folds) separating test 1 from test 2, with its out-of-fold ROC AUC, a bootstrap interval
and the per-fold AUCs. Figures: volcano (Cohen's d vs −log10 q, and the variance ratios),
histograms of the most shifted features, the domain classifier's ROC curve.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm import tqdm

from scripts.lib.analysis.common import pyplot, save_figure, write_summary, write_table
from scripts.lib.analysis.step import analysis_cli, begin
from scripts.lib.featio.errors import FeatgapError
from scripts.lib.featio.reader import read_split
from scripts.lib.stats import inference

OUTPUTS = {"table": ".csv", "summary": ".json", "volcano_figure": ".png", "top_features_figure": ".png",
                   "roc_figure": ".png"}


# ---------------------------------------------------------------- per-feature tests
def feature_tests(x1: np.ndarray, x2: np.ndarray) -> pd.DataFrame:
    """Per-feature two-sample statistics of test2 vs test1 (x1, x2: (n, d) matrices)."""
    m1, m2 = inference.moments(x1), inference.moments(x2)
    welch = inference.welch_from_moments(m1, m2)
    ks = inference.ks_statistic(x1, x2)
    ks_p = inference.ks_pvalue(ks, m1.n, m2.n)
    with np.errstate(divide="ignore", invalid="ignore"):
        var_ratio = np.where(m1.var > 0, m2.var / m1.var, np.nan)
    return pd.DataFrame({
        "feature": np.arange(x1.shape[1]),
        "mean_test1": m1.mean, "mean_test2": m2.mean,
        "sd_test1": np.sqrt(m1.var), "sd_test2": np.sqrt(m2.var),
        "mean_diff": welch.mean_diff, "cohens_d": inference.cohens_d(m1, m2), "var_ratio": var_ratio,
        "t": welch.t, "df": welch.df, "p": welch.p, "q": inference.bh_q(welch.p),
        "ks": ks, "ks_p": ks_p, "ks_q": inference.bh_q(ks_p),
    })


# ---------------------------------------------------------------- domain classifier
def domain_classifier(x1: np.ndarray, x2: np.ndarray, y1: np.ndarray, y2: np.ndarray, opts: dict,
                      seed: int) -> dict[str, Any]:
    """Cross-validated logistic regression test1 (0) vs test2 (1): out-of-fold AUC and interval."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    m = int(opts["max_rows_per_set"])
    i1 = inference.stratified_subsample(y1, m, seed)
    i2 = inference.stratified_subsample(y2, m, seed + 1)
    x = np.concatenate([x1[i1], x2[i2]]).astype(np.float64)
    y = np.concatenate([np.zeros(len(i1), int), np.ones(len(i2), int)])
    folds = int(opts["folds"])
    if min(len(i1), len(i2)) < folds:
        raise FeatgapError(f"domain classifier: need at least {folds} rows per test set")
    scores = np.empty(len(y))
    fold_auc = []
    cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    for train, test in tqdm(cv.split(x, y), total=folds, desc="domain classifier", unit="fold", leave=False):
        model = make_pipeline(StandardScaler(), LogisticRegression(C=float(opts["C"]), max_iter=2000))
        model.fit(x[train], y[train])
        scores[test] = model.decision_function(x[test])
        fold_auc.append(inference.auc(y[test], scores[test]))
    auc = inference.auc(y, scores)

    def auc_of(idx):
        yy = y[idx]
        return {"auc": inference.auc(yy, scores[idx])} if 0 < yy.sum() < len(yy) else {}

    ci = inference.bootstrap_ci(auc_of, len(y), n_resamples=int(opts["bootstrap"]), seed=seed).get("auc", [auc, auc])
    full = make_pipeline(StandardScaler(), LogisticRegression(C=float(opts["C"]), max_iter=2000)).fit(x, y)
    return {
        "auc": auc, "auc_ci95": ci, "fold_auc": fold_auc, "folds": folds, "C": float(opts["C"]),
        "rows_test1": len(i1), "rows_test2": len(i2),
        "scores": scores, "y": y, "coef": full[-1].coef_[0],
    }


def roc_curve_points(y: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.metrics import roc_curve

    fpr, tpr, _ = roc_curve(y, score)
    return fpr, tpr


# ---------------------------------------------------------------- figures
def plot_volcano(table: pd.DataFrame, alpha: float, path: Path) -> str:
    plt = pyplot()
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    sig = table["q"] < alpha
    y = -np.log10(np.clip(table["q"].to_numpy(), 1e-300, 1.0))
    ax.scatter(table["cohens_d"][~sig], y[~sig], s=8, color="#7f7f7f", label=f"q ≥ {alpha}")
    ax.scatter(table["cohens_d"][sig], y[sig], s=12, color="#c0504d", label=f"q < {alpha} ({int(sig.sum())})")
    ax.axhline(-np.log10(alpha), color="k", lw=0.8, ls="--")
    top = table.assign(y=y).sort_values("q").head(8)
    for row in top[top["q"] < alpha].itertuples():
        ax.annotate(str(row.feature), (row.cohens_d, row.y), fontsize=7, xytext=(3, 2), textcoords="offset points")
    ax.set_xlabel("Cohen's d (test2 − test1)")
    ax.set_ylabel("−log10 BH q (Welch t)")
    ax.set_title("Per-feature mean shift")
    ax.legend(loc="upper left", fontsize=8)
    ratio = np.log2(table["var_ratio"].dropna().to_numpy())
    ax2.hist(ratio, bins=40, color="#4f81bd")
    ax2.axvline(0, color="k", lw=0.8)
    ax2.set_xlabel("log2 variance ratio (test2 / test1)")
    ax2.set_ylabel("features")
    ax2.set_title(f"Spread: median variance ratio {np.exp2(np.median(ratio)):.2f}×")
    return save_figure(fig, path)


def plot_top_features(x1, x2, table: pd.DataFrame, k: int, path: Path) -> str:
    plt = pyplot()
    top = table.sort_values(["q", "feature"]).head(max(k, 1))
    cols = min(3, len(top))
    rows = int(np.ceil(len(top) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 2.6 * rows), squeeze=False)
    for ax, row in zip(axes.ravel(), top.itertuples()):
        j = int(row.feature)
        lo, hi = np.percentile(np.concatenate([x1[:, j], x2[:, j]]), [0.5, 99.5])
        bins = np.linspace(lo, hi, 40)
        ax.hist(x1[:, j], bins=bins, density=True, alpha=0.55, label="test1", color="#4f81bd")
        ax.hist(x2[:, j], bins=bins, density=True, alpha=0.55, label="test2", color="#c0504d")
        ax.set_title(f"feature {j}: d={row.cohens_d:+.2f}, q={row.q:.1e}", fontsize=8)
    for ax in axes.ravel()[len(top):]:
        ax.axis("off")
    axes[0, 0].legend(fontsize=7)
    fig.suptitle("Most shifted features (smallest q)")
    return save_figure(fig, path)


def plot_roc(domain: dict, path: Path) -> str:
    plt = pyplot()
    fpr, tpr = roc_curve_points(domain["y"], domain["scores"])
    fig, ax = plt.subplots(figsize=(4.5, 4.2))
    lo, hi = domain["auc_ci95"]
    ax.plot(fpr, tpr, color="#c0504d", label=f"out-of-fold AUC {domain['auc']:.3f} [{lo:.3f}, {hi:.3f}]")
    ax.plot([0, 1], [0, 1], color="k", lw=0.8, ls="--", label="indistinguishable (0.5)")
    ax.set_xlabel("false positive rate (test1 called test2)")
    ax.set_ylabel("true positive rate")
    ax.set_title(f"Domain classifier, {domain['folds']}-fold CV")
    ax.legend(fontsize=7, loc="lower right")
    return save_figure(fig, path)


# ---------------------------------------------------------------- step: features
def shift_features(*, test1: str | Path, test2: str | Path, outputs: Mapping[str, str | Path], options: dict | None = None,
                   seed: int = 0) -> dict[str, Any]:
    started, opts, files = begin("shift", options, outputs, OUTPUTS)
    alpha = float(opts["alpha"])
    s1 = read_split(test1, features=True, columns=("label",))
    s2 = read_split(test2, features=True, columns=("label",))
    x1, x2 = s1.features, s2.features
    if x1.shape[1] != x2.shape[1]:
        raise FeatgapError(f"{test1} has {x1.shape[1]} features but {test2} has {x2.shape[1]}")
    table = feature_tests(x1, x2)
    min_effect = float(opts["min_effect"])
    table["significant"] = table["q"] < alpha
    # Statistically significant AND at least a small effect: at 50k/10k rows even |d| = 0.03
    # is significant; min_effect separates a material shift from a detectable one.
    table["shifted"] = table["significant"] & (table["cohens_d"].abs() >= min_effect)
    domain = domain_classifier(x1, x2, s1.label.astype(np.int64), s2.label.astype(np.int64), opts["domain"], seed)
    table["domain_coef"] = domain["coef"]
    write_table(table, files["table"])
    figures = [
        plot_volcano(table, alpha, files["volcano_figure"]),
        plot_top_features(x1, x2, table, int(opts["top_features"]), files["top_features_figure"]),
        plot_roc(domain, files["roc_figure"]),
    ]
    sig = table[table["significant"]].sort_values(["q", "feature"])
    n_sig, d = len(sig), table.shape[0]
    shifted = sig[sig["shifted"]]
    ks_sig = int((table["ks_q"] < alpha).sum())
    var_ratio_gmean = float(np.exp(np.mean(np.log(table["var_ratio"].dropna()))))
    lo, hi = domain["auc_ci95"]
    distinguishable = lo > 0.5
    numbers = {
        "alpha": alpha, "n_features": d, "n_test1": len(x1), "n_test2": len(x2),
        "n_significant": n_sig, "share_significant": n_sig / d,
        "significant_features": sig["feature"].head(200).tolist(),
        "min_effect": min_effect, "n_shifted": len(shifted),
        "shifted_features": shifted["feature"].head(200).tolist(),
        "max_abs_cohens_d": float(table["cohens_d"].abs().max()),
        "median_abs_cohens_d": float(table["cohens_d"].abs().median()),
        "mean_abs_cohens_d_significant": float(sig["cohens_d"].abs().mean()) if n_sig else None,
        "n_ks_significant": ks_sig,
        "variance_ratio_geometric_mean": var_ratio_gmean,
        "domain_auc": domain["auc"], "domain_auc_ci95": domain["auc_ci95"], "domain_fold_auc": domain["fold_auc"],
        "domain_rows_test1": domain["rows_test1"], "domain_rows_test2": domain["rows_test2"],
        "domain_folds": domain["folds"], "domain_C": domain["C"],
        "top_features": sig.head(10)[["feature", "cohens_d", "q"]].to_dict(orient="records"),
    }
    mean_part = (f"{n_sig} of {d} features have shifted means (Welch t, BH q < {alpha}"
                 + (f"; {len(shifted)} of them with |Cohen's d| ≥ {min_effect:g}, largest {numbers['max_abs_cohens_d']:.2f})"
                    if n_sig else ")"))
    verdict = (
        ("Test set 2 features differ from test set 1" if (n_sig or distinguishable)
           else "No feature shift detected between the test sets")
        + ": "
        f"{mean_part}, {ks_sig} differ in distribution (KS q < {alpha}), variances are "
        f"{var_ratio_gmean:.2f}× those of test set 1 on average, and a cross-validated domain classifier "
        f"separates the sets with AUC {domain['auc']:.3f} [{lo:.3f}, {hi:.3f}]"
        f"{'' if distinguishable else ' (interval includes 0.5: not distinguishable)'}."
    )
    return write_summary(files["summary"], verdict=verdict, figures=figures, table=files["table"],
                         numbers=numbers, started=started, seed=seed, inputs=[test1, test2])


def main(argv: Sequence[str] | None = None) -> None:
    analysis_cli(
        shift_features,
        description="Feature shift between the test sets: per-feature tests, domain classifier.",
        declared=OUTPUTS,
        inputs={"test1": "test1 manifest", "test2": "test2 manifest"},
        per_head=False,
        argv=argv,
    )


if __name__ == "__main__":
    main()
