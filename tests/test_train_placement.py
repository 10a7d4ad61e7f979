"""The CUDA path's logic, checked on the CPU: device names, placement before allocation, one pool
at a time when streaming, and holdout selection scored in float32 like the saved head."""
from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
import torch
from step_layout import outputs_in

from scripts.data.generate_demo import DemoSpec
from scripts.lib.device import resolve_device
from scripts.lib.featio.errors import FeatgapError
from scripts.lib.heads import predict_logits
from scripts.lib.training import data as train_data
from scripts.lib.training.data import choose_placement, load_train, stratified_holdout
from scripts.train.train_head import train_head
from tests.train_helpers import make_dataset

SETTINGS = {"holdout_fraction": 0.1, "device": "cpu", "threads": 1}


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    root = tmp_path_factory.mktemp("placement")
    return make_dataset(root, DemoSpec(classes=10, dim=24, separation=0.45), 80, 20, shards=2, row_group_rows=64)


def test_cuda_names_resolve_to_an_explicit_index(monkeypatch):
    """torch.device("cuda") != torch.device("cuda:0") in torch, although a matrix moved to the
    former reports the latter: every CUDA name must resolve to an indexed device, made current."""
    assert torch.device("cuda") != torch.device("cuda:0")  # why resolve_device adds the index
    current = {"index": 1}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: current["index"])
    monkeypatch.setattr(torch.cuda, "set_device", lambda i: current.update(index=i))
    assert resolve_device("auto") == torch.device("cuda", 1)  # the current device, with its index
    assert resolve_device("cuda") == torch.device("cuda", 1)
    assert resolve_device("cuda:0") == torch.device("cuda", 0) and current["index"] == 0
    assert resolve_device("cuda") == torch.device("cuda", 0)  # cuda:0 became the current device
    with pytest.raises(FeatgapError, match="only 2 CUDA device"):
        resolve_device("cuda:2")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only answers")
def test_resolve_device_without_gpu():
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    for name in ("cuda", "cuda:0", "cuda:3"):
        with pytest.raises(FeatgapError, match="no CUDA device"):
            resolve_device(name)
    for name in ("gpu", "cuda0", "tpu"):
        with pytest.raises(FeatgapError, match="auto, cpu, cuda or cuda:N"):
            resolve_device(name)


def test_placement_is_decided_before_allocation(monkeypatch):
    """A matrix that fits the GPU goes there even when it exceeds the host budget (the host never
    holds it); otherwise the host budget decides between an in-memory matrix and streaming."""
    gb = 1 << 30
    cuda = torch.device("cuda", 0)
    monkeypatch.setattr(train_data, "_fits_on_device", lambda nbytes, device: nbytes <= 6 * gb)
    assert choose_placement(5 * gb, cuda, memory_budget_mb=1000) == "device"
    assert choose_placement(7 * gb, cuda, memory_budget_mb=12000) == "host"
    assert choose_placement(13 * gb, cuda, memory_budget_mb=12000) == "stream"
    cpu = torch.device("cpu")
    assert choose_placement(5 * gb, cpu, memory_budget_mb=12000) == "host"
    assert choose_placement(5 * gb, cpu, memory_budget_mb=1000) == "stream"


def test_device_placement_never_loads_the_host_matrix(small, monkeypatch):
    """With the matrix on the GPU, the host-matrix loader (which would pin or hold 5 GB on the
    host) must not run; emulated on the CPU by letting the 'device' be the CPU."""
    monkeypatch.setattr(train_data, "choose_placement", lambda *a: "device")
    monkeypatch.setattr(train_data, "_load_to_host", lambda *a: pytest.fail("host matrix allocated"))
    folder = small["manifest"]
    on_device = load_train(folder, num_classes=10, holdout_fraction=0.1, seed=0)
    monkeypatch.undo()
    in_host = load_train(folder, num_classes=10, holdout_fraction=0.1, seed=0, memory_budget_mb=1000)
    assert on_device.placement == "device" and in_host.placement == "host"
    # Same preprocessing and the same batches, whichever loader ran.
    np.testing.assert_allclose(on_device.prep.mean, in_host.prep.mean, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(on_device.matrix, in_host.matrix, rtol=1e-5, atol=1e-5)
    a = list(on_device.batches(on_device.fit_rows, 32, np.random.default_rng(5)))
    b = list(in_host.batches(in_host.fit_rows, 32, np.random.default_rng(5)))
    assert len(a) == len(b)
    for (xa, ya), (xb, yb) in zip(a, b):
        assert torch.equal(ya, yb)
        torch.testing.assert_close(xa, xb, rtol=1e-5, atol=1e-5)


def test_streaming_holds_one_pool_at_a_time(tmp_path):
    """Peak traced memory of a streamed epoch stays near one pool (two pools before the fix).
    256 features, so that the per-row index arrays (~40 bytes a row) are small beside a pool row."""
    wide = make_dataset(tmp_path, DemoSpec(classes=8, dim=256, separation=0.45), 200, 1, shards=2,
                        row_group_rows=100)
    folder = wide["manifest"]
    data = load_train(folder, num_classes=8, holdout_fraction=0.1, seed=0, memory_budget_mb=0.5,
                      batch_size=32)
    assert data.placement == "stream" and 0 < data.pool_rows < len(data.fit_rows) / 1.2
    pool_bytes = data.pool_rows * data.dim * 4
    tracemalloc.start()
    try:
        n = sum(len(y) for _, y in data.batches(data.fit_rows, 32, np.random.default_rng(0)))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert n == len(data.fit_rows)
    assert peak < 1.5 * pool_bytes, f"peak {peak} bytes for pools of {pool_bytes} bytes"


@pytest.mark.parametrize("hidden", [[], [16]])
def test_selection_scores_in_float32_like_the_saved_head(small, tmp_path, hidden):
    """Training under bf16 autocast (train.precision: bf16, as on CUDA and AMX CPUs): the holdout
    score that chose the winner must be the float32 score of the saved head on the same rows."""
    head = {"type": "mlp" if hidden else "linear", "hidden": hidden, "lr": [3e-3, 3e-2], "weight_decay": [1e-4],
            "epochs": 3, "batch_size": 64, "refit": False, "calibrate": False}
    sel = train_head(small["manifest"], outputs_in(tmp_path, "train_head"),
                     name="h", head=head, train={**SETTINGS, "precision": "bf16"}, num_classes=10, seed=0)
    assert sel["precision"] == "bfloat16"
    _, holdout = stratified_holdout(small["train_labels"], 0.1, np.random.default_rng([0, 0]))
    logits = predict_logits(tmp_path / "model.pt", small["train_features"][holdout])
    acc = float((logits.argmax(1) == small["train_labels"][holdout]).mean())
    assert acc == pytest.approx(sel["winner"]["holdout_acc"], abs=1e-12)
    # The loss too: a bf16 holdout pass often keeps every argmax but moves the loss by ~1e-4.
    labels = torch.from_numpy(small["train_labels"][holdout].astype(np.int64))
    loss = torch.nn.functional.cross_entropy(torch.from_numpy(np.asarray(logits, np.float64)), labels).item()
    assert loss == pytest.approx(sel["winner"]["holdout_loss"], rel=1e-5)
