"""Statistics valid for the 50-vs-10-images-per-class design: edge cases of the
primitives, and the level and power of the tests by simulation (quick versions; the full
figures are in docs/statistics.md, from tests/benchmarks/bench_stats.py)."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import special
from scipy import stats as sps

from scripts.lib.stats import clustered, inference


# ---------------------------------------------------------------- primitives' edge cases
def test_bh_leaves_nan_out_like_r():
    q = inference.bh_q(np.array([0.01, np.nan, 0.02]))
    assert np.isnan(q[1])
    np.testing.assert_allclose(q[[0, 2]], [0.02, 0.02])  # R: p.adjust(c(.01, NA, .02), "BH")
    assert np.isnan(inference.bh_q(np.array([np.nan]))).all()


def test_separated_constants_do_not_enter_bh_as_p_one():
    a, b = np.ones((10, 1)), np.full((8, 1), 3.0)
    res = inference.welch_t(a, b)
    assert res.t[0] == np.inf and res.p[0] == 0.0


def test_ks_exact_at_small_n():
    a, b = np.arange(10.0)[:, None], np.arange(8.0)[:, None] + 100
    d = inference.ks_statistic(a, b)
    p = inference.ks_pvalue(d, 10, 8)
    assert p[0] == pytest.approx(sps.ks_2samp(a[:, 0], b[:, 0], method="exact").pvalue, rel=1e-9)
    assert p[0] == pytest.approx(4.57e-5, rel=1e-2)  # the asymptotic formula gave 3e-64
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(23, 6)), rng.normal(0.5, 1, (17, 6))
    p = inference.ks_pvalue(inference.ks_statistic(x, y), 23, 17)
    for j in range(6):
        assert p[j] == pytest.approx(sps.ks_2samp(x[:, j], y[:, j], method="exact").pvalue, rel=1e-9)


def test_paired_tests_ties_and_constant_differences():
    res = inference.paired_tests([.9, .8, .8, 1, 1, .7, .6, .9], [.8, .8, .7, 1, .9, .6, .7, .8])
    assert res["wilcoxon_p"] == pytest.approx(0.21875)  # exact conditional (float noise gave 0.1875)
    res = inference.paired_tests(np.arange(1, 7), np.arange(1, 7) - 0.1)
    assert res["constant_difference"] and np.isnan(res["paired_t"])  # was t = 1.1e15, p = 1e-74


def _calibrated(n, seed):
    rng = np.random.default_rng(seed)
    conf = rng.beta(9, 1.2, n)
    return conf, rng.random(n) < conf


def test_ece_of_a_calibrated_model_does_not_depend_on_n():
    # Averaged over replicates: the textbook estimate reads 0.02 at 1k and 0.003 at 50k for the
    # same calibrated model; the debiased one reads ~0 at both.
    small = [inference.calibration(*_calibrated(1000, s), n_sim=100) for s in range(12)]
    large = inference.calibration(*_calibrated(50000, 99), n_sim=50)
    assert np.mean([r["ece_equal_width"] for r in small]) > 0.015
    assert abs(np.mean([r["ece"] for r in small])) < 0.003 and abs(large["ece"]) < 0.003
    assert np.mean([r["ece_calibrated_p"] < 0.05 for r in small]) <= 0.2
    # A miscalibrated model (confidence 0.1 too high) stays visible at both sizes.
    for n, seed in ((1000, 3), (50000, 4)):
        conf, correct = _calibrated(n, seed)
        res = inference.calibration(np.clip(conf + 0.1, 0, 1), correct, n_sim=50)
        assert res["ece"] > 0.05 and res["ece_calibrated_p"] < 0.05


def test_equal_mass_bins():
    bins = inference.equal_mass_bins(np.random.default_rng(0).beta(20, 1, 1500), 15)
    assert np.bincount(bins).tolist() == [100] * 15


def test_stratified_bootstrap_keeps_class_sizes_and_contains_the_estimate():
    rng = np.random.default_rng(5)
    label = np.repeat(np.arange(40), 10)
    pred = np.where(rng.random(400) < 0.8, label, rng.integers(0, 40, 400))
    draw = inference.stratified_resampler(label)
    idx = draw(np.random.default_rng(0))
    assert np.bincount(label[idx], minlength=40).tolist() == [10] * 40

    def macro_f1(ix):
        m = inference.classification_metrics(label[ix], pred[ix], np.ones(len(ix), bool), np.zeros(len(ix)),
                                         np.full(len(ix), 0.8), 40)
        return {"macro_f1": m["macro_f1"]}

    point = macro_f1(np.arange(400))
    for strata in (None, label):
        ci = inference.bootstrap_ci(macro_f1, 400, n_resamples=300, seed=1, strata=strata, point=point)
        assert ci["macro_f1"][0] <= point["macro_f1"] <= ci["macro_f1"][1]
    # BC falls back to reaching the estimate when all draws lie on one side of it.
    assert inference.bc_interval(np.linspace(1, 2, 100), 0.5)[0] == 0.5


# ---------------------------------------------------------------- the gap test
def test_stratified_test_matches_cmh_with_equal_sizes():
    rng = np.random.default_rng(6)
    p = rng.beta(9, 1, 300)
    k1, k2 = rng.binomial(50, p), rng.binomial(10, p)
    res = clustered.stratified_gap_test(k1, np.full(300, 50), k2, np.full(300, 10), n_perm=2000, seed=0)
    assert res["z"] ** 2 == pytest.approx(res["cmh_statistic"], rel=1e-9)
    assert res["p_normal"] == pytest.approx(res["cmh_p"], rel=1e-6)
    assert abs(res["p"] - res["p_normal"]) < 0.05  # Monte-Carlo permutation p agrees
    assert res["gap"] == pytest.approx(np.mean(k1 / 50 - k2 / 10))
    again = clustered.stratified_gap_test(k1, np.full(300, 50), k2, np.full(300, 10), n_perm=2000, seed=0)
    assert again == res


def test_gap_test_level_and_power_by_simulation():
    """Beta(9,1) class accuracies, 50 vs 10 images: the stratified test holds α = 0.05 and finds
    a 0.8-point drop; the old Wilcoxon across classes does neither."""
    # 2000 replicates (SE 0.5 points; ~8 s): holds its level, and is not needlessly conservative.
    null = clustered.simulate_gap_tests(n_classes=1000, drop=0.0, reps=2000, seed=11)
    assert 0.035 <= null["stratified_normal"] <= 0.06
    assert null["wilcoxon"] > 0.10  # rejects a true null far too often
    power = clustered.simulate_gap_tests(n_classes=1000, drop=0.008, reps=150, seed=2)
    assert power["stratified_normal"] >= 0.6
    assert power["wilcoxon"] < power["stratified_normal"]
    perm = clustered.simulate_gap_tests(n_classes=100, drop=0.0, reps=300, n_perm=199, seed=5)
    assert 0.02 <= perm["stratified_perm"] <= 0.06


def test_gap_intervals_cover_by_simulation():
    rng = np.random.default_rng(7)
    n1, n2 = np.full(200, 50), np.full(200, 10)
    hits = 0
    for r in range(60):
        p1 = rng.beta(9, 1, 200)
        p2 = special.expit(special.logit(np.clip(p1, 1e-9, 1 - 1e-9)) - 0.3)
        truth = float(np.mean(p1 - p2))
        res = clustered.gap_intervals(rng.binomial(50, p1), n1, rng.binomial(10, p2), n2, n_boot=400, seed=r)
        lo, hi = res["ci_images_within_class"]
        hits += lo <= truth <= hi
        assert res["ci_classes"][0] <= res["gap"] <= res["ci_classes"][1]
    assert hits / 60 >= 0.85


# ---------------------------------------------------------------- concentration and ranking
def test_concentration_of_a_uniform_drop_is_within_its_null():
    rng = np.random.default_rng(8)
    p1 = np.clip(rng.beta(9, 1, 1000), 1e-6, 1 - 1e-6)
    p2 = special.expit(special.logit(p1) - 0.4)
    n1, n2 = np.full(1000, 50), np.full(1000, 10)
    k1, k2 = rng.binomial(50, p1), rng.binomial(10, p2)
    res = clustered.concentration_null(k1, n1, k2, n2, reps=200, seed=0)
    top = res["share_of_drop_from_top_decile"]
    assert top["observed"] > 0.3  # raw reading: a tenth of the classes carries a third of the drop
    assert top["null_95"][0] <= top["observed"] <= top["null_95"][1] and top["p_upper"] > 0.05
    imp = res["share_classes_improving"]
    assert imp["observed"] > 0.15 and imp["null_95"][0] <= imp["observed"] <= imp["null_95"][1]
    # A drop concentrated in 5% of classes is flagged.
    p2c = p2.copy()
    p2c[:50] = p2c[:50] * 0.5
    res = clustered.concentration_null(k1, n1, rng.binomial(10, p2c), n2, reps=200, seed=0)
    assert res["share_of_drop_from_top_decile"]["p_upper"] < 0.05


def test_shrunk_drops_rank_closer_to_the_truth():
    rng = np.random.default_rng(9)
    c = 1000
    p1 = np.clip(rng.beta(9, 1, c), 1e-6, 1 - 1e-6)
    p2 = special.expit(special.logit(p1) - rng.normal(0.4, 0.6, c))
    k1, k2 = rng.binomial(50, p1), rng.binomial(10, p2)
    n1, n2 = np.full(c, 50), np.full(c, 10)
    raw = k1 / 50 - k2 / 10
    shrunk = clustered.shrunk_drop(k1, n1, k2, n2)
    truth = p1 - p2
    assert np.mean((shrunk - truth) ** 2) < 0.6 * np.mean((raw - truth) ** 2)
    assert sps.spearmanr(shrunk, truth).statistic > sps.spearmanr(raw, truth).statistic


def test_fisher_vectorised_matches_scipy():
    k1, k2 = np.array([50, 40, 10, 0]), np.array([10, 2, 9, 0])
    p = clustered.fisher_greater_p(k1, np.full(4, 50), k2, np.full(4, 10))
    for i in range(4):
        ref = sps.fisher_exact([[k1[i], 50 - k1[i]], [k2[i], 10 - k2[i]]], alternative="greater").pvalue
        assert p[i] == pytest.approx(ref, rel=1e-9)


# ---------------------------------------------------------------- within-class effects
def test_within_class_effect_matches_statsmodels_ols_hc1():
    import statsmodels.api as sm

    rng = np.random.default_rng(10)
    n_cls, per = 12, 15
    labels = np.repeat(np.arange(n_cls), per)
    flag = rng.random(n_cls * per) < 0.3
    x = rng.normal(size=(n_cls * per, 3)) + labels[:, None] * 0.2
    x[flag, 0] += 0.5
    x[flag, 1] *= 2.0
    res = clustered.within_class_effect(x, flag, labels, block_cols=2)
    design = np.column_stack([flag.astype(float), np.eye(n_cls)[labels]])
    for j in range(3):
        fit = sm.OLS(x[:, j], design).fit(cov_type="HC1")
        assert res["beta"][j] == pytest.approx(fit.params[0], rel=1e-9)
        assert res["se"][j] == pytest.approx(fit.bse[0], rel=1e-9)
    assert res["df"] == n_cls * per - n_cls - 1


# ---------------------------------------------------------------- imbalance under a common logit drop
def _imbalance_null(sims: int, seed: int = 0, classes: int = 1000, reduced_share: float = 0.11):
    """ImageNet-like: 11 % of the classes have fewer training rows and a lower base accuracy
    (85.7 % against 90 %, classes scattered around it: classes as clusters), every class loses the
    same 0.65 on the logit scale (the null: no extra drop for reduced classes); 50 test-1 and 10
    test-2 images per class. Returns the p-values on the logit and on the probability scale."""
    from scripts.analysis import imbalance

    rng = np.random.default_rng(seed)
    reduced = np.arange(classes) < int(reduced_share * classes)
    p_logit, p_prob = [], []
    for s in range(sims):
        base = np.where(reduced, special.logit(0.857), special.logit(0.90)) + rng.normal(0, 0.3, classes)
        k1 = rng.binomial(50, special.expit(base))
        k2 = rng.binomial(10, special.expit(base - 0.65))
        logit = imbalance.logit_drop(k1, 50, k2, 10)
        prob = k1 / 50 - k2 / 10
        p_logit.append(imbalance._group_permutation_p(logit[reduced], logit[~reduced], 499, s))
        p_prob.append(imbalance._group_permutation_p(prob[reduced], prob[~reduced], 499, s))
    return np.asarray(p_logit), np.asarray(p_prob)


def test_imbalance_holds_its_level_under_one_common_logit_drop():
    """the probability-scale comparison calls a common logit drop significant by
    construction (lower base accuracy, larger probability drop); the logit-scale one holds 5 %."""
    p_logit, p_prob = _imbalance_null(200)
    assert np.mean(p_logit < 0.05) <= 0.08
    assert np.mean(p_prob < 0.05) > 0.15  # the design really is the one that broke the old test


def test_imbalance_share_against_the_true_counterfactual():
    """The share "if reduced classes dropped like the full ones" against its truth on the same
    draws (each reduced class's expected test-2 accuracy at the common drop minus at its own):
    ~0 under one common logit drop (the probability-scale share read +0.26 points there), and
    within 0.1 points of a planted 1.1-point share."""
    from scripts.analysis import imbalance

    rng = np.random.default_rng(2)
    classes = 1000
    reduced = np.arange(classes) < 110
    for extra in (0.0, 0.5):
        err, old = [], []
        for _ in range(200):
            base = np.where(reduced, special.logit(0.857), special.logit(0.90)) + rng.normal(0, 0.3, classes)
            drop = 0.65 + extra * reduced
            k1, k2 = rng.binomial(50, special.expit(base)), rng.binomial(10, special.expit(base - drop))
            acc1, acc2 = k1 / 50, k2 / 10
            share = imbalance.imbalance_share(acc1 - acc2, reduced, acc1, imbalance.logit_drop(k1, 50, k2, 10))
            truth = 100 * np.sum(special.expit(base[reduced] - 0.65) - special.expit(base[reduced] - drop[reduced]))
            err.append(share - truth / classes)
            old.append(imbalance.imbalance_share(acc1 - acc2, reduced) - truth / classes)
        assert abs(np.mean(err)) < 0.06, (extra, np.mean(err))
        if extra == 0.0:
            assert np.mean(old) > 0.15  # the old probability-scale share, biased by construction
