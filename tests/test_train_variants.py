"""Training variants of the improve stage: PCA whitening folded into the saved head, feature noise,
mixup and the logit-adjusted loss."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from step_layout import outputs_in

from scripts.data.generate_demo import DemoSpec
from scripts.lib.featio.errors import FeatgapError
from scripts.lib.heads import predict_logits
from scripts.lib.training.config import HeadConfig, parse_config
from scripts.lib.training.data import load_train, stratified_holdout, whitening_map
from scripts.train.train_head import regularisers, train_head
from tests.train_helpers import make_dataset, write_split_shards

BASE = {"type": "linear", "lr": [3e-3, 3e-2], "weight_decay": [1e-4], "epochs": 3, "batch_size": 64,
        "refit": False, "calibrate": False}
TRAIN = {"device": "cpu", "threads": 1, "holdout_fraction": 0.1}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("variants"), DemoSpec(classes=8, dim=24, separation=0.5), 80, 30,
                        shards=2, row_group_rows=64)


def test_whitening_map_whitens(data):
    ts = load_train(data["manifest"], num_classes=8, holdout_fraction=0.1, seed=0)
    m = whitening_map(ts, ts.fit_rows, 10)
    z = ts.features(ts.fit_rows) @ m.numpy()
    np.testing.assert_allclose(np.cov(z, rowvar=False, bias=True), np.eye(10), atol=1e-3)
    with pytest.raises(FeatgapError, match="pca_whiten"):
        whitening_map(ts, ts.fit_rows, 25)


@pytest.mark.parametrize("hidden", [[], [16]])
def test_pca_whitened_head_is_an_ordinary_head_on_raw_features(data, tmp_path, hidden):
    """The map is folded into the first layer: applying the saved head to raw holdout rows gives
    the holdout score selection saw."""
    head = {**BASE, "type": "mlp" if hidden else "linear", "hidden": hidden, "pca_whiten": 12}
    sel = train_head(data["manifest"], outputs_in(tmp_path, "train_head"),
                     name="p", head=head, train=TRAIN, num_classes=8, seed=0)
    ckpt = torch.load(tmp_path / "model.pt", weights_only=True)
    assert ckpt["arch"]["in_dim"] == 24 and ckpt["state_dict"]["0.weight"].shape[1] == 24
    _, holdout = stratified_holdout(data["train_labels"], 0.1, np.random.default_rng([0, 0]))
    logits = predict_logits(tmp_path / "model.pt", data["train_features"][holdout])
    assert float((logits.argmax(1) == data["train_labels"][holdout]).mean()) == pytest.approx(
        sel["winner"]["holdout_acc"], abs=1e-12)
    assert sel["winner"]["holdout_acc"] > 0.3  # chance: 0.125


@pytest.mark.parametrize("change", [{"feature_noise": 0.5}, {"mixup": 0.4}, {"logit_adjustment": 1.0}])
def test_regularised_training_is_deterministic_and_changes_the_head(data, tmp_path, change):
    plain = train_head(data["manifest"], outputs_in(tmp_path / "plain", "train_head"),
                       name="x", head=BASE, train=TRAIN, num_classes=8)
    runs = [train_head(data["manifest"], outputs_in(tmp_path / f"r{i}", "train_head"),
                       name="x", head={**BASE, **change}, train=TRAIN,
                       num_classes=8) for i in range(2)]
    assert (tmp_path / "r0/model.pt").read_bytes() == (tmp_path / "r1/model.pt").read_bytes()
    assert (tmp_path / "r0/model.pt").read_bytes() != (tmp_path / "plain/model.pt").read_bytes()
    assert runs[0]["winner"]["holdout_acc"] > 0.3 and plain["winner"]["holdout_acc"] > 0.3  # chance: 0.125


def test_logit_adjustment_offsets_by_the_log_prior():
    counts = np.array([90, 9, 1, 0])
    reg = regularisers(parse_config(HeadConfig, {"logit_adjustment": 2.0}, "heads.t"), counts, torch.device("cpu"), 0)
    expected = 2.0 * np.log(np.array([90, 9, 1, 1]) / 100)
    np.testing.assert_allclose(reg.logit_offset.numpy(), expected, rtol=1e-6)
    assert regularisers(parse_config(HeadConfig, {}, "heads.t"), counts, torch.device("cpu"), 0).logit_offset is None


def test_logit_adjusted_loss_favours_rare_classes(tmp_path):
    """Class 0 has 10× the rows of the others: the plain head predicts it more often on a balanced
    test set than the logit-adjusted one does."""
    rng = np.random.default_rng(0)
    means = rng.normal(size=(4, 6)) * 0.8
    counts = [400, 40, 40, 40]
    labels = np.repeat(np.arange(4), counts).astype(np.int16)
    feats = (means[labels] + rng.normal(size=(len(labels), 6))).astype(np.float32)
    manifest = write_split_shards(tmp_path / "train", labels, feats, shards=1, row_group_rows=128)
    test_y = np.repeat(np.arange(4), 200)
    test_x = (means[test_y] + rng.normal(size=(len(test_y), 6))).astype(np.float32)
    share = {}
    for name, tau in (("plain", 0.0), ("adjusted", 1.0)):
        train_head(manifest, outputs_in(tmp_path / name, "train_head"),
                   name=name, head={**BASE, "logit_adjustment": tau, "epochs": 6},
                   train=TRAIN, num_classes=4)
        share[name] = float((predict_logits(tmp_path / name / "model.pt", test_x).argmax(1) == 0).mean())
    assert share["adjusted"] < share["plain"], share
