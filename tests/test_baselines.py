"""baselines: SGD / LogisticRegression written as linear heads (same contract as train_head)."""
from __future__ import annotations

import csv

import numpy as np
import pytest
import torch
from step_layout import outputs_in

from scripts.data.generate_demo import DemoSpec
from scripts.lib.featio.errors import FeatgapError
from scripts.lib.featio.jsonio import read_json
from scripts.lib.heads import predict_logits
from scripts.train.train_baseline import MISSING_BIAS, linear_state, train_baseline
from tests.train_helpers import make_dataset

SETTINGS = {"holdout_fraction": 0.1, "threads": 2}


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("bl"), DemoSpec(classes=8, dim=16, separation=0.8), 60, 30, shards=3,
                        row_group_rows=64)


@pytest.mark.parametrize("baseline", [{"type": "sgd", "alpha": [1e-4, 1e-2], "epochs": 2, "chunk_rows": 100},
                                      {"type": "logreg", "C": [0.1, 1.0], "subsample": 200}])
def test_baseline_contract(small, tmp_path, baseline):
    train_baseline(small["manifest"], outputs_in(tmp_path, "train_baseline"),
                   name=baseline["type"], baseline=baseline, train=SETTINGS,
                         num_classes=8, seed=0)
    ckpt = torch.load(tmp_path / "model.pt", weights_only=True)
    assert ckpt["kind"] == "linear" and ckpt["state_dict"]["0.weight"].shape == (8, 16)
    acc = (predict_logits(ckpt, small["test_features"]).argmax(1) == small["test_labels"]).mean()
    assert acc > 0.5, acc  # 8 well-separated classes: far above chance (12.5%)
    saved = read_json(tmp_path / "selection.json")
    assert len(saved["scores"]) == 2 and saved["winner"]["candidate"] in (0, 1) and "meta" in saved
    if baseline["type"] == "logreg":
        assert saved["data"]["fit_rows_used"] == pytest.approx(200, abs=8) and saved["winner"]["converged"]
    rows = list(csv.DictReader((tmp_path / "history.csv").open()))
    assert rows and rows[0]["holdout_acc"] != ""
    # Same seed, same bytes.
    train_baseline(small["manifest"], outputs_in(tmp_path / "again", "train_baseline"),
                   name=baseline["type"], baseline=baseline, train=SETTINGS,
                   num_classes=8, seed=0)
    assert (tmp_path / "model.pt").read_bytes() == (tmp_path / "again/model.pt").read_bytes()


def test_logreg_logits_are_its_probabilities(small):
    """softmax(saved logits) == LogisticRegression.predict_proba, so evaluate's NLL/ECE are sklearn's."""
    from sklearn.linear_model import LogisticRegression

    x, y = small["train_features"], small["train_labels"]
    model = LogisticRegression(max_iter=2000).fit(x, y)
    state = linear_state(model, 8, 16)
    logits = torch.from_numpy(x) @ state["0.weight"].T + state["0.bias"]
    np.testing.assert_allclose(logits.softmax(1).numpy(), model.predict_proba(x), atol=1e-5)


def test_linear_state_binary_and_missing_classes():
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 3))
    y = np.where(x[:, 0] > 0, 3, 1)  # two of five classes present
    model = LogisticRegression().fit(x, y)
    state = linear_state(model, 5, 3)
    logits = torch.from_numpy(x.astype(np.float32)) @ state["0.weight"].T + state["0.bias"]
    assert state["0.bias"][[0, 2, 4]].eq(MISSING_BIAS).all()
    np.testing.assert_array_equal(logits.argmax(1).numpy(), model.predict(x))
    np.testing.assert_allclose(logits.softmax(1)[:, [1, 3]].numpy(), model.predict_proba(x), atol=1e-5)


def test_baseline_config_errors(small, tmp_path):
    with pytest.raises(FeatgapError, match="type must be sgd or logreg"):
        train_baseline(small["manifest"], outputs_in(tmp_path, "train_baseline"),
                       name="b", baseline={"type": "svm"}, train=SETTINGS, num_classes=8)
    with pytest.raises(FeatgapError, match="unknown key"):
        train_baseline(small["manifest"], outputs_in(tmp_path, "train_baseline"),
                       name="b", baseline={"type": "sgd", "lr": 1}, train=SETTINGS,
                       num_classes=8)
