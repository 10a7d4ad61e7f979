"""scripts/evaluate/evaluate.py: predictions, metrics (vs scikit-learn), confusions, names, errors."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from analysis_fixtures import planted, planted_eval  # noqa: F401 - fixtures
from sklearn import metrics as skm
from step_layout import output_argv, outputs_in

from scripts.evaluate.evaluate import evaluate, main
from scripts.lib import heads
from scripts.lib.analysis.common import load_class_names
from scripts.lib.featio.cli import run_cli
from scripts.lib.featio.errors import FeatgapError
from scripts.lib.featio.reader import read_split


def test_predictions_contract(planted, planted_eval):
    table = pq.read_table(planted_eval["test2"] / "predictions.parquet")
    assert table.column_names[:7] == ["row", "path", "label", "pred", "top5", "confidence", "correct"]
    top5_type = table.schema.field("top5").type
    assert pa.types.is_list(top5_type) and top5_type.value_type == pa.int16()
    assert str(table.schema.field("label").type) == "int16"
    frame = table.to_pandas()
    source = read_split(planted["test2"], features=True)
    np.testing.assert_array_equal(frame["row"], source.row)
    np.testing.assert_array_equal(frame["label"], source.label)
    assert list(frame["path"]) == list(source.path)
    logits = heads.predict_logits(heads.load_head(planted["head"]), source.features)
    np.testing.assert_array_equal(frame["pred"], logits.argmax(1))
    top5 = np.stack(frame["top5"].to_numpy())
    assert (top5[:, 0] == frame["pred"]).all()
    np.testing.assert_array_equal(top5, np.argsort(-logits, axis=1, kind="stable")[:, :5])
    assert (frame["correct"] == (frame["label"] == frame["pred"])).all()
    prob = torch.softmax(torch.tensor(logits, dtype=torch.float64), 1).numpy()
    np.testing.assert_allclose(frame["confidence"], prob.max(1), rtol=1e-6)


def test_metrics_match_sklearn(planted, planted_eval):
    m = json.loads((planted_eval["test1"] / "metrics.json").read_text())
    frame = pd.read_parquet(planted_eval["test1"] / "predictions.parquet")
    source = read_split(planted["test1"], features=True)
    prob = torch.softmax(torch.tensor(heads.predict_logits(heads.load_head(planted["head"]), source.features),
                                      dtype=torch.float64), 1).numpy()
    y, p = frame["label"].to_numpy(), frame["pred"].to_numpy()
    got = m["metrics"]
    assert got["top1"] == pytest.approx(skm.accuracy_score(y, p), rel=1e-12)
    assert got["top5"] == pytest.approx(skm.top_k_accuracy_score(y, prob, k=5), rel=1e-12)
    assert got["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y, p), rel=1e-9)
    pr, rc, f1, _ = skm.precision_recall_fscore_support(y, p, average="macro", zero_division=0)
    assert (got["macro_precision"], got["macro_recall"], got["macro_f1"]) == pytest.approx((pr, rc, f1), rel=1e-9)
    assert got["nll"] == pytest.approx(skm.log_loss(y, prob, labels=np.arange(prob.shape[1])), rel=1e-6)
    for key, (lo, hi) in m["ci95"].items():
        assert lo <= got[key] <= hi, key
    assert m["bootstrap"]["resamples"] == 100
    per_class = pd.DataFrame(m["per_class"])
    assert len(per_class) == planted["spec"].classes
    np.testing.assert_allclose(per_class["accuracy"], skm.recall_score(y, p, average=None), rtol=1e-12)
    assert m["meta"]["seed"] == 0 and m["meta"]["inputs"]


def test_confusions_sparse_and_complete(planted_eval):
    conf = pd.read_csv(planted_eval["test2"] / "confusions.csv")
    frame = pd.read_parquet(planted_eval["test2"] / "predictions.parquet")
    assert list(conf.columns) == ["true", "pred", "count", "true_name", "pred_name"]
    assert conf["count"].sum() == len(frame)
    assert (conf["count"] > 0).all() and not conf.duplicated(["true", "pred"]).any()
    ref = skm.confusion_matrix(frame["label"], frame["pred"], labels=np.arange(20))
    for row in conf.itertuples():
        assert ref[row.true, row.pred] == row.count
    assert (planted_eval["test2"] / "confused_pairs.png").stat().st_size > 1000


def test_seeded_and_repeatable(planted, planted_eval, tmp_path):
    evaluate(head_name="linear",
             head_path=planted["head"], manifest=planted["test2"], outputs=outputs_in(tmp_path, "evaluate"), num_classes=20,
             options={"bootstrap": 100}, seed=0)
    a = json.loads((tmp_path / "metrics.json").read_text())
    b = json.loads((planted_eval["test2"] / "metrics.json").read_text())
    for key in ("metrics", "ci95", "per_class"):
        assert a[key] == b[key]
    assert (tmp_path / "predictions.parquet").read_bytes() == (planted_eval["test2"] / "predictions.parquet").read_bytes()


def test_mlp_head_and_class_names(planted, tmp_path):
    torch.manual_seed(0)
    arch = {"in_dim": 48, "num_classes": 20, "hidden": [16], "dropout": 0.1}
    net = heads.build_net(arch)
    ckpt = heads.make_checkpoint(name="mlp", kind="mlp", arch=arch, state_dict=net.state_dict(),
                                 mean=np.zeros(48), std=np.ones(48), l2_normalize=True, hparams={})
    heads.save_head(tmp_path / "mlp" / "model.pt", ckpt)
    names = tmp_path / "names.txt"
    names.write_text("".join(f"thing {i}\n" for i in range(20)))
    m = evaluate(head_name="mlp", head_path=tmp_path / "mlp" / "model.pt", manifest=planted["test1"],
                 outputs=outputs_in(tmp_path / "out", "evaluate"),
                 num_classes=20, options={"bootstrap": 0, "class_names": str(names)})
    assert m["head"] == "mlp" and m["test"] == "test1" and m["ci95"] == {}
    assert m["per_class"]["name"][3] == "thing 3"
    conf = pd.read_csv(tmp_path / "out" / "confusions.csv")
    assert conf["true_name"].str.startswith("thing ").all()


def test_class_names_formats(tmp_path):
    assert load_class_names(None, 3) == ["class_0", "class_1", "class_2"]
    (tmp_path / "a.json").write_text(json.dumps({"0": ["n1", "tench"], "1": ["n2", "goldfish"]}))
    assert load_class_names(tmp_path / "a.json", 2) == ["tench", "goldfish"]
    (tmp_path / "b.txt").write_text("a\nb\n")
    with pytest.raises(FeatgapError, match="2 class names, expected 3"):
        load_class_names(tmp_path / "b.txt", 3)


def test_shipped_imagenet_names():
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "resources" / "imagenet_classes.txt"
    names = load_class_names(path, 1000)
    assert names[0] == "tench" and names[1] == "goldfish" and names[999] == "toilet tissue"
    assert names[134] == "crane" and names[517] == "crane"  # the bird and the machine
    assert names[638] == names[639] == "maillot"
    assert names[207] == "golden retriever" and names[409] == "analog clock" and names[954] == "banana"


def test_errors_are_clear(planted, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run_cli(main, ["--model", str(tmp_path / "missing.pt"), "--manifest", str(planted["test1"]),
                       *output_argv(tmp_path / "o", "evaluate"), "--num-classes", "20", "--head-name", "linear"])
    assert exit_info.value.code == 1
    assert "head file not found" in capsys.readouterr().err
    with pytest.raises(FeatgapError, match="head has 20 classes, config num_classes is 30"):
        evaluate(head_name="linear", head_path=planted["head"], manifest=planted["test1"], outputs=outputs_in(tmp_path / "o",
                                                                                          "evaluate"), num_classes=30,
                 options={})
    with pytest.raises(FeatgapError, match="unknown keys"):
        evaluate(head_name="linear", head_path=planted["head"], manifest=planted["test1"], outputs=outputs_in(tmp_path / "o",
                                                                                          "evaluate"), num_classes=20,
                 options={"bootstrapp": 3})
    assert not (tmp_path / "o" / "metrics.json").exists()


def test_class_names_are_escaped_for_matplotlib(planted, tmp_path):
    """`$\\foo{$` crashed mathtext in every evaluate job; `price $5 - $10` rendered as math."""
    names = tmp_path / "names.txt"
    odd = ["$\\foo{$", "price $5 - $10", "$x$", "a\\b"] + [f"thing {i}" for i in range(4, 20)]
    names.write_text("".join(f"{n}\n" for n in odd))
    m = evaluate(head_path=planted["head"], manifest=planted["test2"], outputs=outputs_in(tmp_path / "out",
                                                                                          "evaluate"), num_classes=20,
                 options={"bootstrap": 0, "class_names": str(names), "top_confused": 20}, head_name="lin$ear")
    assert m["per_class"]["name"][:4] == odd[:4]
    assert (tmp_path / "out" / "confused_pairs.png").stat().st_size > 1000


def test_intervals_resample_within_class_and_ece_is_debiased(planted, planted_eval):
    m = json.loads((planted_eval["test2"] / "metrics.json").read_text())
    assert m["bootstrap"]["unit"].startswith("images") and "within each class" in m["bootstrap"]["unit"]
    got = m["metrics"]
    assert got["ece"] == pytest.approx(got["ece_plugin"] - got["ece_calibrated_floor"], abs=1e-12)
    assert 0 < got["ece_calibrated_p"] <= 1 and got["ece_equal_width"] >= 0
    lo, hi = m["ci95"]["ece"]
    assert lo <= got["ece"] <= hi
    assert m["backbone_saw_train"] is False and m["calibration_caveat"] is None


def test_backbone_flag_is_stated(planted, tmp_path):
    m = evaluate(head_name="linear",
                 head_path=planted["head"], manifest=planted["test2"], outputs=outputs_in(tmp_path, "evaluate"), num_classes=20,
                 options={"bootstrap": 0}, backbone_saw_train=True)
    assert m["backbone_saw_train"] is True and "backbone was trained on" in m["calibration_caveat"]
