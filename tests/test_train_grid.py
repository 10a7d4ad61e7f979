"""train_grid: K stacked candidates behave exactly like K separate heads with torch's optimizers."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from scripts.lib.heads import build_net
from scripts.lib.training.grid import CandidateGrid, GridOptimizer, cosine_scale, grid_loss


@pytest.mark.parametrize("kind", ["adamw", "sgd"])
def test_grid_optimizer_matches_torch(kind):
    torch.manual_seed(0)
    grid = CandidateGrid(5, 3, [], 2, 0.0, 0, torch.device("cpu"))
    with torch.no_grad():
        for p in grid.params:
            p.value.normal_()
    lrs, wds = [0.01, 0.1], [0.5, 0.0]
    ref = [[p.value.detach().select(p.axis, k).clone().requires_grad_() for p in grid.params] for k in range(2)]
    cls = torch.optim.AdamW if kind == "adamw" else (lambda groups, lr: torch.optim.SGD(groups, lr=lr, momentum=0.9))
    ref_opts = [cls([{"params": [r[0]], "weight_decay": wds[k]}, {"params": [r[1]], "weight_decay": 0.0}], lr=lrs[k])
                for k, r in enumerate(ref)]
    opt = GridOptimizer(grid.params, kind, np.array(lrs), np.array(wds), momentum=0.9)
    x, y = torch.randn(7, 5), torch.randint(0, 3, (7,))
    for _ in range(5):
        loss, _, _ = grid_loss(grid.forward(x, train=True), y, 0.0, None)
        loss.backward()
        opt.step(1.0)
        for r, ropt in zip(ref, ref_opts):
            ropt.zero_grad()
            F.cross_entropy(x @ r[0] + r[1], y).backward()
            ropt.step()
    for k, r in enumerate(ref):
        torch.testing.assert_close(grid.params[0].value[:, k, :], r[0], atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(grid.params[1].value[k], r[1], atol=1e-6, rtol=1e-5)


def test_extract_matches_build_net():
    grid = CandidateGrid(6, 4, [8, 5], 3, 0.5, 0, torch.device("cpu"))
    with torch.no_grad():
        for p in grid.params:
            p.value.add_(torch.randn_like(p.value))  # make the candidates differ
    x = torch.randn(9, 6)
    logits = grid.forward(x, train=False)
    for k in range(3):
        net = build_net({"in_dim": 6, "num_classes": 4, "hidden": [8, 5], "dropout": 0.5}).eval()
        net.load_state_dict(grid.extract(k))
        torch.testing.assert_close(net(x), logits[:, k], atol=1e-5, rtol=1e-5)


def test_loss_is_per_candidate_mean_with_smoothing_and_weights():
    logits, y = torch.randn(10, 2, 4), torch.randint(0, 4, (10,))
    weight = torch.tensor([1.0, 2.0, 0.5, 1.5])
    loss, per, correct = grid_loss(logits, y, 0.1, weight)
    expected = [(F.cross_entropy(logits[:, k], y, label_smoothing=0.1, reduction="none") * weight[y]).sum()
                for k in range(2)]
    torch.testing.assert_close(per, torch.stack(expected))
    torch.testing.assert_close(loss, sum(expected) / 10)
    assert correct.tolist() == [(logits[:, k].argmax(1) == y).sum().item() for k in range(2)]


def test_cosine_schedule():
    scales = [cosine_scale(s, 100, 10) for s in range(100)]
    assert scales[0] == pytest.approx(0.1) and scales[9] == pytest.approx(1.0) and max(scales) == 1.0
    assert all(a >= b for a, b in itertools.pairwise(scales[9:])) and 0 < scales[-1] < 0.01


@pytest.mark.parametrize("smoothing,weighted", [(0.0, False), (0.1, True)])
def test_loss_gradient_matches_autograd(smoothing, weighted):
    logits = torch.randn(10, 3, 5, dtype=torch.float64, requires_grad=True)
    y = torch.randint(0, 5, (10,))
    weight = torch.rand(5, dtype=torch.float64) + 0.5 if weighted else None
    loss, _, _ = grid_loss(logits, y, smoothing, weight)
    (grad,) = torch.autograd.grad(loss, logits)
    ref = sum((F.cross_entropy(logits[:, k], y, label_smoothing=smoothing, reduction="none")
               * (weight[y] if weighted else 1.0)).sum() for k in range(3)) / 10
    (ref_grad,) = torch.autograd.grad(ref, logits)
    torch.testing.assert_close(loss, ref)
    torch.testing.assert_close(grad, ref_grad)


# ---------------------------------------------------------------- the CUDA path, what a CPU can check
class _FakeStream:
    def __init__(self, name: str = "side"):
        self.name = name

    def wait_stream(self, other) -> None:
        pass


def _fake_cuda(monkeypatch, *, capture_fails: bool) -> dict:
    """Just enough of torch.cuda for StepRunner._capture on the CPU. Its `graph` behaves like
    torch.cuda.graph: the stream context is entered in __enter__ and left in __exit__ only after
    capture_end, which is where a failed capture raises."""
    state = {"current": _FakeStream("default")}

    class stream:  # torch.cuda.stream: a class, as torch's (nothing restored when dropped)
        def __init__(self, s):
            self.s = s

        def __enter__(self):
            self.previous, state["current"] = state["current"], self.s

        def __exit__(self, *args):
            state["current"] = self.previous

    class Graph:
        def __init__(self, graph, stream=None):
            self.ctx = stream_ctx(stream)

        def __enter__(self):
            self.ctx.__enter__()

        def __exit__(self, *args):
            if capture_fails:
                raise RuntimeError("CUDA error: operation not permitted when stream is capturing")
            self.ctx.__exit__(*args)

    stream_ctx = stream
    for name, value in {"Stream": _FakeStream, "stream": stream, "graph": Graph, "CUDAGraph": object,
                        "current_stream": lambda device=None: state["current"],
                        "set_stream": lambda s: state.__setitem__("current", s),
                        "get_rng_state": lambda device=None: None, "set_rng_state": lambda s, device=None: None,
                        "synchronize": lambda device=None: None}.items():
        monkeypatch.setattr(torch.cuda, name, value, raising=False)
    return state


def _runner(graphs: bool):
    from scripts.lib.training.grid import StepRunner

    cpu = torch.device("cpu")
    grid = CandidateGrid(6, 3, [], 2, 0.0, 0, cpu)
    opt = GridOptimizer(grid.params, "adamw", np.array([1e-2, 3e-2]), np.array([0.0, 0.1]))
    runner = StepRunner(grid, opt, smoothing=0.1, class_weight=None, device=cpu, autocast=None)
    runner.use_graph = graphs  # as on CUDA with train.cuda_graphs: true
    return runner, grid


def test_a_failed_graph_capture_restores_the_stream_and_trains_eagerly(monkeypatch):
    """torch.cuda.graph's __exit__ raises before it leaves the side stream; the runner
    must restore the stream, say why it trains eagerly and train exactly as eager execution."""
    state = _fake_cuda(monkeypatch, capture_fails=True)
    default = state["current"]
    x, y = torch.randn(8, 6, generator=torch.Generator().manual_seed(0)), torch.arange(8) % 3
    runner, grid = _runner(graphs=True)
    runner(x, y, 1.0)
    assert state["current"] is default, "the job was left on the capture's side stream"
    assert runner.graph is None and not runner.graphed and "operation not permitted" in runner.capture_error
    eager, eager_grid = _runner(graphs=False)
    eager(x, y, 1.0)
    for a, b in zip(grid.params, eager_grid.params):
        assert torch.equal(a.value, b.value)  # the warm-up steps were undone: one step, as eagerly


def test_selection_records_whether_the_step_was_graphed(tmp_path):
    from step_layout import outputs_in

    from scripts.data.generate_demo import DemoSpec
    from scripts.train.train_head import train_head
    from tests.train_helpers import make_dataset

    data = make_dataset(tmp_path / "d", DemoSpec(classes=4, dim=8), 20, 5, shards=1, row_group_rows=64)
    sel = train_head(data["manifest"], outputs_in(tmp_path / "o", "train_head"), name="lin",
                     head={"type": "linear", "lr": [1e-2], "weight_decay": [0.0], "epochs": 1, "batch_size": 16},
                     train={"device": "cpu", "holdout_fraction": 0.2, "threads": 1}, num_classes=4, seed=0)
    assert sel["graphed"] is False and sel["graph_capture_error"] is None  # the CPU runs eagerly


def test_train_threads_are_honoured_on_cuda_too(monkeypatch):
    """The CPU-side work of a CUDA job (temperature fit, gathers, host placement) uses train.threads."""
    from scripts.lib.device import configure_determinism

    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    before, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    try:
        torch.set_num_threads(2)
        configure_determinism(torch.device("cuda", 0), 1, 0)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
        torch.use_deterministic_algorithms(deterministic, warn_only=True)
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False


def test_bench_gpu_reuses_a_cached_train_split_only_for_the_same_shape(tmp_path):
    import importlib.util
    import json
    from pathlib import Path

    path = Path(__file__).resolve().parent / "benchmarks" / "bench_gpu.py"
    spec = importlib.util.spec_from_file_location("bench_gpu", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    first = bench.manifest_path(tmp_path, rows=1000, dim=16, classes=10)
    first.parent.mkdir(parents=True)
    first.write_text(json.dumps({"rows": 1000, "dim": 16}))
    assert bench.cached_manifest(tmp_path, rows=1000, dim=16, classes=10) == first
    for other in ({"rows": 2000, "dim": 16, "classes": 10}, {"rows": 1000, "dim": 32, "classes": 10},
                  {"rows": 1000, "dim": 16, "classes": 20}):
        assert bench.cached_manifest(tmp_path, **other) is None
