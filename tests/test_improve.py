"""The improve stage: exact McNemar, paired within-class intervals, and the verdict on planted cases."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import binomtest
from step_layout import outputs_in

from scripts.analysis import reference_line as rl
from scripts.data.generate_demo import DemoSpec, FeatureModel
from scripts.improve.improve_compare import (
    flag,
    improve,
    mcnemar_exact,
    paired_comparison,
    stratified_se,
)
from scripts.lib.featio.errors import FeatgapError
from scripts.lib.featio.jsonio import write_json
from scripts.lib.stats import inference
from scripts.train.train_head import train_head
from tests.train_helpers import make_dataset, write_split_shards

CLASSES, DIM = 10, 24


def test_mcnemar_exact_by_hand():
    base = np.array([1, 1, 0, 0, 1, 0], bool)
    var = np.array([1, 0, 1, 1, 1, 0], bool)  # 2 gains, 1 loss
    assert mcnemar_exact(base, var) == pytest.approx(1.0)
    gains = np.zeros(10, bool), np.ones(10, bool)
    assert mcnemar_exact(*gains) == pytest.approx(2 * 0.5**10)
    assert mcnemar_exact(base, base) == 1.0
    assert mcnemar_exact(*gains) == pytest.approx(binomtest(10, 10).pvalue)
    for b, c in ((3, 9), (0, 4), (7, 7), (12, 1)):
        base_ = np.r_[np.ones(b, bool), np.zeros(c, bool)]
        assert mcnemar_exact(base_, ~base_) == pytest.approx(binomtest(c, b + c).pvalue, rel=1e-12)


def test_mcnemar_holds_its_level_with_classes_as_clusters():
    """Two heads of equal accuracy whose errors share each class's difficulty (the design: classes of
    50 and 10 images with Beta(9,1) accuracies): the exact McNemar rejects at most ~5 %."""
    rng = np.random.default_rng(0)
    rejections, reps = 0, 2000
    for _ in range(reps):
        p = np.repeat(rng.beta(9, 1, 100), 10)
        base, var = rng.random(p.size) < p, rng.random(p.size) < p
        rejections += mcnemar_exact(base, var) < 0.05
    assert rejections / reps <= 0.06


def test_paired_interval_unit_and_point():
    labels = {t: np.repeat(np.arange(5), 4) for t in ("test1", "test2")}
    base = {t: np.tile([True, True, False, False], 5) for t in labels}
    var = {"test1": base["test1"].copy(), "test2": np.ones(20, bool)}
    out = paired_comparison(base, var, labels, n_boot=300, seed=0)
    assert out["test1"]["points"] == 0 and out["test1"]["ci95"] == [0, 0]
    assert out["test2"]["points"] == pytest.approx(50.0)
    lo, hi = out["test2"]["ci95"]
    assert lo <= 50.0 <= hi and lo > 0
    assert out["gap_change"]["points"] == pytest.approx(-50.0)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """Train shards, a test set 1 from the training distribution and a test set 2 whose features are
    all shifted by a constant (what test-time re-standardisation undoes); a baseline head."""
    root = tmp_path_factory.mktemp("improve")
    spec = DemoSpec(classes=CLASSES, dim=DIM, separation=0.9)
    data = make_dataset(root, spec, 80, 1, shards=1, row_group_rows=128)
    model, rng = FeatureModel(spec), np.random.default_rng(5)
    manifests = {}
    for test, per, shift in (("test1", 50, 0.0), ("test2", 10, 1.5)):
        labels = np.repeat(np.arange(CLASSES), per).astype(np.int16)
        feats = np.concatenate([model.sample(c, per, rng, "train") for c in range(CLASSES)]) + shift
        manifests[test] = write_split_shards(root / test, labels, feats.astype(np.float32), shards=1)
    head = {"type": "linear", "lr": [1e-2], "weight_decay": [1e-3], "epochs": 4, "batch_size": 64}
    train = {"device": "cpu", "threads": 1, "holdout_fraction": 0.1}
    train_head(data["manifest"], outputs_in(root / "base", "train_head"),
               name="base", head=head, train=train, num_classes=CLASSES)
    train_head(data["manifest"], outputs_in(root / "noise", "train_head"),
               name="noise", head={**head, "feature_noise": 0.5}, train=train,
               num_classes=CLASSES)
    return {"root": root, "train": data["manifest"], **manifests}


def test_test_time_restandardisation_is_found_to_help(setup, tmp_path):
    root = setup["root"]
    shutil.copy(root / "base/model.pt", tmp_path / "copy.pt")
    variants = {"same_head": {"kind": "retrain", "models": [str(tmp_path / "copy.pt")]},
                "noise": {"kind": "retrain", "models": [str(root / "noise/model.pt")], "set": {"feature_noise": 0.5}},
                "ensemble": {"kind": "ensemble", "models": [str(root / "base/model.pt"), str(root / "noise/model.pt")]},
                "restandardize": {"kind": "restandardize"}}
    summary = improve(root / "base/model.pt", variants, setup["test1"], setup["test2"],
                      outputs_in(tmp_path / "out", "improve_compare"),
                      baseline_name="base", bootstrap=300, seed=0)
    rows = {r["name"]: r for r in summary["variants"]}
    assert rows["same_head"]["delta_test2"]["points"] == 0 and rows["same_head"]["delta_test2"]["mcnemar_p"] == 1
    assert not rows["same_head"]["improves_test2"] and rows["same_head"]["flag"] == "within noise"
    fixed = rows["restandardize"]
    assert fixed["improves_test2"] and fixed["delta_test2"]["points"] > 10, fixed
    assert fixed["gap_change"]["points"] < 0 and summary["variants"][0]["name"] == "restandardize"
    assert summary["verdict"].startswith("restandardize improves test set 2 by +")
    assert fixed["flag"] == "improves test set 2" and not fixed["hurts_test2"]
    assert fixed["selected_on"].startswith("nothing to select") and rows["noise"]["selected_on"] == "holdout"
    saved = json.loads((tmp_path / "out/summary.json").read_text())
    assert {"baseline", "baseline_test1_top1", "baseline_test2_top1", "variants"} <= set(saved)
    assert {"points", "ci95", "mcnemar_p"} <= set(saved["variants"][0]["delta_test2"])
    assert (tmp_path / "out/improve.png").stat().st_size > 0 and (tmp_path / "out/variants.csv").exists()
    assert "reference_line" not in saved and "reference_line" not in saved["variants"][0]  # not configured


def test_flags_carry_the_stages_own_judgement():
    none = {"improves_test2": False, "hurts_test2": False, "hurts_test1": False, "gains_test2_by_losing_test1": False}
    assert flag(none) == "within noise"
    assert flag({**none, "hurts_test2": True, "hurts_test1": True}) == "loses on test set 2; loses on test set 1"
    assert flag({**none, "improves_test2": True}) == "improves test set 2"
    traded = {**none, "improves_test2": True, "hurts_test1": True, "gains_test2_by_losing_test1": True}
    assert flag(traded) == "gains on test set 2 only by losing on test set 1"


def test_stratified_se_is_the_within_class_bootstrap_variance():
    rng = np.random.default_rng(3)
    labels = np.repeat(np.arange(20), 10)
    correct = rng.random(labels.size) < np.repeat(rng.uniform(0.3, 1.0, 20), 10)
    draw = inference.stratified_resampler(labels)
    boot = [100 * correct[draw(rng)].mean() for _ in range(4000)]
    assert stratified_se(correct, labels) == pytest.approx(np.std(boot), rel=0.05)


def test_effective_robustness_of_every_variant_from_the_reference_line(setup, tmp_path):
    """With the line fitted on timm's results: the baseline and every variant get the expected test-2
    top-1 at their own test-1 top-1 and observed − expected with an interval around it."""
    root = setup["root"]
    timm = Path(__file__).resolve().parents[1] / "resources" / "timm-results"
    line = rl.fit_line(rl.read_pairs(timm / "results-imagenet.csv", timm / "results-imagenetv2-matched-frequency.csv",
                                     80.0))
    write_json(tmp_path / "line.json", {"line": line})
    shutil.copy(root / "base/model.pt", tmp_path / "copy.pt")
    summary = improve(root / "base/model.pt", {"same_head": {"kind": "retrain", "models": [str(tmp_path / "copy.pt")]},
                                               "restandardize": {"kind": "restandardize"}},
                      setup["test1"], setup["test2"], outputs_in(tmp_path / "out", "improve_compare"), baseline_name="base",
                      bootstrap=100,
                      reference_line=tmp_path / "line.json")
    ref = summary["reference_line"]
    assert ref["models"] == 1040 and ref["slope"] == pytest.approx(line["slope"])
    base = ref["baseline"]
    assert base["expected_test2_top1"] == pytest.approx(rl.expected_test2(line, summary["baseline_test1_top1"]))
    assert base["effective_robustness"] == pytest.approx(summary["baseline_test2_top1"] - base["expected_test2_top1"])
    rows = {r["name"]: r for r in summary["variants"]}
    assert rows["same_head"]["reference_line"] == base  # the same predictions: the same numbers
    fixed = rows["restandardize"]["reference_line"]
    lo, hi = fixed["ci95"]
    assert lo < fixed["effective_robustness"] < hi and hi - lo > 0
    assert fixed["effective_robustness"] > base["effective_robustness"]  # it undoes test set 2's shift
    table = (tmp_path / "out/variants.csv").read_text().splitlines()[0]
    assert "reference_line_effective_robustness" in table and "reference_line_lo" in table


def test_nothing_beyond_noise_is_said_plainly(setup, tmp_path):
    root = setup["root"]
    shutil.copy(root / "base/model.pt", tmp_path / "copy.pt")
    summary = improve(root / "base/model.pt", {"same_head": {"kind": "retrain", "models": [str(tmp_path / "copy.pt")]}},
                      setup["test1"], setup["test2"], outputs_in(tmp_path / "out", "improve_compare"), baseline_name="base",
                      bootstrap=100)
    assert summary["verdict"].startswith("No variant improves test set 2 over the primary head (base) beyond noise")


def test_an_inherited_variant_is_the_baseline_but_for_its_own_keys(setup, tmp_path):
    """improve.hyperparameters: inherit. With no key changed, one fit at the baseline's chosen lr,
    weight decay and epochs on the rows of its final fit reproduces the baseline's weights exactly
    (CPU): the paired comparison then measures the variant's own change and nothing else."""
    import torch

    from scripts.lib.heads import load_checkpoint as load_head

    root = setup["root"]
    data_manifest = setup["train"]
    head = {"type": "linear", "lr": [1e-2], "weight_decay": [1e-3], "epochs": 4, "batch_size": 64}
    train = {"device": "cpu", "threads": 1, "holdout_fraction": 0.1}
    same = train_head(data_manifest, outputs_in(tmp_path / "same", "train_head"), name="same", head=head,
                      train=train, num_classes=CLASSES, inherit_from=root / "base/selection.json")
    base, copy = load_head(root / "base/model.pt"), load_head(tmp_path / "same/model.pt")
    for key, value in base["state_dict"].items():
        assert torch.equal(value, copy["state_dict"][key]), key
    base_sel = json.loads((root / "base/selection.json").read_text())
    assert same["inherited"]["epochs"] == base_sel["winner"]["epochs"] and same["inherited"]["rows"] == "all"
    assert same["refit"]["rows"] == base_sel["refit"]["rows"] and same["scores"] == []
    assert same["winner"]["holdout_acc"] is None and same["calibration"] is None  # nothing selected
    # A changed key is the only difference: the same hyperparameters, other weights.
    noisy = train_head(data_manifest, outputs_in(tmp_path / "noisy", "train_head"), name="noisy",
                       head={**head, "feature_noise": 0.5, "lr": [0.5, 0.7]}, train=train, num_classes=CLASSES,
                       inherit_from=root / "base/selection.json")
    assert (noisy["winner"]["lr"], noisy["winner"]["weight_decay"]) == (1e-2, 1e-3)
    assert not torch.equal(load_head(tmp_path / "noisy/model.pt")["state_dict"]["0.weight"],
                           base["state_dict"]["0.weight"])
    with pytest.raises(FeatgapError, match="no winner"):
        write_json(tmp_path / "bad.json", {"head": "x"})
        train_head(data_manifest, outputs_in(tmp_path / "bad", "train_head"), name="bad", head=head, train=train,
                   num_classes=CLASSES, inherit_from=tmp_path / "bad.json")
