"""Test set 1 vs test set 2 feature distributions (covariate shift), and an adaptation check.

Two sub-steps (CLI: python -m scripts.shift {features,adapt} ...):

features  reads the two test splits' features only. Per feature: means, sds, mean difference
          (test2 − test1), Cohen's d, variance ratio, Welch t / df / p, Benjamini–Hochberg q,
          two-sample KS statistic / p / q. A multivariate two-sample test: a cross-validated
          logistic-regression domain classifier (standardise → L2 logistic regression, stratified
          K folds) separating test 1 from test 2, with its out-of-fold ROC AUC, a bootstrap interval
          and the per-fold AUCs. Figures: volcano (Cohen's d vs −log10 q, and the variance ratios),
          histograms of the most shifted features, the domain classifier's ROC curve.
adapt     (per head) re-standardises each test set with its own feature mean (and std) in place
          of the training mean/std stored in the head, and reports how top-1 moves: does matching
          the first moments close the gap?
"""
from __future__ import annotations

import argparse
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm import tqdm

from scripts import evidence, stats
from scripts.analysis_common import (
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

FEATURES_OUTPUTS = {"table": ".csv", "summary": ".json", "volcano_figure": ".png", "top_features_figure": ".png",
                   "roc_figure": ".png"}
ADAPT_OUTPUTS = {"table": ".csv", "summary": ".json", "figure": ".png"}


# ---------------------------------------------------------------- per-feature tests
def feature_tests(x1: np.ndarray, x2: np.ndarray) -> pd.DataFrame:
    """Per-feature two-sample statistics of test2 vs test1 (x1, x2: (n, d) matrices)."""
    m1, m2 = stats.moments(x1), stats.moments(x2)
    welch = stats.welch_from_moments(m1, m2)
    ks = stats.ks_statistic(x1, x2)
    ks_p = stats.ks_pvalue(ks, m1.n, m2.n)
    with np.errstate(divide="ignore", invalid="ignore"):
        var_ratio = np.where(m1.var > 0, m2.var / m1.var, np.nan)
    return pd.DataFrame({
        "feature": np.arange(x1.shape[1]),
        "mean_test1": m1.mean, "mean_test2": m2.mean,
        "sd_test1": np.sqrt(m1.var), "sd_test2": np.sqrt(m2.var),
        "mean_diff": welch.mean_diff, "cohens_d": stats.cohens_d(m1, m2), "var_ratio": var_ratio,
        "t": welch.t, "df": welch.df, "p": welch.p, "q": stats.bh_q(welch.p),
        "ks": ks, "ks_p": ks_p, "ks_q": stats.bh_q(ks_p),
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
    i1 = stats.stratified_subsample(y1, m, seed)
    i2 = stats.stratified_subsample(y2, m, seed + 1)
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
        fold_auc.append(stats.auc(y[test], scores[test]))
    auc = stats.auc(y, scores)

    def auc_of(idx):
        yy = y[idx]
        return {"auc": stats.auc(yy, scores[idx])} if 0 < yy.sum() < len(yy) else {}

    ci = stats.bootstrap_ci(auc_of, len(y), n_resamples=int(opts["bootstrap"]), seed=seed).get("auc", [auc, auc])
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
    started = time.perf_counter()
    opts = merge_options(options, "analysis.shift")
    alpha = float(opts["alpha"])
    files = output_paths(outputs, FEATURES_OUTPUTS, "shift features")
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


# ---------------------------------------------------------------- step: adapt
def _own_moments(head, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std of x as the head sees it before standardisation (after L2 norm if it uses it)."""
    if head.l2_normalize:
        x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    m = stats.moments(x)
    return m.mean.astype(np.float32), np.sqrt(m.var).astype(np.float32)


def adapt(*, head_path: str | Path, test1: str | Path, test2: str | Path, outputs: Mapping[str, str | Path],
          options: dict | None = None, seed: int = 0, head_name: str | None = None) -> dict[str, Any]:
    """Top-1 of a head with the stored train standardisation vs each test set's own moments."""
    import torch

    from scripts.heads import load_checkpoint, load_head, predict_logits

    started = time.perf_counter()
    opts = merge_options(options, "analysis.shift_adapt")
    files = output_paths(outputs, ADAPT_OUTPUTS, "shift adapt")
    head_name = head_name or Path(head_path).parent.name
    ckpt = load_checkpoint(head_path)
    base = load_head(ckpt)
    train_std = base.std.numpy().astype(np.float32)
    data = {t: read_split(p, features=True, columns=("label",)) for t, p in
            (("test1", test1), ("test2", test2))}
    rows, correct = [], {}
    set_means = {t: _own_moments(base, split.features)[0] for t, split in data.items()}
    for test, split in data.items():
        y = split.label.astype(np.int64)
        if y.max() >= base.num_classes:
            raise FeatgapError(f"{test}: labels exceed the head's {base.num_classes} classes")
        own_mean, own_std = _own_moments(base, split.features)
        variants = {
            "train": (ckpt["mean"], ckpt["std"]),
            "own_mean": (torch.from_numpy(own_mean), torch.from_numpy(train_std)),
            "own_mean_std": (torch.from_numpy(own_mean), torch.from_numpy(np.maximum(own_std, 1e-12))),
        }
        if test == "test2":
            # The counterfactual of mean_shift: test set 2 moved onto test set 1's mean, i.e. the
            # test1 → test2 difference of means taken away (the head then sees x − (m2 − m1)).
            moved = ckpt["mean"].numpy() + (set_means["test2"] - set_means["test1"])
            variants["test1_mean"] = (torch.from_numpy(moved.astype(np.float32)), ckpt["std"])
        for variant, (mean, std) in variants.items():
            head = load_head({**ckpt, "mean": mean, "std": std})
            hit, nll = np.empty(len(y), bool), np.empty(len(y))
            step = int(opts["batch_size"])
            for start in range(0, len(y), step):  # one batch of logits in memory at a time
                sl = slice(start, start + step)
                logits = predict_logits(head, split.features[sl], batch_size=step)
                hit[sl] = logits.argmax(1) == y[sl]
                nll[sl] = -stats.log_softmax(logits)[np.arange(len(logits)), y[sl]]
            correct[(test, variant)] = hit
            rows.append({"test": test, "standardisation": variant, "n": len(y), "top1": float(hit.mean()),
                         "nll": float(nll.mean())})
    table = pd.DataFrame(rows)
    acc = {(r["test"], r["standardisation"]): r["top1"] for r in rows}

    def change_ci(test: str, variant: str, k: int) -> list[float]:
        diff = correct[(test, variant)].astype(float) - correct[(test, "train")].astype(float)
        return stats.bootstrap_ci(lambda idx: {"d": diff[idx].mean()}, len(diff),
                                  n_resamples=int(opts["bootstrap"]), seed=seed + k).get("d", [np.nan, np.nan])

    numbers: dict[str, Any] = {"head": head_name}
    gap_before = acc[("test1", "train")] - acc[("test2", "train")]
    numbers["gap_train_standardisation"] = gap_before
    for k, variant in enumerate(("own_mean", "own_mean_std")):
        for j, test in enumerate(("test1", "test2")):
            numbers[f"{test}_{variant}_change"] = acc[(test, variant)] - acc[(test, "train")]
            numbers[f"{test}_{variant}_change_ci95"] = change_ci(test, variant, 2 * k + j)
        gap = acc[("test1", variant)] - acc[("test2", variant)]
        numbers[f"gap_{variant}"] = gap
        # Only test 2 adapted, test 1 as it is: the fairest reading of "does it close the gap".
        gap2 = acc[("test1", "train")] - acc[("test2", variant)]
        numbers[f"gap_{variant}_test2_only"] = gap2
        numbers[f"gap_closed_share_{variant}"] = (gap_before - gap2) / gap_before if gap_before > 0 else None
    for key, value in acc.items():
        numbers[f"top1_{key[0]}_{key[1]}"] = value
    write_table(table, files["table"])
    figure = plot_adaptation(table[table["standardisation"] != "test1_mean"], head_name, files["figure"])
    labels = {t: split.label.astype(np.int64) for t, split in data.items()}
    reweighted = domain_reweighted_accuracy(data["test1"].features, data["test2"].features, labels["test1"],
                                            labels["test2"], correct[("test1", "train")], seed)
    numbers["domain_within_class"] = reweighted
    block = mean_shift_evidence(correct, labels, reweighted, int(opts["bootstrap"]), seed)
    ch = numbers["test2_own_mean_std_change"]
    lo, hi = numbers["test2_own_mean_std_change_ci95"]
    closed = numbers["gap_closed_share_own_mean_std"]
    moved = not (lo <= 0 <= hi)
    verdict = (
        f"Re-standardising test set 2 with its own feature mean/std changes {head_name}'s top-1 by "
        f"{ch:+.2%} [{lo:+.2%}, {hi:+.2%}]{'' if moved else ' (not significant)'} "
        f"({acc[('test2', 'train')]:.2%} → {acc[('test2', 'own_mean_std')]:.2%}; re-centring only: "
        f"{numbers['test2_own_mean_change']:+.2%}); the gap to test set 1 goes from {gap_before:.2%} to "
        f"{numbers['gap_own_mean_std_test2_only']:.2%}"
        + ("." if closed is None else
           f", so matching the first moments closes {closed:.0%} of the gap." if closed >= 0.005 else
           f", so matching the first moments does not close the gap ({closed:+.0%}).")
    )
    return write_summary(files["summary"], verdict=verdict, figures=[figure], table=files["table"],
                         numbers=numbers, started=started, seed=seed, inputs=[head_path, test1, test2],
                         extra={"head": head_name, "evidence": block})


def class_centred(x: np.ndarray, labels: np.ndarray, means: dict[int, np.ndarray] | None = None) -> np.ndarray:
    """Rows minus the mean of their class (pooled over both sets when `means` is given), so a
    domain classifier cannot use what tells classes apart, only how the sets differ within a class."""
    out = np.asarray(x, dtype=np.float64).copy()
    for c in np.unique(labels):
        rows = labels == c
        out[rows] -= means[c] if means is not None else out[rows].mean(axis=0)
    return out


def domain_reweighted_accuracy(x1: np.ndarray, x2: np.ndarray, y1: np.ndarray, y2: np.ndarray,
                               correct1: np.ndarray, seed: int, folds: int = 5, max_rows: int = 20000) -> dict:
    """A linear domain classifier fitted within class (features centred on each class's pooled
    mean), cross-fitted; test-1 accuracy re-weighted by its out-of-fold odds p(test2 | x) /
    p(test1 | x), i.e. test set 1 made to look like test set 2 along the directions the sets
    differ in. The drop from test-1 accuracy to the re-weighted one is the part of the gap
    that covariate shift along those directions accounts for."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    i1 = stats.stratified_subsample(y1, max_rows, seed)
    pooled = {c: np.concatenate([x1[y1 == c], x2[y2 == c]]).astype(np.float64).mean(axis=0) for c in np.unique(y1)}
    z1, z2 = class_centred(x1[i1], y1[i1], pooled), class_centred(x2, y2, pooled)
    x = np.concatenate([z1, z2])
    d = np.concatenate([np.zeros(len(z1), int), np.ones(len(z2), int)])
    prob = np.empty(len(d))
    for train, test in StratifiedKFold(folds, shuffle=True, random_state=seed).split(x, d):
        model = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=2000)).fit(x[train], d[train])
        prob[test] = model.predict_proba(x[test])[:, 1]
    odds = np.clip(prob[: len(z1)], 1e-6, 1 - 1e-6)
    weights = odds / (1 - odds)
    hit = correct1[i1].astype(float)
    acc_rw = float(np.sum(weights * hit) / np.sum(weights))
    ess = float(weights.sum() ** 2 / np.sum(weights**2))
    return {"auc_within_class": stats.auc(d, prob), "test1_top1": float(hit.mean()), "test1_top1_reweighted": acc_rw,
            "share_points": 100 * (float(hit.mean()) - acc_rw), "effective_sample_size": ess,
            "rows_test1": len(i1), "rows_test2": len(z2)}


def mean_shift_evidence(correct: dict, labels: dict, reweighted: dict, n_boot: int, seed: int) -> dict[str, Any]:
    """mean_shift: points of the gap recovered when test set 2 is moved onto test set 1's feature
    mean (the head unchanged). Interval: classes resampled (paired per-image differences)."""
    c1 = correct[("test1", "train")].astype(float)
    before, after = correct[("test2", "train")].astype(float), correct[("test2", "test1_mean")].astype(float)
    points = 100 * float(after.mean() - before.mean())
    gap = 100 * float(c1.mean() - before.mean())
    ci = evidence.class_bootstrap(lambda i1, i2: 100 * float(after[i2].mean() - before[i2].mean()),
                                  labels["test1"], labels["test2"], n_boot=max(n_boot, 100), seed=seed)
    sentence = (f"Moving test set 2 onto test set 1's feature mean recovers {points:.1f} of the {gap:.1f} points "
                f"(95% interval {ci[0]:.1f} to {ci[1]:.1f}, classes resampled); test set 1 re-weighted by a "
                f"within-class domain classifier's odds (AUC {reweighted['auc_within_class']:.2f}) loses "
                f"{reweighted['share_points']:.1f} points")
    sentence += "." if ci[0] > 0 else ": no evidence that a shift of the feature means explains the gap."
    return evidence.block("mean_shift", points, ci, gap_points=gap, sentence=sentence, unit="classes resampled",
                          reweighted_share_points=reweighted["share_points"])


def plot_adaptation(table: pd.DataFrame, head_name: str, path: Path) -> str:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.6))
    variants = ["train", "own_mean", "own_mean_std"]
    labels = {"train": "train mean/std (as trained)", "own_mean": "own mean, train std", "own_mean_std": "own mean/std"}
    width = 0.27
    for i, variant in enumerate(variants):
        sub = table[table["standardisation"] == variant].set_index("test").loc[["test1", "test2"]]
        bars = ax.bar(np.arange(2) + (i - 1) * width, sub["top1"], width, label=labels[variant])
        for bar, v in zip(bars, sub["top1"]):
            ax.text(bar.get_x() + bar.get_width() / 2, v, f"{v:.1%}", ha="center", va="bottom", fontsize=7)
    ax.set_xticks(np.arange(2), ["test1", "test2"])
    ax.set_ylabel("top-1 accuracy")
    low = float(table["top1"].min())
    ax.set_ylim(max(0.0, low - 0.1), min(1.0, float(table["top1"].max()) + 0.06))
    ax.set_title(f"{head_name}: standardisation by each test set's own moments")
    ax.legend(fontsize=7, loc="lower left")
    return save_figure(fig, path)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Feature shift between the test sets; adaptation check.")
    sub = parser.add_subparsers(dest="cmd", required=True)
    feat = sub.add_parser("features", help="per-feature tests + domain classifier")
    ad = sub.add_parser("adapt", help="re-standardise each test set with its own moments (one head)")
    ad.add_argument("--model", required=True, help="results/heads/{head}/model.pt")
    ad.add_argument("--head-name")
    for p, outputs in ((feat, FEATURES_OUTPUTS), (ad, ADAPT_OUTPUTS)):
        p.add_argument("--test1", required=True, help="test1 manifest")
        p.add_argument("--test2", required=True, help="test2 manifest")
        add_output_args(p, outputs)
        p.add_argument("--options", default="{}")
        p.add_argument("--seed", type=int, default=0)
        add_threads_arg(p)
    args = parser.parse_args(argv)
    limit_threads(args.threads)
    opts, outputs = parse_json_arg(args.options, "options"), parse_outputs(args.output)
    if args.cmd == "features":
        summary = shift_features(test1=args.test1, test2=args.test2, outputs=outputs, options=opts, seed=args.seed)
    else:
        summary = adapt(head_path=args.model, test1=args.test1, test2=args.test2, outputs=outputs, options=opts,
                        seed=args.seed, head_name=args.head_name)
    print(summary["verdict"])


if __name__ == "__main__":
    run_cli(main)
