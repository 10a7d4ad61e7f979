"""The CUDA training path on a real GPU (skipped, with its reason, where there is none).

Every device name × every placement of the train matrix × a linear grid of 4 candidates and an
MLP: same winner as the float32 CPU run (or one tied with it within 1 point of holdout accuracy,
bf16 noise; seeds 0–2) and holdout accuracy within 1 point; a training epoch with no host
synchronisation (Event.synchronize included); GPU memory within its bound, measured after a
warm-up so that no earlier test's cuBLAS workspaces decide it; no pinned host memory left cached
when the matrix lives on the GPU; same seed, same bytes; graph replay gives the eager bytes.
Each test sets what it relies on itself (configure_determinism), so any one runs alone.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from step_layout import outputs_in

from scripts.data.generate_demo import DemoSpec
from scripts.lib.device import configure_determinism, resolve_device
from scripts.lib.training.config import HeadConfig, parse_config
from scripts.lib.training.data import load_train
from scripts.lib.training.grid import CandidateGrid, GridOptimizer, StepRunner
from scripts.train.train_head import train_epoch, train_head
from tests.train_helpers import make_dataset

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")

CLASSES, DIM = 20, 64
LINEAR = {"type": "linear", "lr": [1e-4, 3e-3], "weight_decay": [1e-4, 1.0], "epochs": 4, "batch_size": 128,
          "label_smoothing": 0.1}
MLP = {"type": "mlp", "hidden": [128], "dropout": 0.1, "lr": [1e-4, 3e-3], "weight_decay": [1e-2], "epochs": 6,
       "batch_size": 128, "label_smoothing": 0.1}
# Budgets that force each placement on this small set: the GPU, host memory, pools of ~512 rows.
PLACEMENTS = {"device": {"placement": "device"}, "host": {"placement": "host"},
              "stream": {"placement": "stream", "memory_budget_mb": 1024 * DIM * 4 / 2**20}}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("gpu")
    return make_dataset(root, DemoSpec(classes=CLASSES, dim=DIM, separation=0.6), 300, 10, shards=3,
                        row_group_rows=256)


SEEDS = (0, 1, 2)
# Candidates whose CPU holdout accuracies lie this close tie within bf16 noise: either may win.
TIE = 0.01


@pytest.fixture(scope="module")
def cpu_runs(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("cpu")
    return {(name, seed): train_head(data["manifest"], outputs_in(out / f"{name}{seed}", "train_head"), name=name,
                                     head=head, train={"device": "cpu", "threads": 2, "holdout_fraction": 0.1,
                                                       "precision": "float32"},
                                     num_classes=CLASSES, seed=seed)
            for name, head in (("linear", LINEAR), ("mlp", MLP)) for seed in SEEDS}


def _tied_with_cpu_winner(sel: dict, ref: dict) -> bool:
    """The GPU's winner is the CPU's, or a candidate the CPU scored within TIE of its winner."""
    scores = {(s["lr"], s["weight_decay"]): s["holdout_acc"] for s in ref["scores"]}
    return scores[(sel["winner"]["lr"], sel["winner"]["weight_decay"])] >= ref["winner"]["holdout_acc"] - TIE


@pytest.mark.parametrize("device", ["auto", "cuda", "cuda:0"])
@pytest.mark.parametrize("placement", list(PLACEMENTS))
@pytest.mark.parametrize("head", ["linear", "mlp"])
def test_same_winner_as_cpu(data, cpu_runs, tmp_path, device, placement, head):
    """Over seeds 0–2 (every device name on seed 0 only: they name one device): the GPU's bf16
    winner ties with the CPU's float32 winner on each seed, and is the same candidate on most."""
    spec = LINEAR if head == "linear" else MLP
    seeds = SEEDS if device == "cuda" else SEEDS[:1]
    same = 0
    for seed in seeds:
        sel = train_head(data["manifest"], outputs_in(tmp_path / str(seed), "train_head"), name=head, head=spec,
                         train={"device": device, "holdout_fraction": 0.1, **PLACEMENTS[placement]},
                         num_classes=CLASSES, seed=seed)
        ref = cpu_runs[(head, seed)]
        assert sel["meta"]["device"] == "cuda:0"
        assert sel["data"]["placement"] == placement
        assert sel["graphed"] is True, sel["graph_capture_error"]
        assert _tied_with_cpu_winner(sel, ref), (seed, sel["winner"], ref["winner"])
        assert abs(sel["winner"]["holdout_acc"] - ref["winner"]["holdout_acc"]) <= 0.01
        same += (sel["winner"]["lr"], sel["winner"]["weight_decay"]) == (ref["winner"]["lr"],
                                                                           ref["winner"]["weight_decay"])
    assert same * 2 > len(seeds), f"the CPU's winner on {same} of {len(seeds)} seeds"


@pytest.mark.parametrize("placement", list(PLACEMENTS))
@pytest.mark.parametrize("head", ["linear", "mlp"])
def test_training_epoch_never_waits_for_the_gpu(data, placement, head, monkeypatch):
    """No host synchronisation in an epoch: what set_sync_debug_mode reports, and Event.synchronize
    and Stream.synchronize, which it does not. With the matrix on the GPU, none at all; from host
    memory (host, stream) only the staging's bounded wait: a pinned buffer is reused once the copy
    that read it two batches back has left it (scripts.lib.training.data._Staging)."""
    cfg = parse_config(HeadConfig, LINEAR if head == "linear" else MLP, f"heads.{head}")
    device = resolve_device("cuda")
    configure_determinism(device, 2, 0)  # as train_head does: not left to whichever test ran before
    budget = PLACEMENTS[placement].get("memory_budget_mb", 12000)
    ts = load_train(data["manifest"], num_classes=CLASSES, holdout_fraction=0.1, seed=0,
                    device=device, batch_size=cfg.batch_size, placement=placement, memory_budget_mb=budget)
    k = len(cfg.lr) * len(cfg.weight_decay)
    grid = CandidateGrid(DIM, CLASSES, cfg.hidden, k, cfg.dropout, 0, device)
    opt = GridOptimizer(grid.params, cfg.optimizer, np.full(k, 1e-3), np.full(k, 1e-2))
    runner = StepRunner(grid, opt, smoothing=0.1, class_weight=None, device=device, autocast=torch.bfloat16)
    rng = np.random.default_rng(0)
    # Warm-up epoch: the graph capture, allocations and library handles happen here.
    train_epoch(ts, runner, ts.fit_rows, rng, cfg.batch_size, 0, 100, 10)
    assert runner.graph is not None, "the training step was not captured in a CUDA graph"
    torch.cuda.synchronize()
    waits = []

    def recorded(kind):
        def wait(self, *args, **kwargs):
            import traceback

            waits.append((kind, [f.name for f in traceback.extract_stack()]))
            return original[kind](self, *args, **kwargs)
        return wait

    original = {"event": torch.cuda.Event.synchronize, "stream": torch.cuda.Stream.synchronize}
    monkeypatch.setattr(torch.cuda.Event, "synchronize", recorded("event"))
    monkeypatch.setattr(torch.cuda.Stream, "synchronize", recorded("stream"))
    torch.cuda.set_sync_debug_mode("error")
    try:
        loss_sum, correct, step = train_epoch(ts, runner, ts.fit_rows, rng, cfg.batch_size, 10, 100, 10)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert step > 10 and int(correct.sum()) > 0 and torch.isfinite(loss_sum).all()
    if placement == "device":
        assert not waits, waits[:3]
    else:
        assert all(kind == "event" and "copy" in stack for kind, stack in waits), waits[:3]
        assert len(waits) <= step - 10  # at most one per batch


def _cublas_workspace_bytes() -> int:
    """GPU memory a new stream's first bf16 and float32 matmuls keep (torch allocates one cuBLAS
    workspace per handle and stream, through its caching allocator, and keeps it)."""
    a = torch.ones(64, 64, device="cuda")
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    side = torch.cuda.Stream()
    with torch.cuda.stream(side):
        _ = a @ a
        with torch.autocast("cuda", dtype=torch.bfloat16):
            _ = a @ a
        del _
    torch.cuda.synchronize()
    return max(0, torch.cuda.memory_allocated() - before)


def test_gpu_memory_within_bound_and_no_pinned_cache(data, tmp_path):
    """Peak GPU memory: the matrix, labels and permutation, 5 copies of the grid's weights
    (weights, gradients, two AdamW moments, best snapshot) and the activations of one training
    and one evaluation batch, plus the cuBLAS workspace of the capture's new stream (measured).
    Measured from after a warm-up run, so that it does not depend on which tests created cuBLAS
    workspaces before (run alone, the first run creates them). Pinned host memory: nothing cached
    after loading to the GPU."""
    head = {**LINEAR, "refit": False}
    eval_batch = 4096
    train = {"device": "cuda", "holdout_fraction": 0.1, "eval_batch_size": eval_batch}
    train_head(data["manifest"], outputs_in(tmp_path / "warm", "train_head"), name="lin", head=head, train=train,
               num_classes=CLASSES, seed=0)  # warm-up: cuBLAS handles and the default stream's workspace
    workspace = _cublas_workspace_bytes()
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    sel = train_head(data["manifest"], outputs_in(tmp_path, "train_head"), name="lin", head=head, train=train,
                     num_classes=CLASSES, seed=0)
    peak = torch.cuda.max_memory_allocated() - base
    n, k = sel["data"]["rows"], len(sel["grid"])
    weights = (DIM + 1) * k * CLASSES * 4
    logits = lambda rows: rows * k * CLASSES * 4
    # Training activations twice: the captured graph's private pool and the eager last batch.
    bound = (n * DIM * 4 + 2 * n * 8 + 5 * weights
             + 8 * logits(head["batch_size"]) + 2 * head["batch_size"] * DIM * 6
             + 3 * logits(eval_batch) + eval_batch * DIM * 4 + workspace + (8 << 20))
    assert sel["data"]["placement"] == "device"
    assert peak <= bound, f"peak {peak / 2**20:.1f} MiB > bound {bound / 2**20:.1f} MiB"
    stats = torch.cuda.host_memory_stats() if hasattr(torch.cuda, "host_memory_stats") else None
    if stats is None:
        pytest.skip("this torch has no torch.cuda.host_memory_stats")
    # Only the per-epoch permutations (n × 8 bytes each) may be cached, never the matrix. torch
    # 2.13 names the pinned blocks it owns (active + cached) `allocated_bytes.current`; a missing
    # key must fail, not read as 0.
    assert "allocated_bytes.current" in stats, sorted(stats)
    assert stats["allocated_bytes.current"] <= 4 * n * 8 + (2 << 20), stats


def test_same_seed_same_bytes_on_gpu(data, tmp_path):
    for run in ("a", "b"):
        train_head(data["manifest"], outputs_in(tmp_path / run, "train_head"), name="m", head=MLP,
                   train={"device": "cuda", "holdout_fraction": 0.1}, num_classes=CLASSES, seed=1)
    assert (tmp_path / "a/model.pt").read_bytes() == (tmp_path / "b/model.pt").read_bytes()


def test_graph_replay_gives_the_eager_bytes(data, tmp_path):
    """The captured step replays what eager execution computes: an MLP with dropout and mixup (the
    device's generator and the host's mixup draws), same seed, cuda_graphs true vs false."""
    head = {**MLP, "mixup": 0.2}
    runs = {graphs: train_head(data["manifest"], outputs_in(tmp_path / str(graphs), "train_head"), name="m",
                               head=head, train={"device": "cuda", "holdout_fraction": 0.1, "cuda_graphs": graphs},
                               num_classes=CLASSES, seed=0)
            for graphs in (True, False)}
    assert runs[True]["graphed"] is True and runs[False]["graphed"] is False
    assert (tmp_path / "True/model.pt").read_bytes() == (tmp_path / "False/model.pt").read_bytes()


def test_successive_halving_on_the_gpu(data, tmp_path):
    """Halving rebuilds the captured step for the smaller grid at each rung: same survivors as on the CPU."""
    head = {**LINEAR, "lr": [1e-4, 1e-3, 3e-3], "weight_decay": [1e-4, 1e-2, 1.0], "selection": "halving",
            "halving_eta": 3}
    runs = {dev: train_head(data["manifest"], outputs_in(tmp_path / dev, "train_head"), name="h", head=head,
                            train={"device": dev, "holdout_fraction": 0.1}, num_classes=CLASSES, seed=0)
            for dev in ("cpu", "cuda")}
    assert runs["cuda"]["halving"]["rungs"] == runs["cpu"]["halving"]["rungs"] == [1, 3]
    assert runs["cuda"]["halving"]["survivors"] == runs["cpu"]["halving"]["survivors"]
    assert abs(runs["cuda"]["winner"]["holdout_acc"] - runs["cpu"]["winner"]["holdout_acc"]) <= 0.01


@pytest.mark.parametrize("change", [{"feature_noise": 0.3}, {"mixup": 0.2}, {"logit_adjustment": 1.0},
                                    {"pca_whiten": 32}])
def test_improve_variants_train_on_the_gpu(data, tmp_path, change):
    """The improve stage's training options inside the captured step: deterministic, and as good as
    the same variant on the CPU (within 2 points: their noise draws differ between devices)."""
    head = {**LINEAR, **change}
    runs = [train_head(data["manifest"], outputs_in(tmp_path / str(i), "train_head"), name="v", head=head,
                       train={"device": "cuda", "holdout_fraction": 0.1}, num_classes=CLASSES, seed=0)
            for i in range(2)]
    assert (tmp_path / "0/model.pt").read_bytes() == (tmp_path / "1/model.pt").read_bytes()
    cpu = train_head(data["manifest"], outputs_in(tmp_path / "cpu", "train_head"), name="v", head=head,
                     train={"device": "cpu", "holdout_fraction": 0.1}, num_classes=CLASSES, seed=0)
    assert abs(runs[0]["winner"]["holdout_acc"] - cpu["winner"]["holdout_acc"]) <= 0.02
