"""train.precision: which dtype a training step's matmuls use, and that the choice is real.

auto takes bf16 only where the hardware runs it natively (CUDA, CPUs with AMX-BF16 or AVX512_BF16);
the others are tested by pretending the CPU has or lacks them."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from step_layout import outputs_in

from scripts.data.generate_demo import DemoSpec
from scripts.lib import device as device_mod
from scripts.lib.device import training_autocast
from scripts.lib.featio.errors import FeatgapError
from scripts.lib.heads import predict_logits
from scripts.train.train_head import train_head
from tests.train_helpers import make_dataset

CPU = torch.device("cpu")
HEAD = {"type": "linear", "lr": [3e-3, 1e-2], "weight_decay": [1e-4], "epochs": 4, "batch_size": 64,
        "label_smoothing": 0.1, "refit": False, "calibrate": False}
SETTINGS = {"holdout_fraction": 0.1, "device": "cpu", "threads": 1}


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    root = tmp_path_factory.mktemp("precision")
    return make_dataset(root, DemoSpec(classes=10, dim=48, separation=0.5), 60, 40, shards=2, row_group_rows=128)


@pytest.mark.parametrize("amx", [True, False])
def test_auto_is_bf16_only_with_cpu_matrix_units(monkeypatch, amx):
    monkeypatch.setattr(device_mod, "cpu_has_native_bf16", lambda: amx)
    assert training_autocast(CPU, "auto") == (torch.bfloat16 if amx else None)
    assert training_autocast(CPU, "bf16") == torch.bfloat16  # insisting works everywhere (emulated without AMX)
    assert training_autocast(CPU, "float32") is None
    assert training_autocast(torch.device("cuda", 0), "auto") == torch.bfloat16
    assert training_autocast(torch.device("cuda", 0), "float32") is None


@pytest.mark.parametrize("amx, avx512_bf16, expected", [
    (True, False, torch.bfloat16), (False, True, torch.bfloat16), (True, True, torch.bfloat16), (False, False, None)])
def test_auto_is_bf16_with_amx_or_avx512_bf16(monkeypatch, amx, avx512_bf16, expected):
    """an AMD EPYC with AVX512_BF16 (no AMX) multiplies bf16 at 2.8× its float32 rate:
    native bf16 dot products are enough for `auto`, not only AMX tiles."""
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16, raising=False)
    assert training_autocast(CPU, "auto") == expected


def test_unknown_precision_is_refused():
    with pytest.raises(FeatgapError, match=r"train\.precision must be auto, bf16 or float32"):
        training_autocast(CPU, "fp16")


def test_matrix_unit_check_answers_a_bool():
    assert isinstance(device_mod.cpu_has_bf16_matrix_units(), bool)


def test_bf16_and_float32_train_different_heads_of_the_same_quality(small, tmp_path):
    """The option reaches the step (the weights differ) and bf16 costs no accuracy here; each
    precision is deterministic on its own."""
    results = {}
    for run, precision in enumerate(("float32", "bf16", "bf16")):
        out = tmp_path / f"{precision}-{run}"
        sel = train_head(small["manifest"], outputs_in(out, "train_head"), name="h", head=HEAD,
                         train={**SETTINGS, "precision": precision}, num_classes=10, seed=0)
        logits = predict_logits(out / "model.pt", small["test_features"])
        results[run] = (sel, (out / "model.pt").read_bytes(),
                             float((logits.argmax(1) == small["test_labels"]).mean()))
    (s32, b32, a32), (s16, b16, a16), (_, b16_again, _) = results.values()
    assert s32["precision"] == "float32" and s16["precision"] == "bfloat16"
    assert b32 != b16, "train.precision did not change the training step"
    assert b16 == b16_again, "bf16 training is not deterministic on the CPU"
    assert abs(a32 - a16) <= 0.02, f"test top-1 float32 {a32:.4f} vs bf16 {a16:.4f}"
    assert np.isfinite(s16["winner"]["holdout_loss"])
