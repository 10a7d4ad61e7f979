"""train_head: determinism, global shuffle of class-sorted shards, outputs, selection, errors."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from step_layout import output_argv, outputs_in

from scripts.data.generate_demo import DemoSpec
from scripts.lib.featio.errors import FeatgapError
from scripts.lib.featio.jsonio import read_json
from scripts.lib.heads import load_checkpoint, predict_logits
from scripts.lib.training.data import load_train, stratified_holdout
from scripts.train.train_head import main, train_head
from tests.train_helpers import make_dataset, write_split_shards

FAST = {"type": "linear", "lr": [3e-3, 1e-2], "weight_decay": [1e-4, 1e-2], "epochs": 4, "batch_size": 128,
        "label_smoothing": 0.1}
SETTINGS = {"holdout_fraction": 0.1, "device": "cpu", "threads": 2}


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """12 classes × 32 features, class-sorted, 3 shards."""
    root = tmp_path_factory.mktemp("small")
    return make_dataset(root, DemoSpec(classes=12, dim=32, separation=0.5), 60, 30, shards=3, row_group_rows=100)


def test_same_seed_same_bytes(small, tmp_path):
    head = {**FAST, "type": "mlp", "hidden": [16], "dropout": 0.2, "lr": [1e-3, 1e-2], "weight_decay": [0.01]}
    for run in ("a", "b"):
        train_head(small["manifest"], outputs_in(tmp_path / run, "train_head"),
                   name="h", head=head, train=SETTINGS, num_classes=12, seed=3)
    assert (tmp_path / "a/model.pt").read_bytes() == (tmp_path / "b/model.pt").read_bytes()
    assert (tmp_path / "a/history.csv").read_text().count("\n") > 1
    train_head(small["manifest"], outputs_in(tmp_path / "c", "train_head"),
               name="h", head=head, train=SETTINGS, num_classes=12, seed=4)
    assert (tmp_path / "a/model.pt").read_bytes() != (tmp_path / "c/model.pt").read_bytes()


def test_outputs_and_round_trip(small, tmp_path):
    """Without refit the saved head is the selected candidate: applying it through
    scripts.lib.heads to the raw holdout rows must reproduce the holdout score of selection.json."""
    sel = train_head(small["manifest"], outputs_in(tmp_path, "train_head"), name="lin", head={**FAST, "refit": False},
                     train=SETTINGS, num_classes=12, seed=0)
    ckpt = torch.load(tmp_path / "model.pt", weights_only=True)
    assert load_checkpoint(tmp_path / "model.pt")["format"] == ckpt["format"] == "featgap.head/1"
    assert ckpt["kind"] == "linear" and ckpt["state_dict"]["0.weight"].shape == (12, 32)
    assert ckpt["hparams"]["lr"] == sel["winner"]["lr"]
    assert ckpt["mean"].shape == (32,) and abs(float(ckpt["mean"].abs().mean())) > 0.01  # real offsets
    _, holdout = stratified_holdout(small["train_labels"], 0.1, np.random.default_rng([0, 0]))
    logits = predict_logits(tmp_path / "model.pt", small["train_features"][holdout])
    acc = (logits.argmax(1) == small["train_labels"][holdout]).mean()
    assert acc == pytest.approx(sel["winner"]["holdout_acc"], abs=1e-9)
    saved = read_json(tmp_path / "selection.json")
    assert {"grid", "winner", "scores", "meta", "data", "refit"} <= set(saved)
    assert len(saved["grid"]) == 4 and saved["meta"]["seed"] == 0 and saved["refit"] is None
    assert saved["data"]["holdout_rows"] == len(holdout)
    rows = list(csv.DictReader((tmp_path / "history.csv").open()))
    assert len(rows) == 4 * 4 and {"lr", "train_loss", "train_acc", "holdout_loss", "holdout_acc"} <= set(rows[0])


def test_class_sorted_shards_are_shuffled_globally(tmp_path):
    """Every shard holds one class (as the class-sorted real file cut into parts). A per-shard
    or per-row-group shuffle gives one-class batches and a head that only knows the last classes."""
    classes, per = 6, 200
    rng = np.random.default_rng(0)
    means = rng.normal(size=(classes, 8)) * 3
    labels = np.repeat(np.arange(classes), per).astype(np.int16)
    feats = (means[labels] + rng.normal(size=(len(labels), 8))).astype(np.float32)
    manifest = write_split_shards(tmp_path / "train", labels, feats, shards=classes, row_group_rows=50)
    for budget in (1000, 0.02):  # in memory; streamed in pools of 256 rows
        data = load_train(manifest, num_classes=classes, holdout_fraction=0.1, seed=0,
                          memory_budget_mb=budget, batch_size=64)
        assert data.streaming == (budget < 1)
        seen = [len(np.unique(y.numpy())) for _, y in data.batches(data.fit_rows, 64, np.random.default_rng(1))]
        assert min(seen[:-1]) >= classes - 1, f"batches are not mixed across shards: {seen}"
    for budget in (1000, 0.02):
        train_head(manifest, outputs_in(tmp_path / f"h{budget}", "train_head"), name="lin", num_classes=classes, seed=0,
                   head={"lr": [5e-2], "epochs": 5, "batch_size": 64, "warmup_epochs": 0},
                   train={**SETTINGS, "memory_budget_mb": budget})
        pred = predict_logits(tmp_path / f"h{budget}/model.pt", feats).argmax(1)
        per_class = [(pred[labels == c] == c).mean() for c in range(classes)]
        assert min(per_class) > 0.9, per_class
    # Streaming serves the same batches as the in-memory matrix: the same model, byte for byte.
    assert (tmp_path / "h1000/model.pt").read_bytes() == (tmp_path / "h0.02/model.pt").read_bytes()


def test_stratified_holdout_keeps_tiny_classes():
    labels = np.repeat(np.arange(4), [1, 2, 50, 100])
    fit, hold = stratified_holdout(labels, 0.3, np.random.default_rng(0))
    assert set(np.unique(labels[fit])) == {0, 1, 2, 3}
    assert np.bincount(labels[hold], minlength=4).tolist() == [0, 1, 15, 30]
    assert len(np.intersect1d(fit, hold)) == 0 and len(fit) + len(hold) == len(labels)


def test_early_stopping_and_class_balanced(small, tmp_path):
    # lr = 0 never improves the holdout after the first epoch: stops after 1 + patience epochs.
    sel = train_head(small["manifest"], outputs_in(tmp_path, "train_head"),
                     name="lin", num_classes=12, seed=0, train=SETTINGS,
                     head={"lr": [0.0], "epochs": 10, "patience": 2, "class_balanced": True})
    assert sel["timing"]["grid_epochs"] == 3 and sel["refit"]["epochs"] == 1


def test_config_errors(small, tmp_path):
    run = lambda head, train=SETTINGS: train_head(small["manifest"], outputs_in(tmp_path, "train_head"),
                                                  name="x", head=head, train=train, num_classes=12)
    with pytest.raises(FeatgapError, match=r"unknown key"):
        run({"learning_rate": 1})
    with pytest.raises(FeatgapError, match=r"hidden widths"):
        run({"type": "mlp"})
    with pytest.raises(FeatgapError, match=r"holdout is empty"):
        run(FAST, {**SETTINGS, "holdout_fraction": 0.0})
    with pytest.raises(FeatgapError, match=r"row 600 has label 10, expected 0..9"):
        train_head(small["manifest"], outputs_in(tmp_path, "train_head"),
                   name="x", head=FAST, train=SETTINGS, num_classes=10)


def test_cli(small, tmp_path, capsys):
    main(["--manifest", str(small["manifest"]), *output_argv(tmp_path / "cli", "train_head"), "--name", "lin",
          "--options", json.dumps({"epochs": 1}), "--train-options", json.dumps(SETTINGS), "--num-classes", "12"])
    assert {p.name for p in (tmp_path / "cli").iterdir()} == {"model.pt", "history.csv", "selection.json"}
    from scripts.lib.featio.cli import run_cli

    with pytest.raises(SystemExit):
        run_cli(main, ["--manifest", str(small["manifest"]), *output_argv(tmp_path / "x", "train_head"), "--name", "x",
                       "--options", "{not json", "--num-classes", "12"])
    assert "featgap error: --options" in capsys.readouterr().err


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_path(small, tmp_path):
    sel = train_head(small["manifest"], outputs_in(tmp_path, "train_head"),
                     name="lin", head=FAST, train={**SETTINGS, "device": "cuda"},
                     num_classes=12, seed=0)
    assert sel["meta"]["device"].startswith("cuda")
    ref = train_head(small["manifest"], outputs_in(tmp_path / "cpu", "train_head"),
                     name="lin", head=FAST, train=SETTINGS, num_classes=12)
    # bf16 autocast on the GPU: close to, not identical with, the float32 CPU run.
    assert abs(sel["winner"]["holdout_acc"] - ref["winner"]["holdout_acc"]) < 0.1


def test_cuda_request_without_gpu_fails_clearly(small, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    with pytest.raises(FeatgapError, match=r"no CUDA device"):
        train_head(small["manifest"], outputs_in(tmp_path, "train_head"),
                   name="x", head=FAST, train={**SETTINGS, "device": "cuda"},
                   num_classes=12)


def test_temperature_calibration_lowers_holdout_nll_and_keeps_predictions(small, tmp_path):
    head = {**FAST, "refit": False}
    plain = train_head(small["manifest"], outputs_in(tmp_path / "plain", "train_head"),
                       name="h", head={**head, "calibrate": False},
                       train=SETTINGS, num_classes=12, seed=0)
    calibrated = train_head(small["manifest"], outputs_in(tmp_path / "cal", "train_head"),
                            name="h", head=head, train=SETTINGS,
                            num_classes=12, seed=0)
    assert plain["calibration"] is None
    cal = calibrated["calibration"]
    assert cal["holdout_nll_after"] <= cal["holdout_nll_before"] and cal["temperature"] != 1.0
    assert torch.load(tmp_path / "cal/model.pt", weights_only=True)["temperature"] == cal["temperature"]
    features = small["train_features"][:200]
    a = predict_logits(tmp_path / "plain/model.pt", features)
    b = predict_logits(tmp_path / "cal/model.pt", features)
    assert np.array_equal(a.argmax(1), b.argmax(1))
    np.testing.assert_allclose(b, a / cal["temperature"], rtol=1e-5, atol=1e-6)
