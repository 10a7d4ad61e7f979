"""Mechanism reverts: test-set-2 features with chosen mechanisms taken back to test-set-1 level.

Model of a test-2 image of class r: x = m1_r + delta + e_r + g * h_r * dev, where m1_r is the
class's test-1 centre, delta the common shift of all class centres (mean_shift), e_r the class's own
extra drift (class_concentrated), g the common growth of within-class spread relative to the spread
of class centres (difficulty), h_r the class's own extra spread growth (class_concentrated).
Reverting a mechanism removes its factor.

Why the estimators look as they do (10 test-2 images per class against 50 in test 1):
  * features come out of a LayerNorm, which rescales each image: noise added before it shows
    after it mostly as class centres contracting towards the common centre, not as wider classes.
    So difficulty is the ratio within-class spread / spread of class centres (scale-free), and a
    class's own degradation is read along its own axis (train centre of the class from the common
    train centre: from train, so that test-1 noise does not bias the projections);
  * test-2 class centres are leave-one-out: an image's own noise must not be part of the centre it
    is pulled towards;
  * spreads are sums of squares over their degrees of freedom (n_c - 1); common factors are
    medians over classes (robust to the few classes with an extra effect, which belong to
    class_concentrated, not to the common mechanisms);
  * per-class excesses are shrunk by empirical Bayes (eb.py; positive-part James-Stein for the
    drift across the class axis): without it every class's sampling noise would be "reverted";
  * images flagged as label issues use their guessed class (where the image comes from) for their
    own revert; the estimated *excess* of label issues over test set 1 (the most confident flagged
    images, that many) is left out of test set 2's centres and spreads, and nothing of test set 1:
    leaving out all flagged images in both sets would trim the two sets' tails unequally.
All cross-class aggregates take class weights, so a class bootstrap refits them (`fit`).
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from scripts.lib.decomposition.eb import npmle_posterior_mean


@dataclass
class Reverts:
    centre: np.ndarray  # (n2, d) leave-one-out test-2 centre of each image's source class
    delta: np.ndarray  # (d,) common shift of class centres
    drift: np.ndarray  # (n2, d) shrunk extra drift of each image's source class (leave-one-out)
    g: float  # common (within spread / centre spread) SD ratio, test 2 over test 1
    h: np.ndarray  # (n2,) shrunk extra SD ratio of each image's source class (leave-one-out)
    kappa: float = 1.0  # common contraction of class centres towards the common centre

    def apply(self, x2: np.ndarray, reverted: Iterable[str]) -> np.ndarray:
        reverted = set(reverted)
        if not reverted:
            return x2  # exactly test set 2: v(all present) is its top-1
        mult = np.ones(len(x2))
        if "difficulty" in reverted:
            mult /= self.g
        if "class_concentrated" in reverted:
            mult /= self.h
        out = self.centre + mult[:, None] * (x2 - self.centre)
        if "mean_shift" in reverted:
            out = out - self.delta
        if "class_concentrated" in reverted:
            out = out - self.drift
        return out


def _class_stats(x, y, classes):
    """Counts, class means, per-class sums of squares about the mean (traces) and the *pooled*
    within-class scatter (one D x D matrix, not one per class: 1000 per-class matrices of
    1024 x 1024 would take 8 GB). Class by class, in float64, without a float64 copy of x."""
    n = np.bincount(y, minlength=classes).astype(float)
    means = np.zeros((classes, x.shape[1]))
    ss = np.zeros(classes)
    pooled = np.zeros((x.shape[1], x.shape[1]))
    order = np.argsort(y, kind="stable")
    bounds = np.concatenate([[0], np.cumsum(np.bincount(y, minlength=classes))])
    for c in np.flatnonzero(n):
        rows = x[order[bounds[c]:bounds[c + 1]]].astype(np.float64)
        means[c] = rows.mean(0)
        centred = rows - means[c]
        ss[c] = float((centred**2).sum())
        pooled += centred.T @ centred
    return n, means, ss, pooled


def _median_spread(x, y, classes):
    out = np.full(classes, np.nan)
    for c in np.unique(y):
        rows = x[y == c].astype(np.float64)
        n = len(rows)
        if n >= 3:
            loo = (rows.sum(0) - rows) / (n - 1)
            out[c] = np.median(((rows - loo) ** 2).sum(1)) * (n - 1) / n
    return out


def _biweight_location(values, se, weights, c=4.685, iters=30):
    """Tukey's biweight M-estimate of location (IRLS from the weighted median); residuals in units
    of each value's SE: values beyond c SEs of the bulk get weight 0."""
    loc = _wmedian(values, weights)
    for _ in range(iters):
        u = (values - loc) / (c * se)
        bw = weights * np.where(np.abs(u) < 1, (1 - u**2) ** 2, 0.0) / se**2
        if bw.sum() <= 0:
            break
        new = float((bw * values).sum() / bw.sum())
        if abs(new - loc) < 1e-10:
            return new
        loc = new
    return loc


def _wmedian(values, weights):
    order = np.argsort(values)
    cum = np.cumsum(weights[order])
    return float(values[order][np.searchsorted(cum, cum[-1] / 2)])


class RevertData:
    """Per-class statistics of both sets (computed once; `fit` reweights classes)."""

    def __init__(self, x1, y1, x2, y2, flagged2, source2, excluded2, train_means):
        self.x2 = x2.astype(np.float64)
        self.classes = c = int(max(y1.max(), y2.max())) + 1
        self.n1, self.m1, self.ss1, self.sc1 = _class_stats(x1, y1, c)
        keep2 = ~excluded2
        self.n2, self.m2, self.ss2, self.sc2 = _class_stats(self.x2[keep2], y2[keep2], c)
        self.seen = (self.n2 >= 3) & (self.n1 >= 3)
        axis = train_means - train_means.mean(0)
        self.axis = axis / (np.linalg.norm(axis, axis=1, keepdims=True) + 1e-12)
        self.src = np.where(flagged2, source2, y2)
        self.own = (~flagged2).astype(float)  # 1: the image is part of its source class's stats
        # Each class's discriminant direction cov1^-1 axis: along it the class's position is read
        # with far less noise than along the plain axis when the noise is correlated. Per class,
        # the test-2 images' *median* position on it (robust to the odd image of another class
        # filed under the label), relative to the test-1 centre's position.
        cov1 = self.sc1 / max(1.0, (self.n1[self.n1 > 0] - 1).sum())
        lda = np.linalg.solve(cov1 + 1e-6 * np.trace(cov1) / len(cov1) * np.eye(len(cov1)), self.axis.T).T
        cov2 = self.sc2 / max(1.0, (self.n2[self.n2 > 0] - 1).sum())
        # Effective number of dimensions of the within-class noise (for the sampling variance of
        # log spread ratios): a property of the noise's shape, fitted once on all classes.
        self.d_eff = float(np.trace(cov2) ** 2 / max(np.trace(cov2 @ cov2), 1e-300))
        centre1, centre2 = self.m1[self.seen].mean(0), self.m2[self.seen].mean(0)
        # Each class's test-1 position on its axis by the same statistic as test set 2's (the median
        # of its images' positions): the positions of LayerNorm-ed features are skewed, so a test-1
        # *mean* against a test-2 *median* read classes as ~2-3 % farther out in test set 2 under no
        # shift at all (test set 2 as easier, difficulty negative).
        proj1 = np.einsum("nd,nd->n", x1 - centre1, lda[y1])
        order1 = np.argsort(y1, kind="stable")
        cuts1 = np.cumsum(np.bincount(y1, minlength=c))[:-1]
        median1 = np.array([np.median(p) if len(p) else 0.0 for p in np.split(proj1[order1], cuts1)])
        self.len_l = np.maximum(median1, 1e-9)
        # A class's test-2 position: the median over its images except the estimated *excess* of label
        # issues (`excluded2`), not except every flagged image: test set 1's median keeps its own
        # flagged images, and trimming only test set 2's would read its classes as farther out.
        member = keep2 & ~flagged2
        proj = np.einsum("nd,nd->n", self.x2 - centre2, lda[y2])
        median2, self.kappa_i = np.zeros(c), np.zeros(len(y2))
        for k in range(c):
            rows = np.flatnonzero(keep2 & (y2 == k))
            if len(rows) == 0:
                continue
            median2[k] = np.median(proj[rows])
            for j, i in enumerate(rows):  # leave-one-out: an image's own position is not its class's
                self.kappa_i[i] = np.median(np.delete(proj[rows], j)) if len(rows) > 1 else proj[i]
        # The test-1 position in the denominator is itself estimated (a median of 50 images):
        # E[1/L^] > 1/L. First-order (delta-method) correction: divide by 1 + Var(L^)/L^2.
        jensen = 1.0 + 1.57 * ((lda @ cov1) * lda).sum(1) / np.maximum(self.n1, 1) / self.len_l**2
        self.kappa_c = median2 / self.len_l / jensen
        guest = ~member  # flagged (or left-out) images: their source class's full median
        self.kappa_i[guest] = self.kappa_c[self.src[guest]]
        self.kappa_i /= np.where(guest, 1.0, self.len_l[self.src] * jensen[self.src])
        self.n_member = np.bincount(y2[keep2], minlength=c).astype(float)
        # Robust within-class spread per class: median squared distance to the leave-one-out
        # centre, corrected for the centre's own noise (x (n-1)/n); flips would inflate a mean.
        self.spread1, self.spread2 = _median_spread(x1, y1, c), _median_spread(self.x2[keep2], y2[keep2], c)
        # sampling SD of kappa_c: median of n normal draws ~ 1.25 x the mean's SE
        self.se_kappa = np.sqrt(1.57 * ((lda @ cov2) * lda).sum(1) / np.maximum(self.n2, 1)
                                + ((lda @ cov1) * lda).sum(1) / np.maximum(self.n1, 1)) / self.len_l


def fit(data: RevertData, weights: np.ndarray | None = None) -> Reverts:
    s, d = data, data.x2.shape[1]
    w = (np.ones(s.classes) if weights is None else np.asarray(weights, float)) * s.seen
    mean_w = lambda v: (w * v).sum() / w.sum()
    centre1 = (w[:, None] * s.m1).sum(0) / w.sum()
    delta = (w[:, None] * s.m2).sum(0) / w.sum() - centre1  # class-balanced
    d_eff = s.d_eff
    length = np.maximum(np.einsum("cd,cd->c", s.m1 - centre1, s.axis), 1e-6)
    on = w > 0
    # Common contraction of class centres: a robust location of the classes' contractions (Tukey's
    # biweight, each class in units of its own sampling SD), so that a few degraded classes (far
    # below the bulk: class_concentrated) get no weight, while under no degradation it is the
    # plain average. (An iterated empirical-Bayes removal of each class's own excess drifted
    # upwards with every iteration: +0.01-0.03 after 3 under no shift at all, read as test set 2
    # being easier.)
    kappa = _biweight_location(s.kappa_c[on], s.se_kappa[on], w[on])
    v1 = s.ss1 / np.maximum(s.n1 - 1, 1) / d
    log_ratio = np.log(np.maximum(s.ss2, 1e-12) / np.maximum(s.n2 - 1, 1) / d / v1)
    log_w2 = _wmedian(log_ratio[on], w[on])  # centre for the per-class spread excesses
    robust = np.log(s.spread2 / s.spread1)
    log_g2 = _wmedian(robust[on], w[on]) - 2 * np.log(max(kappa, 1e-3))
    noise_var = 2 / (np.maximum(s.n2 - 1, 1) * d_eff) + 2 / (np.maximum(s.n1 - 1, 1) * d_eff)
    tau2 = max(0.0, mean_w((log_ratio - log_w2) ** 2) - mean_w(noise_var))

    # Per image: leave-one-out statistics of its source class (flagged images are in no class).
    src, own, x2 = s.src, s.own, s.x2
    n2, m2 = s.n2[src], s.m2[src]
    n_loo = n2 - own
    ok = (n_loo >= 2) & (s.n1[src] >= 2)
    centre = np.where(own[:, None] > 0, (m2 * n2[:, None] - x2) / np.maximum(n_loo, 1)[:, None], m2)
    centre = np.where(ok[:, None], centre, s.m1[src] + delta)
    ss_loo = s.ss2[src] - own * n2 / np.maximum(n2 - 1, 1) * ((x2 - m2) ** 2).sum(1)
    ell = np.log(np.maximum(ss_loo, 1e-12) / np.maximum(n_loo - 1, 1) / d / v1[src]) - log_w2
    var_loo = 2 / (np.maximum(n_loo - 1, 1) * d_eff) + 2 / (np.maximum(s.n1[src] - 1, 1) * d_eff)
    h = np.where(ok, np.exp(0.5 * ell * tau2 / (tau2 + var_loo)), 1.0)
    extra = centre - s.m1[src] - delta
    axis = s.axis[src]
    along_i = np.einsum("nd,nd->n", extra, axis)
    # The class's own contraction beyond the common one, read robustly along its discriminant
    # direction (RevertData), leave-one-out per image; the prior is fitted on the classes.
    n_i = s.n_member[src] - own
    se_i = s.se_kappa[src] * np.sqrt(np.maximum(s.n_member[src], 1) / np.maximum(n_i, 1))
    post = npmle_posterior_mean(np.concatenate([s.kappa_c - kappa, s.kappa_i - kappa]),
                                np.concatenate([s.se_kappa, se_i]),
                                np.concatenate([w, np.zeros(len(src))]))[s.classes:]
    along_shrunk = post * length[src]  # as a displacement along the class's (Euclidean) axis
    across = extra - along_i[:, None] * axis
    sampling = (np.maximum(ss_loo, 0) / np.maximum(n_loo - 1, 1) / np.maximum(n_loo, 1)
                + s.ss1[src] / np.maximum(s.n1[src] - 1, 1) / np.maximum(s.n1[src], 1)) * (d - 1) / d
    js = np.clip(1 - sampling / np.maximum((across**2).sum(1), 1e-12), 0, 1)
    drift = np.where(ok[:, None], js[:, None] * across + along_shrunk[:, None] * axis, 0.0)
    return Reverts(centre=centre, delta=delta, drift=drift, g=float(np.exp(log_g2 / 2)), h=h, kappa=float(kappa))
