"""Gap, imbalance, overfit, misclass, embedding and class counts on planted data."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps
from test_analysis_fixtures import planted, planted_eval  # noqa: F401 - fixtures

from scripts.analysis_common import class_counts, main as counts_main
from scripts.embedding import embedding
from scripts.featio import FeatgapError, run_cli
from scripts.gap import gap
from scripts.imbalance import imbalance
from scripts.misclass import correct_vs_misclassified, misclass
from scripts.overfit import overfit


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
                  class_counts=counts, out_dir=tmp_path, options={"top_k": 5}, head_name="linear")
    _summary_contract(summary, tmp_path)
    table = pd.read_csv(tmp_path / "per_class.csv")
    hard = planted["hard_classes"]
    assert sorted(table["class"].head(len(hard))) == hard
    n = summary["numbers"]
    assert [r["class"] for r in n["top_classes"][: len(hard)]] == table["class"].head(len(hard)).tolist()
    assert n["top_classes"][0]["train_rows"] == planted["counts"]["train"][n["top_classes"][0]["class"]]
    ref_t = sps.ttest_rel(table["acc_test1"], table["acc_test2"])
    ref_w = sps.wilcoxon(table["acc_test1"], table["acc_test2"])
    assert n["paired_t"] == pytest.approx(ref_t.statistic, rel=1e-9)
    assert n["paired_t_p"] == pytest.approx(ref_t.pvalue, rel=1e-9)
    assert n["wilcoxon_p"] == pytest.approx(ref_w.pvalue, rel=1e-9)
    assert n["mean_drop"] > 0 and n["paired_t_p"] < 0.05


def test_imbalance_spearman(planted, planted_eval, counts, tmp_path):
    summary = imbalance(class_counts=counts, metrics1=planted_eval["test1"] / "metrics.json",
                        metrics2=planted_eval["test2"] / "metrics.json", out_dir=tmp_path, head_name="linear")
    _summary_contract(summary, tmp_path)
    table = pd.read_csv(tmp_path / "per_class.csv")
    ref = sps.spearmanr(table["train_rows"], table["drop"])
    assert summary["numbers"]["spearman_drop"]["rho"] == pytest.approx(ref.statistic, rel=1e-9)
    assert summary["numbers"]["spearman_drop"]["p"] == pytest.approx(ref.pvalue, rel=1e-9)
    # The demo's class sizes are unrelated to the planted difficulty.
    assert "does not explain" in summary["verdict"]


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
    summary = overfit(selection_path=tmp_path / "selection.json", history_path=tmp_path / "history.csv",
                      metrics1=planted_eval["test1"] / "metrics.json", metrics2=planted_eval["test2"] / "metrics.json",
                      out_dir=tmp_path / "out", head_name="linear")
    _summary_contract(summary, tmp_path / "out")
    n = summary["numbers"]
    assert n["train_acc"] == pytest.approx(0.80) and n["holdout_acc"] == pytest.approx(0.74)
    assert n["train_minus_holdout"] == pytest.approx(0.06)
    assert n["winner_on_grid_edge"] == {"lr": "low", "weight_decay": "low"}
    acc = pd.read_csv(tmp_path / "out" / "accuracy.csv")
    assert acc["split"].tolist() == ["train", "holdout", "test1", "test2"]
    assert len(pd.read_csv(tmp_path / "out" / "grid.csv")) == 4
    assert "overfitting is material" in summary["verdict"] and "grid may be too narrow" in summary["verdict"]


def test_misclass_columns_and_planted_difference(planted, planted_eval, tmp_path):
    summary = misclass(predictions=planted_eval["test2"] / "predictions.parquet", manifest=planted["test2"],
                       out_dir=tmp_path, options={"clusters": 2}, head_name="linear", test_name="test2")
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
    res = correct_vs_misclassified(x, ~wrong)
    ref = sps.ttest_ind(x[wrong], x[~wrong], equal_var=False)
    np.testing.assert_allclose(res["t"], ref.statistic, rtol=1e-9)
    np.testing.assert_allclose(res["q"], sps.false_discovery_control(ref.pvalue), rtol=1e-9)
    assert set(res.loc[res["q"] < 0.05, "feature"]) == set(range(6, 12))  # means differ only there
    assert (res.loc[:5, "var_diff"] > 0.5).all()
    from scripts.misclass import cluster

    clustered, groups = cluster(res.assign(q=np.where(res["feature"] < 12, 1e-6, 0.5)), 0.05, 2, 0)
    members = sorted(sorted(g["features"]) for g in groups)
    assert members == [list(range(6)), list(range(6, 12))]


def test_misclass_needs_both_outcomes():
    with pytest.raises(FeatgapError, match="at least 2 correct and 2 misclassified"):
        correct_vs_misclassified(np.zeros((5, 3)), np.ones(5, bool))


def test_embedding(planted, planted_eval, tmp_path):
    summary = embedding(test1=planted["test1"], test2=planted["test2"],
                        predictions1=planted_eval["test1"] / "predictions.parquet",
                        predictions2=planted_eval["test2"] / "predictions.parquet", out_dir=tmp_path,
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
    summary = misclass(predictions=tmp_path / "predictions.parquet", manifest=planted["test2"], out_dir=tmp_path / "o")
    assert "too few" in summary["verdict"] and summary["numbers"]["n_significant"] == 0
    assert (tmp_path / "o" / "clusters.png").is_file()
