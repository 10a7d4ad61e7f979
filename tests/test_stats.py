"""scripts/lib/stats/inference.py against its scipy / scikit-learn references on random data."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
from scipy import stats as sps
from sklearn import metrics as skm
from sklearn.calibration import calibration_curve

from scripts.lib.stats import inference

TOL = {"rtol": 1e-9, "atol": 1e-12}


@pytest.fixture
def two_samples():
    rng = np.random.default_rng(1)
    a = rng.normal(0.0, 1.0, (300, 40)).astype(np.float32)
    b = rng.normal(0.0, 1.5, (120, 40)).astype(np.float32)
    b[:, :5] += 0.6  # some real differences
    return a, b


def test_moments_match_numpy(two_samples):
    a, _ = two_samples
    m = inference.moments(a, block_rows=7)
    np.testing.assert_allclose(m.mean, a.astype(np.float64).mean(axis=0), **TOL)
    np.testing.assert_allclose(m.var, a.astype(np.float64).var(axis=0, ddof=1), **TOL)


def test_welch_matches_scipy(two_samples):
    a, b = two_samples
    res = inference.welch_t(a, b)
    ref = sps.ttest_ind(b.astype(np.float64), a.astype(np.float64), equal_var=False, axis=0)
    np.testing.assert_allclose(res.t, ref.statistic, **TOL)
    np.testing.assert_allclose(res.p, ref.pvalue, **TOL)
    np.testing.assert_allclose(res.df, ref.df, **TOL)


def test_welch_constant_columns_follow_scipy():
    # Two different constants are perfectly separated (scipy: t = ±inf, p = 0), not "no
    # difference"; the same constant in both has no test (NaN), which BH then leaves out.
    a = np.ones((10, 3))
    b = np.ones((8, 3))
    b[:, 0] = 3.0
    b[:, 2] += np.arange(8)
    res = inference.welch_t(a, b)
    assert res.t[0] == np.inf and res.p[0] == 0.0
    assert np.isnan(res.t[1]) and np.isnan(res.p[1])
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # scipy's own precision warning on constant columns
        ref = sps.ttest_ind(b, a, equal_var=False, axis=0)
    np.testing.assert_array_equal(res.t[:2], ref.statistic[:2])
    np.testing.assert_array_equal(res.p[:2], ref.pvalue[:2])
    d = inference.cohens_d(inference.moments(a), inference.moments(b))
    assert d[0] == np.inf and np.isnan(d[1])
    # BH counts the two real tests (m = 2), not the untestable column: R's p.adjust(c(0, NA, p), "BH").
    q = inference.bh_q(res.p)
    assert q[0] == 0.0 and np.isnan(q[1]) and q[2] == pytest.approx(min(1.0, res.p[2] * 2 / 2))


def test_bh_matches_scipy():
    rng = np.random.default_rng(2)
    p = np.concatenate([rng.uniform(size=500), rng.uniform(0, 1e-4, 20), [0.5, 0.5, 0.0, 1.0]])
    np.testing.assert_allclose(inference.bh_q(p), sps.false_discovery_control(p, method="bh"), **TOL)


def test_cohens_d_formula(two_samples):
    a, b = two_samples
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    na, nb = len(a), len(b)
    pooled = ((na - 1) * a64.var(0, ddof=1) + (nb - 1) * b64.var(0, ddof=1)) / (na + nb - 2)
    expect = (b64.mean(0) - a64.mean(0)) / np.sqrt(pooled)
    np.testing.assert_allclose(inference.cohens_d(inference.moments(a), inference.moments(b)), expect, **TOL)


@pytest.mark.parametrize("ties", [False, True])
def test_ks_matches_scipy(two_samples, ties):
    a, b = two_samples
    if ties:
        a, b = np.round(a, 1), np.round(b, 1)
    d = inference.ks_statistic(a, b, block_cols=7)
    p = inference.ks_pvalue(d, len(a), len(b))
    for j in range(a.shape[1]):
        # 300 × 120 cells: small enough for the exact distribution (scipy's 'exact').
        ref = sps.ks_2samp(a[:, j].astype(np.float64), b[:, j].astype(np.float64), method="exact")
        assert d[j] == pytest.approx(ref.statistic, rel=1e-9, abs=1e-12)
        assert p[j] == pytest.approx(ref.pvalue, rel=1e-7, abs=1e-12)
    asymp = inference.ks_pvalue(d, len(a), len(b), method="asymp")
    for j in range(3):
        ref = sps.ks_2samp(a[:, j].astype(np.float64), b[:, j].astype(np.float64), method="asymp")
        assert asymp[j] == pytest.approx(ref.pvalue, rel=1e-9, abs=1e-12)


def test_paired_tests_match_scipy():
    rng = np.random.default_rng(3)
    x = rng.uniform(size=80)
    y = x - rng.normal(0.05, 0.1, 80)
    res = inference.paired_tests(x, y)
    t = sps.ttest_rel(x, y)
    w = sps.wilcoxon(x, y)
    assert res["paired_t"] == pytest.approx(t.statistic, rel=1e-9)
    assert res["paired_t_p"] == pytest.approx(t.pvalue, rel=1e-9)
    assert res["wilcoxon"] == pytest.approx(w.statistic, rel=1e-9)
    assert res["wilcoxon_p"] == pytest.approx(w.pvalue, rel=1e-9)


def test_paired_tests_degenerate():
    res = inference.paired_tests(np.ones(5), np.ones(5))
    assert np.isnan(res["paired_t"]) and res["mean_diff"] == 0.0


def test_spearman_matches_scipy():
    rng = np.random.default_rng(4)
    x = rng.integers(70, 130, 100)  # with ties, like class counts
    y = x / 130 + rng.normal(0, 0.3, 100)
    res = inference.spearman(x, y)
    ref = sps.spearmanr(x, y)
    assert res["rho"] == pytest.approx(ref.statistic, rel=1e-9)
    assert res["p"] == pytest.approx(ref.pvalue, rel=1e-9)


def test_auc_matches_sklearn():
    rng = np.random.default_rng(5)
    y = rng.integers(0, 2, 1000)
    score = np.round(rng.normal(y * 0.5, 1.0), 1)  # ties
    assert inference.auc(y, score) == pytest.approx(skm.roc_auc_score(y, score), rel=1e-9, abs=1e-12)


def _random_predictions(n=2000, c=17, seed=6):
    rng = np.random.default_rng(seed)
    label = rng.integers(0, c, n)
    logits = rng.normal(size=(n, c)) + 2.0 * np.eye(c)[label]
    logits[:, 3] -= 5  # class 3 rarely predicted; some classes absent from pred
    logp = inference.log_softmax(logits)
    prob = np.exp(logp)
    pred = prob.argmax(1)
    top5 = np.argsort(-logits, axis=1)[:, :5]
    return label, pred, prob, logp, top5


def test_classification_metrics_match_sklearn():
    label, pred, prob, logp, top5 = _random_predictions()
    c = prob.shape[1]
    m = inference.classification_metrics(
        label, pred, (top5 == label[:, None]).any(1), -logp[np.arange(len(label)), label],
        prob.max(1), num_classes=c,
    )
    assert m["top1"] == pytest.approx(skm.accuracy_score(label, pred), rel=1e-12)
    assert m["top5"] == pytest.approx(skm.top_k_accuracy_score(label, prob, k=5), rel=1e-12)
    assert m["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(label, pred), rel=1e-9)
    p, r, f, _ = skm.precision_recall_fscore_support(label, pred, average="macro", zero_division=0)
    assert m["macro_precision"] == pytest.approx(p, rel=1e-9)
    assert m["macro_recall"] == pytest.approx(r, rel=1e-9)
    assert m["macro_f1"] == pytest.approx(f, rel=1e-9)
    assert m["nll"] == pytest.approx(skm.log_loss(label, prob, labels=np.arange(c)), rel=1e-9)


def test_ece_matches_calibration_curve():
    label, pred, prob, _, _ = _random_predictions(seed=7)
    conf, correct = prob.max(1), (pred == label).astype(float)
    frac_pos, mean_pred = calibration_curve(correct, conf, n_bins=15, strategy="uniform")
    bins = inference.ece_bins(conf, 15)
    counts = np.bincount(bins, minlength=15)
    counts = counts[counts > 0]
    expect = float(np.sum(counts / len(conf) * np.abs(frac_pos - mean_pred)))
    assert inference.ece(conf, correct, 15) == pytest.approx(expect, rel=1e-9)
    # A perfectly calibrated toy: confidence equal to accuracy in one bin.
    assert inference.ece(np.full(10, 0.7), np.r_[np.ones(7), np.zeros(3)]) == pytest.approx(0.0, abs=1e-12)


def test_ece_bin_edges():
    # Edges belong to the lower bin, 0 to the first, 1 to the last (calibration_curve convention).
    assert inference.ece_bins(np.array([0.0, 1 / 15, 1 / 15 + 1e-9, 1.0]), 15).tolist() == [0, 0, 1, 14]


def test_bootstrap_is_seeded_and_covers():
    rng = np.random.default_rng(8)
    x = rng.normal(1.0, 1.0, 400)

    def stat(idx):
        return {"mean": x[idx].mean()}

    a = inference.bootstrap_ci(stat, len(x), n_resamples=300, seed=1)
    b = inference.bootstrap_ci(stat, len(x), n_resamples=300, seed=1)
    assert a == b
    lo, hi = a["mean"]
    assert lo < x.mean() < hi
    half = 1.96 * x.std(ddof=1) / np.sqrt(len(x))
    assert (hi - lo) == pytest.approx(2 * half, rel=0.2)
    assert inference.bootstrap_ci(stat, len(x), n_resamples=0) == {}
