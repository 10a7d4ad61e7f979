"""One decomposition of the top-1 gap (test set 1 − test set 2) into mechanism terms + a residual.

Method: Shapley attribution over shift mechanisms (Zhang, Singh, Ghassemi & Joshi, ICML 2023). Each
mechanism (CAUSES) is a player, either at its test-2 level or reverted to test-1 level; v(P) is the
head's top-1 on test set 2 with only the mechanisms in P present (reverts.py; label_noise by
confident learning, label_noise_cl.py). A term is the Shapley value of the drop v(∅) − v(P); the
terms sum to v(∅) − top-1(test 2), and the residual top-1(test 1) − v(∅) (what is left when every
mechanism is reverted) completes the gap exactly.

Intervals: cluster bootstrap over classes (a resampled class brings its test-1 and test-2 images
along; unit = class). Each resample reweights the classes, refits every cross-class parameter of
the reverts (common shift, common spread ratio, empirical-Bayes priors, excess label-issue rate)
and re-predicts the eight feature coalitions; the label-issue flags are kept from the full data.
Shapley values are linear in v, so every term's interval comes from the same resamples and the
terms + residual of each resample still sum to its gap.
"""
from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

from scripts.lib.decomposition import noisy_labels
from scripts.lib.decomposition.confident_learning import (
    confident_thresholds,
    issue_counts_by_class,
    label_issues,
    softmax,
)
from scripts.lib.decomposition.reverts import RevertData, Reverts, fit
from scripts.lib.decomposition.shapley import shapley_weights

CAUSES = ("mean_shift", "difficulty", "class_concentrated", "label_noise")
COALITIONS = [frozenset(c) for k in range(len(CAUSES) + 1) for c in itertools.combinations(CAUSES, k)]
CORE = sorted({p - {"label_noise"} for p in COALITIONS}, key=sorted)  # feature reverts only
Logits = Callable[[np.ndarray], np.ndarray]


@dataclass
class Decomposition:
    gap: float  # points
    terms: dict[str, float]  # points, sum(terms) + residual == gap
    residual: float
    ci95: dict[str, tuple[float, float]]  # terms, residual and gap; unit: class
    label_issue_share: tuple[float, float]  # calibrated CL issue rates (test 1, test 2 reverted)
    reverts: Reverts
    top1: tuple[float, float]  # percent, test set 1 and test set 2 as they are
    flagged: np.ndarray  # (n2,) bool: confident-learning label issue of test set 2
    suggested: np.ndarray  # (n2,) int: cleanlab's guess of the image's class (the label if not flagged)
    label_quality: np.ndarray  # (n2,) the head's probability of the given label, other mechanisms reverted


def _flags(x1, y1, x2, y2, train_means, logits: Logits, passes: int = 2):
    """Confident-learning flags: test 1 as it is; test 2 after reverting every other mechanism,
    with test-1 thresholds (the same yardstick for both sets). Each pass refits the reverts with
    the flagged images as their guessed class and the estimated excess of issues (that many of the
    least self-confident flagged images) left out of test set 2's class statistics."""
    thresholds = confident_thresholds(y1, logits(x1))
    issues1 = issue_counts_by_class(y1, logits(x1), thresholds)
    flag2, source2, excluded2 = np.zeros(len(y2), bool), y2.copy(), np.zeros(len(y2), bool)
    for _ in range(passes):
        data = RevertData(x1, y1, x2, y2, flag2, source2, excluded2, train_means)
        rev = fit(data)
        # Difficulty is not reverted by pulling images towards their *label's* centre here (that
        # would hide an image of another class filed under the label) but by tempering the
        # logits by g^2: the head's evidence at test-2 spread, read at test-1 spread.
        reverted = logits(rev.apply(x2, {"mean_shift", "class_concentrated"})) / rev.g**2
        flag2, source2 = label_issues(y2, reverted, thresholds)
        issues2 = issue_counts_by_class(y2, reverted, thresholds)
        excess = round(max(0.0, issues2.sum() / len(y2) - issues1.sum() / len(y1)) * len(y2))
        self_confidence = softmax(reverted)[np.arange(len(y2)), y2]
        ranked = np.flatnonzero(flag2)[np.argsort(self_confidence[flag2])]
        excluded2 = np.zeros(len(y2), bool)
        excluded2[ranked[:excess]] = True
    # For the wrong-label model: every image moved by its class's whole (unshrunk) displacement from
    # test set 1, i.e. its leave-one-out test-2 class centre onto the class's test-1 centre. A class
    # that drifted as a whole then sits where it was, while an image of another class filed under the
    # label stays far from it; the shrunk class_concentrated revert left part of a drift, which the
    # model read as wrong labels (1-2 points in 5 of 6 runs with drifted classes and no flipped label).
    # A flagged image that is a drifted member of its label's class, not an image of the suggested
    # class (drift_explained), is recentred by its label class's displacement instead: otherwise a
    # class drifted towards another one is read as wrong labels (0.8-1.8 points, weak, in 5 of 6 runs
    # with drifted classes and no flipped label).
    drift = drift_explained(data, rev, x2, y2, flag2, source2)
    n2 = np.bincount(y2, minlength=data.classes).astype(float)
    sums = np.zeros((data.classes, x2.shape[1]))
    np.add.at(sums, y2, x2)
    label_loo = (sums[y2] - x2) / np.maximum(n2[y2] - 1, 1)[:, None]
    centre = np.where(drift[:, None], label_loo, rev.centre)
    recentred = logits(x2 - centre + data.m1[np.where(drift, y2, data.src)])
    return flag2, source2, excluded2, (issues1, issues2), self_confidence, recentred


def drift_explained(data: RevertData, rev: Reverts, x2, y2, flagged, suggested, z: float = 3.0) -> np.ndarray:
    """Flagged test-2 images that are drifted members of their label's class r rather than typical
    images of the suggested class s. Label noise files single images of other classes under a label
    and leaves the rest of the class where it was; a class that drifts takes its images along. One
    image cannot tell the two apart, its class can; either of two signs counts as drift:
      * class level: r's test-2 centre without the image moved towards s beyond the common
        mechanisms (expected under them: centre2 + kappa (m1_r - centre1), mean shift + common
        contraction) by more than z sampling SDs, read along the unit direction m1_r -> m1_s, its
        SD from the pooled within-class covariances of both sets over the image counts (one-sided
        z = 3, fixed a priori: at real size thousands of flagged images are tested);
      * image level: the image is nearer (test-1 Mahalanobis distance) to r's own leave-one-out
        test-2 centre than to s's test-2 centre: a two-component mixture likelihood ratio with equal
        covariances, "a shifted member of its class" against "a typical image of the other class".
    Not re-derived in the bootstrap (like the flags)."""
    out = np.zeros(len(y2), bool)
    idx = np.flatnonzero(flagged & (suggested != y2))
    if len(idx) == 0:
        return out
    s = data
    centre1 = s.m1[s.seen].mean(0)
    centre2 = centre1 + rev.delta
    n2 = np.bincount(y2, minlength=s.classes).astype(float)
    sums = np.zeros((s.classes, x2.shape[1]))
    np.add.at(sums, y2, x2)
    r, t, xi = y2[idx], suggested[idx], x2[idx]
    loo = (sums[r] - xi) / np.maximum(n2[r] - 1, 1)[:, None]
    u = s.m1[t] - s.m1[r]
    u /= np.maximum(np.linalg.norm(u, axis=1, keepdims=True), 1e-12)
    moved = np.einsum("nd,nd->n", loo - (centre2 + rev.kappa * (s.m1[r] - centre1)), u)
    cov1 = s.sc1 / max(1.0, (s.n1[s.n1 > 0] - 1).sum())
    cov2 = s.sc2 / max(1.0, (s.n2[s.n2 > 0] - 1).sum())
    quad = lambda v, m: ((v @ m) * v).sum(1)
    var = quad(u, cov2) / np.maximum(n2[r] - 1, 1) + quad(u, cov1) / np.maximum(s.n1[r], 1)
    class_level = moved > z * np.sqrt(np.maximum(var, 1e-300))
    prec = np.linalg.inv(cov1 + 1e-6 * np.trace(cov1) / len(cov1) * np.eye(len(cov1)))
    own_nearer = quad(xi - loo, prec) < quad(xi - sums[t] / np.maximum(n2[t], 1)[:, None], prec)
    out[idx] = (class_level | own_nearer) & (n2[r] >= 3)
    return out


def _per_class_v(rev: Reverts, x2, y2, p_wrong, q2, logits: Logits, classes: int) -> dict:
    """Per class, for every set of present feature mechanisms: correct counts, and the expected change
    in correct counts if every test-2 label were its image's class: per image P(label wrong) x
    (P(the prediction is the image's class | label wrong) if it disagrees with the label, else -1)."""
    count = lambda v: np.bincount(y2, weights=v.astype(float), minlength=classes)
    rows = np.arange(len(y2))
    q_other = np.maximum(1.0 - q2[rows, y2], 1e-12)
    out = {}
    for present in CORE:  # one coalition at a time: 8 reverted copies of test set 2 at once are GBs
        pred = logits(rev.apply(x2, set(CAUSES) - present)).argmax(1)
        right = pred == y2
        gain = p_wrong * np.where(right, -1.0, q2[rows, pred] / q_other)
        out[present] = (count(right), count(gain))
    return out


def _values(weights, n1, c1, table1, n2, table2, eps2_full, per_class) -> tuple[float, dict]:
    """Top-1 of test 1 and v(P) for every coalition, classes weighted (1 = as observed).
    label_noise reverted = each test-2 label corrected with its probability of being wrong, scaled to
    the *excess* of wrong labels over test set 1 (eps refitted on the weighted classes)."""
    eps1, eps2 = noisy_labels.fit(table1, weights)[0], noisy_labels.fit(table2, weights)[0]
    # Only an excess of wrong labels over test set 1 is label noise of test set 2; a lower rate in
    # test set 2 is not "negative label noise": it is left to the residual.
    scale = max(0.0, eps2 - eps1) / eps2_full if eps2_full > 0 else 0.0
    v = {}
    for p in COALITIONS:
        right, gain = per_class[p - {"label_noise"}]
        v[p] = (weights @ right + (0 if "label_noise" in p else scale * (weights @ gain))) / (weights @ n2)
    return weights @ c1 / (weights @ n1), v


def decompose(x1: np.ndarray, y1: np.ndarray, x2: np.ndarray, y2: np.ndarray, train_means: np.ndarray,
              logits: Logits, *, bootstrap: int = 200, seed: int = 0, progress: bool = False) -> Decomposition:
    """Terms + residual (points) summing to the gap; 95 % percentile intervals from a cluster
    bootstrap over classes that refits every cross-class parameter of the reverts (flags fixed)."""
    classes = int(max(y1.max(), y2.max())) + 1
    train_means = np.asarray(train_means, np.float64)[:classes]
    if np.isnan(train_means).any():  # a class without train rows: its test-1 centre gives its axis
        seen1 = np.bincount(y1, minlength=classes)
        m1 = np.stack([x1[y1 == c].mean(0) if seen1[c] else np.zeros(x1.shape[1]) for c in range(classes)])
        train_means = np.where(np.isnan(train_means), m1, train_means)
    flag2, source2, excluded2, (issues1, issues2), quality, reverted2 = _flags(x1, y1, x2, y2, train_means, logits)
    # How many labels are wrong (noisy-label ML with a free temperature, per set) and each test-2
    # image's probability of a wrong label: the label_noise revert's weights.
    table1 = noisy_labels.likelihood_table(logits(x1), y1, classes)
    table2 = noisy_labels.likelihood_table(reverted2, y2, classes)
    eps2, temp2 = noisy_labels.fit(table2, np.ones(classes))
    p_wrong, q2 = noisy_labels.wrong_label_posterior(reverted2, y2, eps2, temp2)
    data = RevertData(x1, y1, x2, y2, flag2, source2, excluded2, train_means)
    classes = data.classes
    count = lambda v, y: np.bincount(y, weights=np.asarray(v, float), minlength=classes)
    fixed = (count(np.ones(len(y1)), y1), count(logits(x1).argmax(1) == y1, y1), table1,
             count(np.ones(len(y2)), y2), table2, eps2)
    rng = np.random.default_rng([seed, 22])
    weights = [np.ones(classes)] + list(rng.multinomial(classes, np.full(classes, 1 / classes), size=bootstrap))
    shapley_w = shapley_weights(CAUSES)
    draws: dict[str, list[float]] = {k: [] for k in (*CAUSES, "residual", "gap")}
    for b, wb in enumerate(tqdm(weights, desc="decomposition: class resamples", unit="resample",
                                mininterval=5, disable=not progress)):
        rev = fit(data, wb)
        if b == 0:
            rev0 = rev
        acc1, v = _values(wb.astype(float), *fixed, _per_class_v(rev, x2, y2, p_wrong, q2, logits, classes))
        for c in CAUSES:
            term = -100 * sum(w * v[s] for s, w in shapley_w[c].items())
            draws[c].append(0.0 if abs(term) < 1e-9 else term)  # an inactive term is 0, not ±1e-17
        draws["residual"].append(100 * (acc1 - v[frozenset()]))
        draws["gap"].append(100 * (acc1 - v[frozenset(CAUSES)]))
        if b == 0:
            gap, acc1_full = 100 * (acc1 - v[frozenset(CAUSES)]), acc1
    ci = {k: (float(np.percentile(d[1:], 2.5)), float(np.percentile(d[1:], 97.5))) for k, d in draws.items()}
    return Decomposition(gap=float(gap), terms={c: float(draws[c][0]) for c in CAUSES},
                         residual=float(draws["residual"][0]), ci95=ci,
                         label_issue_share=(float(issues1.sum() / len(y1)), float(issues2.sum() / len(y2))),
                         reverts=rev0, top1=(float(100 * acc1_full), float(100 * acc1_full - gap)),
                         flagged=flag2, suggested=source2, label_quality=quality)

