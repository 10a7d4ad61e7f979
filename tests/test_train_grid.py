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
