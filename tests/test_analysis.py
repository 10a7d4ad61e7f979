"""Gap, imbalance, overfit, misclass, embedding and class counts on planted data."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from analysis_fixtures import planted, planted_eval  # noqa: F401 - fixtures
from scipy import stats as sps
from step_layout import outputs_in

from scripts.analysis.class_counts import main as counts_main
from scripts.analysis.embedding import embedding
from scripts.analysis.gap import gap
from scripts.analysis.imbalance import imbalance
from scripts.analysis.misclass import correct_vs_misclassified, misclass
from scripts.analysis.overfit import overfit
from scripts.lib.featio.cli import run_cli
from scripts.lib.featio.errors import FeatgapError


@pytest.fixture(scope="module")
def counts(planted, tmp_path_factory):
    out = tmp_path_factory.mktemp("counts") / "class_counts.csv"
    run_cli(counts_main, ["--train", str(planted["train"]), "--test1", str(planted["test1"]),
                          "--test2", str(planted["test2"]), "--num-classes", "20", "--out", str(out)])
    return out


def _summary_contract(summary: dict, out_dir) -> None:
    assert isinstance(summary["verdict"], str) and summary["verdict"].endswith(".")
    assert summary["figures"] and all(f.endswith(".png") for f in summary["figures"])
    for fig in summary["figures"]:
        assert (out_dir / fig.split("/")[-1]).stat().st_size > 1000
    assert (out_dir / summary["table"].split("/")[-1]).is_file()
    assert "meta" in summary and summary["meta"]["inputs"]
    on_disk = json.loads((out_dir / "summary.json").read_text())
    assert on_disk["verdict"] == summary["verdict"]


def test_class_counts(planted, counts):
    frame = pd.read_csv(counts)
    np.testing.assert_array_equal(frame["train_rows"], planted["counts"]["train"])
    np.testing.assert_array_equal(frame["test2_rows"], planted["counts"]["test2"])
    assert frame["name"][0] == "class_00"


def test_gap_ranks_planted_hard_classes_first(planted, planted_eval, counts, tmp_path):
    summary = gap(metrics1=planted_eval["test1"] / "metrics.json", metrics2=planted_eval["test2"] / "metrics.json",
                  class_counts=counts, outputs=outputs_in(tmp_path, "gap"), options={"top_k": 5, "permutations": 2000,
                                                                   "bootstrap": 500, "null_reps": 200},
                  head_name="linear")
    _summary_contract(summary, tmp_path)
    table = pd.read_csv(tmp_path / "per_class.csv")
    hard = planted["hard_classes"]
    assert sorted(table["class"].head(len(hard))) == hard  # ranked on shrunk drops
    assert table["drop_shrunk"].is_monotonic_decreasing
    n = summary["numbers"]
    assert [r["class"] for r in n["top_classes"][: len(hard)]] == table["class"].head(len(hard)).tolist()
    assert n["top_classes"][0]["train_rows"] == planted["counts"]["train"][n["top_classes"][0]["class"]]
    ref_t = sps.ttest_rel(table["acc_test1"], table["acc_test2"])
    assert n["paired_t"] == pytest.approx(ref_t.statistic, rel=1e-9)
    assert n["paired_t_p"] == pytest.approx(ref_t.pvalue, rel=1e-9)
    # The Wilcoxon test on per-class accuracies is invalid for 60 vs 40 images; it is gone.
    assert "wilcoxon_p" not in n
    assert n["mean_drop"] > 0 and n["gap_test_p"] < 0.05 and n["cmh_p"] < 0.05
    for key in ("mean_drop_ci95_images", "mean_drop_ci95_classes"):
        lo, hi = n[key]
        assert lo <= n["mean_drop"] <= hi and key in n["units"]
    # Planted hard classes concentrate the drop beyond what a uniform drop gives.
    lo, hi = n["share_of_drop_from_top_decile_null_95"]
    assert n["share_of_drop_from_top_decile"] > hi and n["share_of_drop_from_top_decile_p_upper"] < 0.05
    assert "stratified permutation test" in summary["verdict"]


def test_gap_plots_names_with_dollars(planted_eval, counts, tmp_path):
    """Class names reach matplotlib: `$\\foo{$` crashed mathtext, `price $5 - $10` rendered as math."""
    frame = pd.read_csv(counts, keep_default_na=False)
    frame.loc[:2, "name"] = ["$\\foo{$", "price $5 - $10", "$x$"]
    odd = tmp_path / "counts.csv"
    frame.to_csv(odd, index=False)
    summary = gap(metrics1=planted_eval["test1"] / "metrics.json", metrics2=planted_eval["test2"] / "metrics.json",
                  class_counts=odd, outputs=outputs_in(tmp_path / "o", "gap"), options={"top_k": 20, "permutations": 200,
                                                                     "bootstrap": 200, "null_reps": 50},
                  head_name="lin$ear")
    assert (tmp_path / "o" / "top_drops.png").stat().st_size > 1000
    assert "lin$ear" in summary["verdict"]


def test_imbalance_two_groups_when_counts_tie(tmp_path):
    """~89% of ImageNet classes have exactly 1,300 rows: no rank trend, a group comparison instead,
    and a non-significant result reads "no evidence"."""
    rng = np.random.default_rng(0)
    c = 200
    rows = np.where(rng.random(c) < 0.89, 1300, rng.integers(732, 1300, c))
    counts = pd.DataFrame({"class": np.arange(c), "name": [f"c{i}" for i in range(c)], "train_rows": rows,
                           "test1_rows": 50, "test2_rows": 10})
    counts.to_csv(tmp_path / "counts.csv", index=False)
    for split, n in (("test1", 50), ("test2", 10)):
        k = rng.binomial(n, 0.85, c)
        (tmp_path / f"{split}.json").write_text(json.dumps({"per_class": {
            "class": list(range(c)), "n": [n] * c, "correct": k.tolist(), "accuracy": (k / n).tolist(),
            "mean_p_label": (k / n).tolist()}}))
    summary = imbalance(class_counts=tmp_path / "counts.csv", metrics1=tmp_path / "test1.json",
                        metrics2=tmp_path / "test2.json", outputs=outputs_in(tmp_path / "o", "imbalance"), head_name="linear",
                        options={"permutations": 999})
    n = summary["numbers"]
    assert n["trend_estimable"] is False and n["modal_count_share"] > 0.8
    assert n["primary_test"].startswith("mean logit drop")
    assert n["primary_effect"] == pytest.approx(n["logit_drop_reduced"] - n["logit_drop_full"])
    reduced = rows < 1300
    assert n["n_reduced_classes"] == int(reduced.sum())
    if n["primary_p"] >= 0.05:
        assert "no evidence" in summary["verdict"] and "does not explain" not in summary["verdict"]
        assert n["evidence"] == "none"


def test_imbalance_significant_in_the_opposite_direction_says_so(tmp_path):
    """Classes with fewer rows dropping clearly *less* (p < α, effect < 0): no evidence for imbalance,
    and the verdict names the opposite direction instead of reading like a non-result."""
    rng = np.random.default_rng(1)
    c = 300
    rows = np.where(np.arange(c) % 3 == 0, 900, 1300)
    reduced = rows < 1300
    counts = pd.DataFrame({"class": np.arange(c), "name": [f"c{i}" for i in range(c)], "train_rows": rows,
                           "test1_rows": 50, "test2_rows": 10})
    counts.to_csv(tmp_path / "counts.csv", index=False)
    acc2 = np.where(reduced, 0.9, 0.6)  # reduced classes barely drop, full classes drop by ~30 points
    for split, n, acc in (("test1", 50, np.full(c, 0.92)), ("test2", 10, acc2)):
        k = rng.binomial(n, acc)
        (tmp_path / f"{split}.json").write_text(json.dumps({"per_class": {
            "class": list(range(c)), "n": [n] * c, "correct": k.tolist(), "accuracy": (k / n).tolist(),
            "mean_p_label": (k / n).tolist()}}))
    summary = imbalance(class_counts=tmp_path / "counts.csv", metrics1=tmp_path / "test1.json",
                        metrics2=tmp_path / "test2.json", outputs=outputs_in(tmp_path / "o", "imbalance"),
                        head_name="linear", options={"permutations": 999})
    n = summary["numbers"]
    assert n["primary_p"] < 0.05 and n["primary_effect"] < 0
    assert n["evidence"] == "none"
    assert "the opposite of what imbalance would cause" in summary["verdict"]
    assert "at α" not in summary["verdict"]


def _fake_training_outputs(root):
    """history.csv + selection.json in train_head's format: a 2×2 lr × wd grid, 4 epochs."""
    rows = []
    for cand, (lr, wd) in enumerate([(1e-3, 0.0), (1e-3, 1e-4), (1e-2, 0.0), (1e-2, 1e-4)]):
        for epoch in range(1, 5):
            rows.append({"phase": "grid", "epoch": epoch, "candidate": cand, "lr": lr, "weight_decay": wd,
                         "train_loss": 1 / epoch, "train_acc": 0.6 + 0.05 * epoch + 0.01 * cand,
                         "holdout_loss": 1.2 / epoch, "holdout_acc": 0.58 + 0.04 * epoch - 0.01 * cand,
                         "seconds": 1.0})
    pd.DataFrame(rows).to_csv(root / "history.csv", index=False)
    scores = [{"candidate": c, "lr": lr, "weight_decay": wd, "holdout_acc": 0.74 - 0.01 * c,
               "holdout_loss": 0.3, "best_epoch": 4}
              for c, (lr, wd) in enumerate([(1e-3, 0.0), (1e-3, 1e-4), (1e-2, 0.0), (1e-2, 1e-4)])]
    (root / "selection.json").write_text(json.dumps({
        "scores": scores, "winner": {"candidate": 0, "lr": 1e-3, "weight_decay": 0.0, "holdout_acc": 0.74,
                                     "holdout_loss": 0.3, "epochs": 4}, "refit": None}))


def test_overfit(planted_eval, tmp_path):
    _fake_training_outputs(tmp_path)
    summary = overfit(selection=tmp_path / "selection.json", history=tmp_path / "history.csv",
                      metrics1=planted_eval["test1"] / "metrics.json", metrics2=planted_eval["test2"] / "metrics.json",
                      outputs=outputs_in(tmp_path / "out", "overfit"), head_name="linear")
    _summary_contract(summary, tmp_path / "out")
    n = summary["numbers"]
    assert n["train_acc"] == pytest.approx(0.80) and n["holdout_acc"] == pytest.approx(0.74)
    assert n["train_minus_holdout"] == pytest.approx(0.06)
    assert n["winner_on_grid_edge"] == {"lr": "low", "weight_decay": "low"}
    acc = pd.read_csv(tmp_path / "out" / "accuracy.csv")
    assert acc["split"].tolist() == ["train", "holdout", "test1", "test2"]
    assert len(pd.read_csv(tmp_path / "out" / "grid.csv")) == 4
    assert "overfitting is material" in summary["verdict"] and "grid may be too narrow" in summary["verdict"]


def test_overfit_with_a_backbone_that_saw_train(planted_eval, tmp_path):
    """EVA-02 was fine-tuned on ImageNet train: train/holdout must not be read against the test sets."""
    _fake_training_outputs(tmp_path)
    summary = overfit(selection=tmp_path / "selection.json", history=tmp_path / "history.csv",
                      metrics1=planted_eval["test1"] / "metrics.json", metrics2=planted_eval["test2"] / "metrics.json",
                      outputs=outputs_in(tmp_path / "out", "overfit"), head_name="linear",
                      backbone_saw_train=True)
    verdict = summary["verdict"]
    assert summary["numbers"]["backbone_saw_train"] is True
    assert "backbone" in verdict and "not a like-for-like comparison" in verdict
    assert "predicts test set 1" not in verdict and "property of test set 2" not in verdict
    assert any("backbone_saw_train" in c for c in summary["caveats"])
    # Its own reading: no bound on overfitting can be given here (a description, never a part of the gap).
    reading = summary["reading"]
    assert reading["name"] == "overfit" and not reading["estimable"] and "evidence" not in summary, reading
    assert "backbone" in reading["sentence"] and "far larger" not in reading["sentence"]


def test_misclass_columns_and_planted_difference(planted, planted_eval, tmp_path):
    summary = misclass(predictions=planted_eval["test2"] / "predictions.parquet", manifest=planted["test2"],
                       outputs=outputs_in(tmp_path, "misclass"), options={"clusters": 2}, head_name="linear", test_name="test2")
    _summary_contract(summary, tmp_path)
    table = pd.read_csv(tmp_path / "features.csv")
    assert len(table) == planted["spec"].dim
    for col in ("mean_correct", "mean_misclassified", "mean_diff", "var_correct", "var_misclassified", "t", "p", "q",
                "cluster"):
        assert col in table
    # Planted: misclassified rows get a larger variance in the first 6 and a shifted mean in the next 6.
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3000, 30))
    wrong = rng.random(3000) < 0.3
    x[wrong, :6] *= 1.6
    x[wrong, 6:12] += 0.4
    res = correct_vs_misclassified(x, ~wrong)  # one class: no adjustment, Welch = within
    ref = sps.ttest_ind(x[wrong], x[~wrong], equal_var=False)
    np.testing.assert_allclose(res["t_unadjusted"], ref.statistic, rtol=1e-9)
    np.testing.assert_allclose(res["q_unadjusted"], sps.false_discovery_control(ref.pvalue), rtol=1e-9)
    assert set(res.loc[res["q"] < 0.05, "feature"]) == set(range(6, 12))  # means differ only there
    assert (res.loc[:5, "var_diff"] > 0.5).all()
    from scripts.analysis.misclass import cluster

    _, groups = cluster(res.assign(q=np.where(res["feature"] < 12, 1e-6, 0.5)), 0.05, 2, 0)
    members = sorted(sorted(g["features"]) for g in groups)
    assert members == [list(range(6)), list(range(6, 12))]


def test_misclass_is_not_fooled_by_class_features():
    """Errors that depend on the class only, features that only tell classes apart: the raw
    comparison finds "misclassification features", the within-class one does not."""
    rng = np.random.default_rng(1)
    n_cls, per, d = 100, 10, 1000
    labels = np.repeat(np.arange(n_cls), per)
    x = rng.normal(size=(n_cls * per, d)) + rng.normal(0, 1.0, (n_cls, d))[labels]
    difficulty = rng.beta(2, 2, n_cls)
    correct = rng.random(n_cls * per) > difficulty[labels]
    raw = correct_vs_misclassified(x, correct)
    within = correct_vs_misclassified(x, correct, labels)
    # Per-feature level at 0.05: the raw comparison rejects far too often, the within-class one holds.
    assert (raw["p"] < 0.05).mean() > 0.09 and (raw["q"] < 0.05).sum() > 0
    assert (within["p"] < 0.05).mean() <= 0.06 and (within["q"] < 0.05).sum() == 0
    # ... while a real within-class effect is still found.
    x[~correct, :4] += 0.8
    found = correct_vs_misclassified(x, correct, labels)
    assert set(found.loc[found["q"] < 0.05, "feature"]) == set(range(4))


def test_misclass_compare(planted, planted_eval, tmp_path):
    from scripts.analysis.misclass_compare import misclass_compare

    for test in ("test1", "test2"):
        misclass(predictions=planted_eval[test] / "predictions.parquet", manifest=planted[test],
                 outputs=outputs_in(tmp_path / test, "misclass"), head_name="linear", test_name=test)
    summary = misclass_compare(features1=tmp_path / "test1" / "features.csv", features2=tmp_path / "test2" / "features.csv",
                      outputs=outputs_in(tmp_path / "cmp", "misclass_compare"), head_name="linear")
    _summary_contract(summary, tmp_path / "cmp")
    table = pd.read_csv(tmp_path / "cmp" / "compare.csv")
    t1 = pd.read_csv(tmp_path / "test1" / "features.csv")
    t2 = pd.read_csv(tmp_path / "test2" / "features.csv")
    z = (t2["within_diff"] - t1["within_diff"]) / np.sqrt(t1["within_se"] ** 2 + t2["within_se"] ** 2)
    np.testing.assert_allclose(table["z"], z, rtol=1e-9)
    n = summary["numbers"]
    assert n["evidence"] in ("none", "weak", "moderate") and n["n_features"] == planted["spec"].dim


def test_misclass_needs_both_outcomes():
    with pytest.raises(FeatgapError, match="at least 2 correct and 2 misclassified"):
        correct_vs_misclassified(np.zeros((5, 3)), np.ones(5, bool))


def test_embedding(planted, planted_eval, tmp_path):
    summary = embedding(test1=planted["test1"], test2=planted["test2"],
                        predictions1=planted_eval["test1"] / "predictions.parquet",
                        predictions2=planted_eval["test2"] / "predictions.parquet", outputs=outputs_in(tmp_path, "embedding"),
                        options={"per_set": 120, "tsne_iter": 250, "pca_components": 10}, head_name="linear")
    _summary_contract(summary, tmp_path)
    coords = pd.read_csv(tmp_path / "coords.csv")
    assert (coords.groupby("set").size() == 120).all()
    assert coords.groupby("set")["label"].nunique().tolist() == [20, 20]  # stratified
    assert {"pc1", "pc2", "tsne1", "tsne2", "correct"} <= set(coords.columns)
    n = summary["numbers"]
    assert 0 <= n["knn_same_set_share_pca"] <= 1 and n["explained_variance_pc1"] > 0


def test_misclass_perfect_head_does_not_fail(planted, planted_eval, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pq.read_table(planted_eval["test2"] / "predictions.parquet")
    table = table.set_column(table.schema.get_field_index("correct"), "correct",
                             pa.array(np.ones(table.num_rows, bool)))
    pq.write_table(table, tmp_path / "predictions.parquet")
    summary = misclass(predictions=tmp_path / "predictions.parquet", manifest=planted["test2"],
                       outputs=outputs_in(tmp_path / "o", "misclass"), head_name="linear", test_name="test2")
    assert "too few" in summary["verdict"] and summary["numbers"]["n_significant"] == 0
    assert (tmp_path / "o" / "clusters.png").is_file()
