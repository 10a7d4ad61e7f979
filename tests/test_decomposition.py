"""Fast checks of the decomposition (seconds): Shapley values, empirical Bayes, the generator's twins,
terms + residual == gap exactly, determinism, and the step's outputs and summary block. The
validation against the true counterfactual shares is tests/test_decomposition_twins.py."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from scripts.analysis.decomposition import decomposition
from scripts.data.generate_demo import DemoSpec, FeatureModel, draw_split, generate, planted_causes, twin_name
from scripts.lib.decomposition.decompose import CAUSES, decompose, drift_explained
from scripts.lib.decomposition.eb import npmle_posterior_mean
from scripts.lib.decomposition.reverts import RevertData, fit
from scripts.lib.decomposition.shapley import shapley, shares_of_removals
from scripts.lib.heads import load_head, predict_logits
from scripts.train.train_head import train_head
from tests.step_layout import outputs_in
from tests.train_helpers import write_split_shards

SMALL = {"classes": 30, "dim": 32, "rank": 8, "separation": 0.6, "test1_per_class": 50, "test2_per_class": 10,
         "test2_noise": 1.2, "shift_size": 0.9, "hard_classes": 0, "label_noise": 0.1, "seed": 3}
HEAD = {"type": "linear", "lr": [3e-3], "weight_decay": [0.05], "epochs": 6, "batch_size": 128}


def test_shapley_of_an_additive_game_is_its_parts():
    parts = {"a": 1.0, "b": 2.0, "c": -0.5}
    assert shapley(lambda s: sum(parts[p] for p in s), tuple(parts)) == pytest.approx(parts)


def test_shapley_splits_an_interaction_equally_and_shares_sum_to_the_gap():
    causes = ("a", "b")
    # top-1 on the twins: each cause alone costs 5 points, both together 16 (6 of interaction)
    top1 = {frozenset(): 0.90, frozenset("a"): 0.85, frozenset("b"): 0.85, frozenset("ab"): 0.74}
    shares = shares_of_removals(top1, causes, top1_test1=0.91)
    assert shares["a"] == pytest.approx(8.0) and shares["b"] == pytest.approx(8.0)
    assert shares["residual"] == pytest.approx(1.0) and shares["gap"] == pytest.approx(17.0)
    assert shares["a"] + shares["b"] + shares["residual"] == pytest.approx(shares["gap"])


def test_npmle_keeps_separated_effects_and_shrinks_noise():
    rng = np.random.default_rng(0)
    theta = np.r_[np.zeros(90), np.full(10, 4.0)]
    z = theta + rng.standard_normal(100)
    post = npmle_posterior_mean(z, np.ones(100))
    assert np.abs(post[:90]).mean() < 0.3 * np.abs(z[:90]).mean()
    assert post[90:].mean() > 3.0


def test_drift_explained_tells_a_drifted_class_from_a_wrong_label():
    """Class 0 drifts 70 % of the way to class 1 (all its test-2 images); class 2 has one image of
    class 3 filed under its label. Flag every drifted image as class 1 and the filed image as class 3:
    the drifted ones are drift, the wrong label is not."""
    rng = np.random.default_rng(0)
    classes, dim = 8, 16
    means = 3.0 * rng.normal(size=(classes, dim))
    draw = lambda lab: means[lab] + rng.normal(size=(len(lab), dim))
    y1, y2 = np.repeat(np.arange(classes), 50), np.repeat(np.arange(classes), 10)
    x1, x2 = draw(y1), draw(y2)
    x2[y2 == 0] += 0.7 * (means[1] - means[0])
    wrong = np.flatnonzero(y2 == 2)[0]
    x2[wrong] = draw(np.array([3]))[0]
    flagged = (y2 == 0).copy()
    flagged[wrong] = True
    suggested = np.where(y2 == 0, 1, y2)
    suggested[wrong] = 3
    data = RevertData(x1, y1, x2, y2, flagged, suggested, np.zeros(len(y2), bool), means)
    drift = drift_explained(data, fit(data), x2, y2, flagged, suggested)
    assert drift[y2 == 0].all() and not drift[wrong] and not drift[~flagged].any()


def test_twins_are_the_same_draws_with_causes_removed():
    spec = DemoSpec(**SMALL)
    model = FeatureModel(spec)
    assert planted_causes(spec) == ("mean_shift", "difficulty", "label_noise")
    full, y = draw_split(model, "test2", spec.test2_per_class, planted_causes(spec))
    assert np.array_equal(full, draw_split(model, "test2", spec.test2_per_class)[0])  # default: every cause
    none, y0 = draw_split(model, "test2", spec.test2_per_class, ())
    assert np.array_equal(y, y0) and not np.array_equal(full, none)
    # without shift, noise and flips test set 2 is test set 1's distribution: same spread of features
    x1, _ = draw_split(model, "test1", spec.test1_per_class)
    assert none.std() == pytest.approx(x1.std(), rel=0.05)
    assert twin_name(frozenset({"label_noise", "mean_shift"})) == "mean_shift+label_noise"
    assert twin_name(()) == "none"


def test_generate_writes_every_twin(tmp_path):
    spec = DemoSpec(classes=6, dim=8, rank=2, train_scale=0.005, label_noise=0.2, twins=True)
    truth = generate(tmp_path, spec)
    index = json.loads((tmp_path / "twins" / "twins.json").read_text())
    assert index == truth["twins"]
    assert index["causes"] == ["mean_shift", "difficulty", "class_concentrated", "label_noise"]
    assert len(index["files"]) == 16
    full = index["files"]["+".join(index["causes"])]
    assert (tmp_path / "twins" / full).read_bytes() == (tmp_path / "test2.csv").read_bytes()
    assert "twins" not in generate(tmp_path / "plain", DemoSpec(classes=6, dim=8, rank=2, train_scale=0.005))


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Small planted data (shift + noise + 10 % flipped labels), a head trained by train_head,
    and the same data as Parquet shards with train_reference's class means."""
    root = tmp_path_factory.mktemp("decomposition")
    spec = DemoSpec(**SMALL)
    model = FeatureModel(spec)
    x, y = draw_split(model, "train", 40)
    manifest = write_split_shards(root / "train", y.astype(np.int16), x, shards=1)
    train_head(manifest, outputs_in(root / "head", "train_head"), name="linear", head=HEAD,
               train={"device": "cpu", "threads": 1, "holdout_fraction": 0.1}, num_classes=spec.classes, seed=0)
    x1, y1 = draw_split(model, "test1", spec.test1_per_class)
    x2, y2 = draw_split(model, "test2", spec.test2_per_class)
    means = np.stack([x[y == c].mean(0) for c in range(spec.classes)])
    np.savez(root / "train_reference.npz", class_means=means.astype(np.float32))
    manifests = {t: write_split_shards(root / t, yy.astype(np.int16), xx, shards=1)
                 for t, xx, yy in (("test1", x1, y1), ("test2", x2, y2))}
    head = load_head(root / "head" / "model.pt")
    return {"root": root, "x1": x1, "y1": y1, "x2": x2, "y2": y2, "means": means, **manifests,
            "logits": lambda f: predict_logits(head, f).astype(np.float64)}


def test_terms_and_residual_sum_to_the_gap_and_are_deterministic(world):
    w = world
    args = (w["x1"], w["y1"], w["x2"], w["y2"], w["means"], w["logits"])
    a, b = decompose(*args, bootstrap=20, seed=5), decompose(*args, bootstrap=20, seed=5)
    assert sum(a.terms.values()) + a.residual == pytest.approx(a.gap, abs=1e-9)
    top1 = [100 * float((w["logits"](x).argmax(1) == y).mean()) for x, y in ((w["x1"], w["y1"]), (w["x2"], w["y2"]))]
    assert a.gap == pytest.approx(top1[0] - top1[1], abs=1e-9)
    assert a.terms == b.terms and a.ci95 == b.ci95
    for key, (lo, hi) in a.ci95.items():
        assert lo <= hi, key


def test_step_writes_the_block_the_report_reads(world, tmp_path):
    w = world
    line = tmp_path / "line.json"
    line.write_text(json.dumps({"heads": {"linear": {"test1_top1": 80.0, "expected_test2_top1": 71.5}}}))
    files = outputs_in(tmp_path / "out", "decomposition")
    summary = decomposition(model=w["root"] / "head" / "model.pt", test1=w["test1"], test2=w["test2"],
                            train_reference=w["root"] / "train_reference.npz", outputs=files,
                            options={"bootstrap": 20}, seed=1, head_name="linear", reference_line=line)
    block = json.loads(files["summary"].read_text())["decomposition"]
    assert block == json.loads(json.dumps(summary["decomposition"]))
    assert set(block) == {"method", "unit", "gap", "terms", "residual", "expected_gap"}
    assert "Zhang" in block["method"] and "Northcutt" in block["method"]
    assert block["unit"] == "classes resampled (a class brings its test-1 and test-2 images)"
    assert [t["id"] for t in block["terms"]] == list(CAUSES)
    assert block["expected_gap"] == pytest.approx(8.5)
    # exactly: the residual is the gap minus the terms
    assert sum(t["points"] for t in block["terms"]) + block["residual"]["points"] == block["gap"]["points"]
    for t in block["terms"]:
        assert set(t) == {"id", "title", "points", "ci95", "level", "sentence"}
        assert t["level"] in ("none", "weak", "moderate", "strong")
        assert "caused by" not in t["sentence"]
        if t["ci95"][0] <= 0 <= t["ci95"][1]:
            assert "no evidence" in t["sentence"].lower() and t["level"] == "none"
        else:
            assert "accounts for" in t["sentence"]
    terms = pd.read_csv(files["table"])
    assert list(terms["term"]) == [*CAUSES, "residual"]
    issues = pd.read_csv(files["label_issues"])
    assert list(issues.columns) == ["row", "path", "label", "suggested", "score"]
    assert len(issues) > 0 and (issues["label"] != issues["suggested"]).all()
    assert issues["score"].is_monotonic_decreasing
    assert files["figure"].stat().st_size > 0
