"""Shared statistics for evaluate and the gap analyses, vectorised over features where it matters.

Every function here is checked against its scipy / scikit-learn reference in tests/test_stats.py
(to 1e-9 where the reference is exact). Conventions:
  * two-sample functions take (a, b) and report b − a (test set 2 minus test set 1, or
    misclassified minus correct), so a positive effect means "larger in the second sample";
  * variances are sample variances (ddof=1);
  * feature matrices are (n, d); moments are accumulated in float64 in row blocks, so a
    float32 matrix is never copied whole into float64.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping

import numpy as np
from scipy import special
from scipy import stats as sps

BLOCK_ROWS = 8192


# ---------------------------------------------------------------- moments
@dataclass
class Moments:
    """Per-column count, mean and sample variance (ddof=1) of a matrix."""

    n: int
    mean: np.ndarray
    var: np.ndarray


def moments(x: np.ndarray, block_rows: int = BLOCK_ROWS) -> Moments:
    """Column means and sample variances in float64 (two passes, blockwise: exact and stable)."""
    x = np.asarray(x)
    if x.ndim == 1:
        x = x[:, None]
    n = x.shape[0]
    if n < 2:
        raise ValueError(f"need at least 2 rows for a variance, got {n}")
    total = np.zeros(x.shape[1])
    for start in range(0, n, block_rows):
        total += x[start : start + block_rows].sum(axis=0, dtype=np.float64)
    mean = total / n
    sq = np.zeros(x.shape[1])
    for start in range(0, n, block_rows):
        diff = x[start : start + block_rows].astype(np.float64) - mean
        sq += np.einsum("ij,ij->j", diff, diff)
    return Moments(n=n, mean=mean, var=sq / (n - 1))


# ---------------------------------------------------------------- two-sample tests per feature
@dataclass
class WelchResult:
    t: np.ndarray
    p: np.ndarray
    df: np.ndarray
    mean_diff: np.ndarray  # b − a


def welch_from_moments(a: Moments, b: Moments) -> WelchResult:
    """Welch's unequal-variance t test of b vs a, per column (scipy ttest_ind(equal_var=False))."""
    va, vb = a.var / a.n, b.var / b.n
    se2 = va + vb
    diff = b.mean - a.mean
    with np.errstate(divide="ignore", invalid="ignore"):
        t = diff / np.sqrt(se2)
        df = se2**2 / (va**2 / (a.n - 1) + vb**2 / (b.n - 1))
    # Constant columns: no evidence of a difference (scipy returns nan; a table wants a number).
    t = np.where(se2 > 0, t, 0.0)
    df = np.where(se2 > 0, df, float(a.n + b.n - 2))
    p = 2.0 * sps.t.sf(np.abs(t), df)
    return WelchResult(t=t, p=p, df=df, mean_diff=diff)


def welch_t(a: np.ndarray, b: np.ndarray) -> WelchResult:
    return welch_from_moments(moments(a), moments(b))


def cohens_d(a: Moments, b: Moments) -> np.ndarray:
    """Standardised mean difference (b − a) / pooled sd (ddof=1 pooled variance)."""
    pooled = ((a.n - 1) * a.var + (b.n - 1) * b.var) / (a.n + b.n - 2)
    with np.errstate(divide="ignore", invalid="ignore"):
        d = (b.mean - a.mean) / np.sqrt(pooled)
    return np.where(pooled > 0, d, 0.0)


def bh_q(p: np.ndarray) -> np.ndarray:
    """Benjamini–Hochberg adjusted p-values (q), as scipy.stats.false_discovery_control(method='bh')."""
    p = np.asarray(p, dtype=np.float64)
    flat = p.ravel()
    m = flat.size
    if m == 0:
        return p.copy()
    order = np.argsort(flat, kind="stable")
    ranked = flat[order] * m / np.arange(1, m + 1)
    ranked = np.minimum.accumulate(ranked[::-1])[::-1]
    q = np.empty(m)
    q[order] = np.clip(ranked, 0.0, 1.0)
    return q.reshape(p.shape)


def ks_statistic(a: np.ndarray, b: np.ndarray, block_cols: int = 64) -> np.ndarray:
    """Two-sample Kolmogorov–Smirnov statistic per column (exact, ties handled as scipy does)."""
    a = np.asarray(a)
    b = np.asarray(b)
    if a.ndim == 1:
        a, b = a[:, None], b[:, None]
    na, nb = a.shape[0], b.shape[0]
    out = np.empty(a.shape[1])
    step = np.concatenate([np.full(na, 1.0 / na), np.full(nb, -1.0 / nb)])
    for start in range(0, a.shape[1], block_cols):
        stop = min(start + block_cols, a.shape[1])
        both = np.concatenate([a[:, start:stop], b[:, start:stop]]).astype(np.float64)
        order = np.argsort(both, axis=0, kind="stable")
        values = np.take_along_axis(both, order, axis=0)
        diff = np.cumsum(step[order], axis=0)
        # Only the last of a run of tied values is a point where both CDFs are evaluated.
        last = np.ones_like(values, dtype=bool)
        last[:-1] = values[1:] != values[:-1]
        out[start:stop] = np.max(np.where(last, np.abs(diff), 0.0), axis=0)
    return np.clip(out, 0.0, 1.0)


def ks_pvalue(d: np.ndarray, na: int, nb: int) -> np.ndarray:
    """Two-sided asymptotic p-value (scipy ks_2samp(method='asymp'))."""
    m, n = sorted([float(na), float(nb)], reverse=True)
    en = np.round(m * n / (m + n))
    return np.clip(sps.kstwo.sf(np.asarray(d, dtype=np.float64), en), 0.0, 1.0)


# ---------------------------------------------------------------- across-class tests (scipy)
def paired_tests(x: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """Paired t and Wilcoxon signed-rank of x − y (e.g. per-class accuracy test1 − test2)."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    diff = x - y
    out = {"n": int(len(diff)), "mean_diff": float(diff.mean()), "median_diff": float(np.median(diff))}
    if len(diff) < 2 or np.all(diff == diff[0]):
        # Degenerate: no spread (scipy would return nan); report it as such.
        out.update(paired_t=float("nan"), paired_t_p=float("nan"), wilcoxon=float("nan"), wilcoxon_p=float("nan"))
        return out
    t = sps.ttest_rel(x, y)
    out.update(paired_t=float(t.statistic), paired_t_p=float(t.pvalue))
    if np.any(diff != 0):
        w = sps.wilcoxon(x, y, zero_method="wilcox")
        out.update(wilcoxon=float(w.statistic), wilcoxon_p=float(w.pvalue))
    else:
        out.update(wilcoxon=float("nan"), wilcoxon_p=1.0)
    return out


def spearman(x: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """Spearman rank correlation with its two-sided p-value (scipy.stats.spearmanr)."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    if len(x) < 3 or np.all(x == x[0]) or np.all(y == y[0]):
        return {"rho": float("nan"), "p": float("nan"), "n": int(len(x))}
    res = sps.spearmanr(x, y)
    return {"rho": float(res.statistic), "p": float(res.pvalue), "n": int(len(x))}


# ---------------------------------------------------------------- classification metrics
def auc(y: np.ndarray, score: np.ndarray) -> float:
    """ROC AUC via the Mann–Whitney rank sum (ties count one half), as sklearn roc_auc_score."""
    y = np.asarray(y).astype(bool)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError("AUC needs both classes")
    ranks = sps.rankdata(score)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def log_softmax(logits: np.ndarray) -> np.ndarray:
    logits = np.asarray(logits, dtype=np.float64)
    return logits - special.logsumexp(logits, axis=1, keepdims=True)


def ece_bins(confidence: np.ndarray, n_bins: int = 15) -> np.ndarray:
    """Equal-width bin index of each confidence: bin 0 is [0, 1/B], bin k is (k/B, (k+1)/B]
    (the sklearn.calibration.calibration_curve 'uniform' convention)."""
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    return np.searchsorted(edges[1:-1], np.asarray(confidence, dtype=np.float64), side="left")


def ece(confidence: np.ndarray, correct: np.ndarray, n_bins: int = 15) -> float:
    """Expected calibration error: Σ_bins (n_b / n) · |accuracy_b − mean confidence_b|."""
    conf = np.asarray(confidence, dtype=np.float64)
    corr = np.asarray(correct, dtype=np.float64)
    bins = ece_bins(conf, n_bins)
    return _ece_from_bins(bins, conf, corr, n_bins, len(conf))


def _ece_from_bins(bins, conf, corr, n_bins, n) -> float:
    gap = np.bincount(bins, weights=corr, minlength=n_bins) - np.bincount(bins, weights=conf, minlength=n_bins)
    return float(np.abs(gap).sum() / n)


def classification_metrics(
    label: np.ndarray,
    pred: np.ndarray,
    top5_hit: np.ndarray,
    nll: np.ndarray,
    confidence: np.ndarray,
    num_classes: int,
    n_bins: int = 15,
    conf_bins: np.ndarray | None = None,
) -> dict[str, float]:
    """Top-1/top-5, balanced accuracy, macro precision/recall/F1, NLL and ECE of one sample.

    Macro averages run over the classes present in `label` or `pred` (scikit-learn's default
    label set; zero_division=0). Balanced accuracy is the mean recall over classes in `label`.
    """
    label = np.asarray(label, dtype=np.int64)
    pred = np.asarray(pred, dtype=np.int64)
    n = len(label)
    correct = label == pred
    true_n = np.bincount(label, minlength=num_classes).astype(np.float64)
    pred_n = np.bincount(pred, minlength=num_classes).astype(np.float64)
    tp = np.bincount(label, weights=correct, minlength=num_classes)
    present = (true_n > 0) | (pred_n > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        recall = np.where(true_n > 0, tp / true_n, 0.0)
        precision = np.where(pred_n > 0, tp / pred_n, 0.0)
        denom = precision + recall
        f1 = np.where(denom > 0, 2 * precision * recall / denom, 0.0)
    bins = ece_bins(confidence, n_bins) if conf_bins is None else conf_bins
    return {
        "top1": float(correct.mean()),
        "top5": float(np.mean(top5_hit)),
        "balanced_accuracy": float(recall[true_n > 0].mean()),
        "macro_precision": float(precision[present].mean()),
        "macro_recall": float(recall[present].mean()),
        "macro_f1": float(f1[present].mean()),
        "nll": float(np.mean(nll)),
        "ece": _ece_from_bins(bins, np.asarray(confidence, np.float64), correct.astype(np.float64), n_bins, n),
    }


# ---------------------------------------------------------------- bootstrap
def bootstrap_ci(
    statistic: Callable[[np.ndarray], Mapping[str, float]],
    n: int,
    *,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    progress: bool = False,
) -> dict[str, list[float]]:
    """Percentile bootstrap intervals of every value `statistic(indices)` returns.

    `statistic` receives an index array (a resample of range(n), with replacement) and returns a
    dict of named scalars; the result maps each name to [low, high]. Seeded: same seed, same
    intervals.
    """
    if n_resamples <= 0:
        return {}
    rng = np.random.default_rng(seed)
    draws: dict[str, list[float]] = {}
    iterator = range(n_resamples)
    if progress:
        from tqdm import tqdm

        iterator = tqdm(iterator, desc="bootstrap", unit="resample", leave=False)
    for _ in iterator:
        idx = rng.integers(0, n, n)
        for key, value in statistic(idx).items():
            draws.setdefault(key, []).append(value)
    alpha = (1.0 - confidence) / 2.0
    return {
        key: [float(np.quantile(vals, alpha)), float(np.quantile(vals, 1.0 - alpha))]
        for key, vals in draws.items()
    }
