"""scripts/analysis/shift.py: planted feature shift is recovered exactly; nothing planted, nothing found."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from analysis_fixtures import SPEC, build_dataset, planted, sample_split  # noqa: F401 - fixture
from scipy import stats as sps
from step_layout import outputs_in

from scripts.analysis.mean_shift import mean_shift
from scripts.analysis.shift import feature_tests, shift_features
from scripts.data.generate_demo import DemoSpec, FeatureModel
from scripts.lib.featio.errors import FeatgapError
from scripts.lib.featio.reader import read_split


@pytest.fixture(scope="module")
def shift_summary(planted, tmp_path_factory):
    out = tmp_path_factory.mktemp("shift")
    summary = shift_features(test1=planted["test1"], test2=planted["test2"], outputs=outputs_in(out, "shift"),
                             options={"domain": {"bootstrap": 100, "folds": 3}}, seed=0)
    return out, summary


def test_planted_shift_found_exactly(planted, shift_summary):
    out, summary = shift_summary
    table = pd.read_csv(out / "features.csv")
    assert sorted(table.loc[table["q"] < 0.05, "feature"]) == planted["shifted_features"]
    assert sorted(summary["numbers"]["significant_features"]) == planted["shifted_features"]
    assert summary["numbers"]["n_significant"] == len(planted["shifted_features"])
    assert sorted(summary["numbers"]["shifted_features"]) == planted["shifted_features"]  # also |d| ≥ 0.2
    assert (table.loc[table["feature"].isin(planted["shifted_features"]), "cohens_d"] > 0.3).all()
    assert summary["numbers"]["domain_auc"] > 0.6 and summary["numbers"]["domain_auc_ci95"][0] > 0.5
    assert "Test set 2 features differ" in summary["verdict"]
    for fig in summary["figures"]:
        assert (out / fig.split("/")[-1]).stat().st_size > 1000
    assert summary["table"].endswith("features.csv") and "meta" in summary


def test_per_feature_columns_match_scipy(planted, shift_summary):
    out, _ = shift_summary
    table = pd.read_csv(out / "features.csv")
    x1 = read_split(planted["test1"]).features.astype(np.float64)
    x2 = read_split(planted["test2"]).features.astype(np.float64)
    ref = sps.ttest_ind(x2, x1, equal_var=False)
    np.testing.assert_allclose(table["t"], ref.statistic, rtol=1e-8)
    np.testing.assert_allclose(table["p"], ref.pvalue, rtol=1e-7, atol=1e-300)
    np.testing.assert_allclose(table["q"], sps.false_discovery_control(ref.pvalue), rtol=1e-7, atol=1e-300)
    for j in (0, 1, 17):
        assert table["ks"][j] == pytest.approx(sps.ks_2samp(x1[:, j], x2[:, j]).statistic, rel=1e-9)


def _split_pair(seed: int, **overrides):
    spec = DemoSpec(**{**SPEC, **overrides, "seed": seed})
    model = FeatureModel(spec)
    x1, _ = sample_split(model, np.full(spec.classes, spec.test1_per_class), "test1", seed)
    x2, _ = sample_split(model, np.full(spec.classes, spec.test2_per_class), "test2", seed)
    return x1, x2, set(model.shifted.tolist())


def test_recovery_and_fdr_over_seeds():
    """Only the planted mean shift differs: every planted feature found in every run, and the
    false discovery proportion averages within the 5% FDR."""
    fdp, recall = [], []
    for seed in range(30):
        x1, x2, truth = _split_pair(seed, test2_noise=1.0, hard_noise=1.0)
        table = feature_tests(x1, x2)
        found = set(table.loc[table["q"] < 0.05, "feature"])
        recall.append(len(found & truth) / len(truth))
        fdp.append(len(found - truth) / max(len(found), 1))
    assert min(recall) == 1.0
    assert np.mean(fdp) <= 0.05


def test_nothing_planted_nothing_found(tmp_path):
    any_found = 0
    for seed in range(30):
        x1, x2, _ = _split_pair(seed, shift_features=0, test2_noise=1.0, hard_noise=1.0)
        any_found += int((feature_tests(x1, x2)["q"] < 0.05).any())
    assert any_found <= 3  # family-wise rate of BH under the global null is ≤ 5%: expect ~1.5 of 30
    data = build_dataset(tmp_path, shift_features=0, test2_noise=1.0, hard_noise=1.0, seed=5)
    summary = shift_features(test1=data["test1"], test2=data["test2"], outputs=outputs_in(tmp_path / "out", "shift"),
                             options={"domain": {"bootstrap": 50, "folds": 3}})
    assert summary["numbers"]["n_significant"] == 0
    assert summary["numbers"]["domain_auc_ci95"][0] < 0.5 < summary["numbers"]["domain_auc_ci95"][1]
    assert summary["verdict"].startswith("No feature shift detected")


def test_adaptation_check(planted, tmp_path):
    summary = mean_shift(model=planted["head"], test1=planted["test1"], test2=planted["test2"],
                         outputs=outputs_in(tmp_path, "mean_shift"), options={"bootstrap": 50}, head_name="linear")
    table = pd.read_csv(tmp_path / "adaptation.csv")
    assert set(table["standardisation"]) == {"train", "own_mean", "own_mean_std", "test1_mean"}
    # Its reading: the points re-centring recovers, with a classes-resampled interval (a description).
    block = summary["reading"]
    assert block["name"] == "recentring" and block["unit"] == "classes resampled"
    lo, hi = block["ci95"]
    assert lo <= block["points"] <= hi
    moved = table[(table["test"] == "test2") & (table["standardisation"] == "test1_mean")]["top1"].item()
    as_is = table[(table["test"] == "test2") & (table["standardisation"] == "train")]["top1"].item()
    assert block["points"] == pytest.approx(100 * (moved - as_is))
    assert 0.5 <= summary["numbers"]["domain_within_class"]["auc_within_class"] <= 1.0
    n = summary["numbers"]
    evaluated = json.loads(json.dumps(n))  # JSON-safe
    assert evaluated["gap_train_standardisation"] > 0.05  # test2 is harder
    # The head as trained reproduces evaluate's accuracy exactly.
    from scripts.lib.heads import load_head, predict_logits

    s2 = read_split(planted["test2"], columns=("label",))
    acc = float((predict_logits(load_head(planted["head"]), s2.features).argmax(1) == s2.label).mean())
    assert n["top1_test2_train"] == pytest.approx(acc)
    lo, hi = n["test2_own_mean_std_change_ci95"]
    assert lo <= n["test2_own_mean_std_change"] <= hi
    assert "Re-standardising test set 2" in summary["verdict"]


def test_unknown_option_rejected(planted, tmp_path):
    with pytest.raises(FeatgapError, match="unknown key"):
        shift_features(test1=planted["test1"], test2=planted["test2"], outputs=outputs_in(tmp_path, "shift"),
                       options={"alpa": 0.1})
