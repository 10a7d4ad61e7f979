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

from collections.abc import Callable, Mapping
from dataclasses import dataclass

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
    """Welch's unequal-variance t test of b vs a, per column (scipy ttest_ind(equal_var=False)).

    Columns with no variance in either sample follow scipy: two different constants are
    perfectly separated (t = ±inf, p = 0); the same constant in both has no test (t, p = NaN),
    and `bh_q` leaves such NaN p-values out of its count, as R's p.adjust does. (Reading them as
    t = 0, p = 1 called a perfect separation "no difference" and inflated BH's m.)
    """
    va, vb = a.var / a.n, b.var / b.n
    se2 = va + vb
    diff = b.mean - a.mean
    with np.errstate(divide="ignore", invalid="ignore"):
        t = diff / np.sqrt(se2)
        df = se2**2 / (va**2 / (a.n - 1) + vb**2 / (b.n - 1))
        p = 2.0 * sps.t.sf(np.abs(t), df)
    spread = se2 > 0
    separated = ~spread & (diff != 0)
    with np.errstate(invalid="ignore"):  # sign(0) · inf is NaN, which is the answer for equal constants
        t = np.where(spread, t, np.where(separated, np.sign(diff) * np.inf, np.nan))
    df = np.where(spread, df, np.nan)
    p = np.where(spread, p, np.where(separated, 0.0, np.nan))
    return WelchResult(t=t, p=p, df=df, mean_diff=diff)


def welch_t(a: np.ndarray, b: np.ndarray) -> WelchResult:
    return welch_from_moments(moments(a), moments(b))


def cohens_d(a: Moments, b: Moments) -> np.ndarray:
    """Standardised mean difference (b − a) / pooled sd (ddof=1 pooled variance).

    No pooled variance: ±inf for two different constants, NaN for the same constant (as welch_t)."""
    pooled = ((a.n - 1) * a.var + (b.n - 1) * b.var) / (a.n + b.n - 2)
    diff = b.mean - a.mean
    with np.errstate(divide="ignore", invalid="ignore"):
        d = diff / np.sqrt(pooled)
        return np.where(pooled > 0, d, np.where(diff != 0, np.sign(diff) * np.inf, np.nan))


def bh_q(p: np.ndarray) -> np.ndarray:
    """Benjamini–Hochberg adjusted p-values (q), as scipy.stats.false_discovery_control(method='bh').

    NaN p-values (no test possible) stay NaN and are not counted in m, as in R's
    p.adjust(method = "BH"); otherwise one NaN would turn every q into NaN.
    """
    p = np.asarray(p, dtype=np.float64)
    flat = p.ravel()
    q = np.full(flat.size, np.nan)
    valid = np.flatnonzero(~np.isnan(flat))
    m = valid.size
    if m == 0:
        return q.reshape(p.shape)
    order = np.argsort(flat[valid], kind="stable")
    ranked = flat[valid][order] * m / np.arange(1, m + 1)
    ranked = np.minimum.accumulate(ranked[::-1])[::-1]
    q[valid[order]] = np.clip(ranked, 0.0, 1.0)
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


# Exact two-sample KS p-values up to this na·nb (a lattice-path count over the na × nb grid):
# the asymptotic distribution is far off at small n (10 vs 8 separated values: 3e-64 vs 4.6e-5).
KS_EXACT_MAX_CELLS = 250_000


def ks_pvalue(d: np.ndarray, na: int, nb: int, method: str = "auto") -> np.ndarray:
    """Two-sided p-value of the two-sample KS statistic: exact (scipy ks_2samp(method='exact'))
    when na·nb ≤ KS_EXACT_MAX_CELLS or method='exact', else asymptotic (method='asymp')."""
    d = np.asarray(d, dtype=np.float64)
    if method == "exact" or (method == "auto" and na * nb <= KS_EXACT_MAX_CELLS):
        return ks_exact_pvalue(d, int(na), int(nb))
    m, n = sorted([float(na), float(nb)], reverse=True)
    en = np.round(m * n / (m + n))
    return np.clip(sps.kstwo.sf(d, en), 0.0, 1.0)


def ks_exact_pvalue(d: np.ndarray, na: int, nb: int) -> np.ndarray:
    """P(D ≥ d) under H0, exactly: the share of the C(na+nb, na) orderings whose empirical-CDF
    path leaves the band |i/na − j/nb| < d. Computed as the probability v(i, j) that a uniformly
    random path to (i, j) stayed inside, v(i, j) = i/(i+j)·v(i−1, j) + j/(i+j)·v(i, j−1), one
    anti-diagonal at a time, vectorised over the distinct statistics (no huge binomials)."""
    d = np.asarray(d, dtype=np.float64)
    # D is a multiple of 1/(na·nb): compare integers, |i·nb − j·na| < h, to avoid float ties.
    h_all = np.round(np.nan_to_num(d, nan=0.0) * na * nb).astype(np.int64)
    levels, inverse = np.unique(h_all, return_inverse=True)
    i = np.arange(na + 1)
    prev = np.zeros((len(levels), na + 1))
    prev[:, 0] = 1.0  # v(0, 0)
    for s in range(1, na + nb + 1):
        j = s - i
        valid = (j >= 0) & (j <= nb)
        inside = valid & (np.abs(i * nb - j * na)[None, :] < levels[:, None])
        from_left = np.zeros_like(prev)
        from_left[:, 1:] = prev[:, :-1] * (i[1:] / s)  # v(i−1, j)
        cur = from_left + prev * (np.clip(j, 0, None) / s)  # v(i, j−1)
        prev = np.where(inside, cur, 0.0)
    p = np.clip(1.0 - prev[:, na], 0.0, 1.0)[inverse].reshape(d.shape)
    return np.where(np.isnan(d), np.nan, p)


# ---------------------------------------------------------------- across-class tests (scipy)
# Differences of accuracies k/n are exact fractions blurred by float rounding (0.9 − 0.8 ≠
# 0.8 − 0.7): rounding to this many decimals makes equal differences tie exactly before ranking.
DIFF_DECIMALS = 12


def paired_tests(x: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """Paired t and Wilcoxon signed-rank of x − y, with classes (or pairs) as the unit.

    Differences are rounded to DIFF_DECIMALS so float noise neither breaks ties (Wilcoxon's
    exact conditional p for small n needs them) nor fakes a spread: differences that are
    essentially constant (spread ≤ 1e-12) give no t test (NaN; R: "data are essentially
    constant"), instead of t = 1e15. Not valid for per-class accuracies from unequal numbers
    of images per set (50 vs 10): the Wilcoxon statistic then rejects far too often (see
    scripts.lib.stats.clustered and docs/statistics.md); the paired t holds its level there.
    """
    x, y = np.asarray(x, float), np.asarray(y, float)
    diff = np.round(x - y, DIFF_DECIMALS)
    n = len(diff)
    out = {"n": n, "mean_diff": float(diff.mean()) if n else float("nan"),
           "median_diff": float(np.median(diff)) if n else float("nan")}
    constant = n < 2 or float(np.ptp(diff)) <= 10.0**-DIFF_DECIMALS
    out["constant_difference"] = bool(constant)
    if constant:
        out.update(paired_t=float("nan"), paired_t_p=float("nan"))
    else:
        t = sps.ttest_1samp(diff, 0.0)  # = ttest_rel(x, y), on the rounded differences
        out.update(paired_t=float(t.statistic), paired_t_p=float(t.pvalue))
    if n and np.any(diff != 0):
        w = sps.wilcoxon(diff, zero_method="wilcox")
        out.update(wilcoxon=float(w.statistic), wilcoxon_p=float(w.pvalue))
    else:
        out.update(wilcoxon=float("nan"), wilcoxon_p=float("nan") if n < 2 else 1.0)
    return out


def spearman(x: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """Spearman rank correlation with its two-sided p-value (scipy.stats.spearmanr)."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    if len(x) < 3 or np.all(x == x[0]) or np.all(y == y[0]):
        return {"rho": float("nan"), "p": float("nan"), "n": len(x)}
    res = sps.spearmanr(x, y)
    return {"rho": float(res.statistic), "p": float(res.pvalue), "n": len(x)}


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


def equal_mass_bins(confidence: np.ndarray, n_bins: int = 15) -> np.ndarray:
    """Bin index by rank of confidence: B bins of (almost) equal size, ties in confidence kept
    in one bin order by a stable sort. With a good head most confidences are near 1, so equal
    widths leave a few huge bins and many tiny ones whose noise dominates the ECE."""
    conf = np.asarray(confidence, dtype=np.float64)
    rank = np.empty(len(conf), np.int64)
    rank[np.argsort(conf, kind="stable")] = np.arange(len(conf))
    return (rank * n_bins) // max(len(conf), 1)


def ece(confidence: np.ndarray, correct: np.ndarray, n_bins: int = 15) -> float:
    """Plug-in expected calibration error with equal-width bins: Σ_bins (n_b / n) · |accuracy_b −
    mean confidence_b| (the textbook estimate; biased upwards, more so at small n)."""
    conf = np.asarray(confidence, dtype=np.float64)
    corr = np.asarray(correct, dtype=np.float64)
    bins = ece_bins(conf, n_bins)
    return _ece_from_bins(bins, conf, corr, n_bins, len(conf))


def _ece_from_bins(bins, conf, corr, n_bins, n) -> float:
    gap = np.bincount(bins, weights=corr, minlength=n_bins) - np.bincount(bins, weights=conf, minlength=n_bins)
    return float(np.abs(gap).sum() / n)


def ece_noise_floor(confidence: np.ndarray, bins: np.ndarray, n_bins: int, *, n_sim: int = 200,
                    seed: int = 0) -> np.ndarray:
    """Plug-in ECE of `n_sim` outcomes drawn from a perfectly calibrated model with these very
    confidences and bins (correct ~ Bernoulli(confidence)): what the estimate reads at this n
    when there is nothing to find (0.003 at 50k, 0.02 at 1k with 15 equal-width bins)."""
    conf = np.asarray(confidence, dtype=np.float64)
    rng = np.random.default_rng([seed, 15])
    out = np.empty(n_sim)
    conf_sum = np.bincount(bins, weights=conf, minlength=n_bins)
    for r in range(n_sim):
        hits = np.bincount(bins, weights=(rng.random(len(conf)) < conf).astype(np.float64), minlength=n_bins)
        out[r] = np.abs(hits - conf_sum).sum() / len(conf)
    return out


def calibration(confidence: np.ndarray, correct: np.ndarray, n_bins: int = 15, *, n_sim: int = 200,
                seed: int = 0) -> dict[str, float]:
    """Debiased ECE and what it rests on.

    ece               equal-mass-bin plug-in ECE minus its mean under perfect calibration at
                      this n (ece_calibrated_floor): ≈ 0 for a calibrated model at any n, so test
                      sets of different sizes compare; ≤ 0 means "no detectable miscalibration".
                      (Subtracting the whole floor slightly under-states a large miscalibration.)
    ece_plugin        the equal-mass-bin plug-in estimate
    ece_calibrated_floor / ece_calibrated_p   mean of the calibrated simulations / share of them
                      at least as large as ece_plugin (a test of calibration at this n)
    ece_equal_width   the textbook 15-equal-width-bin plug-in ECE, for comparison with papers
    """
    conf = np.asarray(confidence, dtype=np.float64)
    corr = np.asarray(correct, dtype=np.float64)
    bins = equal_mass_bins(conf, n_bins)
    plugin = _ece_from_bins(bins, conf, corr, n_bins, len(conf))
    floor = ece_noise_floor(conf, bins, n_bins, n_sim=n_sim, seed=seed)
    return {"ece": plugin - float(floor.mean()), "ece_plugin": plugin, "ece_calibrated_floor": float(floor.mean()),
            "ece_calibrated_p": float((1 + np.sum(floor >= plugin)) / (n_sim + 1)),
            "ece_equal_width": ece(conf, corr, n_bins)}


def classification_metrics(
    label: np.ndarray,
    pred: np.ndarray,
    top5_hit: np.ndarray,
    nll: np.ndarray,
    confidence: np.ndarray,
    num_classes: int,
    n_bins: int = 15,
    conf_bins: np.ndarray | None = None,
    ece_floor: float = 0.0,
) -> dict[str, float]:
    """Top-1/top-5, balanced accuracy, macro precision/recall/F1, NLL and ECE of one sample.

    ECE uses `conf_bins` (default: equal-width bins of `confidence`) and subtracts `ece_floor`,
    the plug-in ECE expected under perfect calibration (see `calibration`); 0 gives the plug-in.

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
        "ece": _ece_from_bins(bins, np.asarray(confidence, np.float64), correct.astype(np.float64), n_bins, n)
        - ece_floor,
    }


# ---------------------------------------------------------------- bootstrap
def stratified_resampler(strata: np.ndarray) -> Callable[[np.random.Generator], np.ndarray]:
    """Draws of a bootstrap that resamples rows with replacement *within* each stratum (class):
    the test sets are stratified by class, so every resample keeps each class's size and a macro
    average never loses or doubles a class."""
    strata = np.asarray(strata)
    order = np.argsort(strata, kind="stable")
    _, start, size = np.unique(strata[order], return_index=True, return_counts=True)
    first = np.repeat(start, size)
    width = np.repeat(size, size)

    def draw(rng: np.random.Generator) -> np.ndarray:
        return order[first + (rng.random(len(order)) * width).astype(np.int64)]

    return draw


def bootstrap_ci(
    statistic: Callable[[np.ndarray], Mapping[str, float]],
    n: int,
    *,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    progress: bool = False,
    strata: np.ndarray | None = None,
    point: Mapping[str, float] | None = None,
) -> dict[str, list[float]]:
    """Bootstrap intervals of every value `statistic(indices)` returns.

    `statistic` receives an index array (a resample of range(n), with replacement; within each
    stratum when `strata` is given) and returns a dict of named scalars; the result maps each
    name to [low, high]. Without `point`: percentile intervals. With `point` (the estimates on
    the full sample): bias-corrected (BC) percentile intervals, whose correction z0 = Φ⁻¹(share
    of draws below the estimate) is capped at ±z_(1−α/2), and every interval contains its point
    estimate (a plain percentile interval of a biased statistic such as macro-F1 or the ECE can
    miss it). Seeded: same seed, same intervals.
    """
    if n_resamples <= 0:
        return {}
    rng = np.random.default_rng(seed)
    draw = stratified_resampler(strata) if strata is not None else (lambda g: g.integers(0, n, n))
    draws: dict[str, list[float]] = {}
    iterator = range(n_resamples)
    if progress:
        from tqdm import tqdm

        iterator = tqdm(iterator, desc="bootstrap", unit="resample", leave=False)
    for _ in iterator:
        for key, value in statistic(draw(rng)).items():
            draws.setdefault(key, []).append(value)
    alpha = (1.0 - confidence) / 2.0
    out = {}
    for key, values in draws.items():
        vals = np.asarray(values, dtype=np.float64)
        if point is not None and key in point and np.isfinite(point[key]):
            estimate = float(point[key])
            lo_q, hi_q = _bias_corrected_levels(vals, estimate, alpha)
            # Only when the estimate lies outside the bulk of the draws (|z0| ≥ z_crit) can the
            # corrected interval still miss it: then it reaches out to the estimate.
            lo, hi = float(np.quantile(vals, lo_q)), float(np.quantile(vals, hi_q))
            out[key] = [min(lo, estimate), max(hi, estimate)]
        else:
            out[key] = [float(np.quantile(vals, alpha)), float(np.quantile(vals, 1.0 - alpha))]
    return out


def bc_interval(draws: np.ndarray, estimate: float, confidence: float = 0.95) -> list[float]:
    """Bias-corrected percentile interval of bootstrap `draws` around `estimate` (see bootstrap_ci)."""
    draws = np.asarray(draws, dtype=np.float64)
    lo_q, hi_q = _bias_corrected_levels(draws, estimate, (1.0 - confidence) / 2.0)
    return [min(float(np.quantile(draws, lo_q)), estimate), max(float(np.quantile(draws, hi_q)), estimate)]


def _bias_corrected_levels(draws: np.ndarray, estimate: float, alpha: float) -> tuple[float, float]:
    z_crit = special.ndtri(1.0 - alpha)
    below = (np.sum(draws < estimate) + 0.5 * np.sum(draws == estimate)) / len(draws)
    z0 = float(np.clip(special.ndtri(below) if 0 < below < 1 else np.sign(below - 0.5) * np.inf, -z_crit, z_crit))
    return float(special.ndtr(2 * z0 - z_crit)), float(special.ndtr(2 * z0 + z_crit))


def stratified_subsample(labels: np.ndarray, m: int, seed: int) -> np.ndarray:
    """Sorted row positions of a class-stratified random sample of at most m rows."""
    n = len(labels)
    if m >= n:
        return np.arange(n)
    from sklearn.model_selection import StratifiedShuffleSplit

    counts = np.bincount(labels)
    strat = labels if counts[counts > 0].min() >= 2 else None
    if strat is None:
        return np.sort(np.random.default_rng(seed).choice(n, m, replace=False))
    splitter = StratifiedShuffleSplit(n_splits=1, train_size=m, random_state=seed)
    idx, _ = next(splitter.split(np.zeros(n), strat))
    return np.sort(idx)
