"""Successive halving: the rungs, dropping candidates without disturbing the survivors, and a winner
as good as the full grid's for a third of the candidate-epochs."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from step_layout import outputs_in

from scripts.data.generate_demo import DemoSpec
from scripts.lib.training.config import HeadConfig, parse_config
from scripts.lib.training.grid import CandidateGrid, GridOptimizer, grid_loss
from scripts.train.train_head import halving_rungs, train_head
from tests.train_helpers import make_dataset


def test_rungs():
    assert halving_rungs(parse_config(HeadConfig, {"halving_eta": 3, "halving_min_epochs": 1}, "heads.t"), 10) == [1, 3, 9]
    assert halving_rungs(parse_config(HeadConfig, {"halving_eta": 2, "halving_min_epochs": 2}, "heads.t"), 10) == [2, 4, 8]
    assert halving_rungs(parse_config(HeadConfig, {}, "heads.t"), 10) == [1, 2, 4, 8]  # the default: eta 2
    assert halving_rungs(parse_config(HeadConfig, {}, "heads.t"), 1) == []


@pytest.mark.parametrize("hidden", [[], [8]])
@pytest.mark.parametrize("kind", ["adamw", "sgd"])
def test_keep_leaves_the_survivors_exactly_as_they_were(hidden, kind):
    """Training candidates {0, 2} of a 3-grid after dropping 1 gives the same weights as training
    them inside the full grid (every candidate's gradient is its own)."""
    torch.manual_seed(0)
    x, y = torch.randn(16, 6), torch.randint(0, 4, (16,))

    def trained(drop_first: bool):
        grid = CandidateGrid(6, 4, hidden, 3, 0.0, 0, torch.device("cpu"))
        opt = GridOptimizer(grid.params, kind, np.array([0.01, 0.1, 0.03]), np.array([0.1, 0.0, 0.5]))
        for step in range(4):
            if drop_first and step == 2:
                keep = torch.tensor([0, 2])
                grid.keep(keep)
                opt.keep(keep)
            loss, _, _ = grid_loss(grid.forward(x, train=True), y, 0.1, None)
            loss.backward()
            opt.step(1.0)
        return grid

    full, pruned = trained(False), trained(True)
    assert pruned.k == 2
    for k_full, k_pruned in ((0, 0), (2, 1)):
        for name, value in full.extract(k_full).items():
            torch.testing.assert_close(pruned.extract(k_pruned)[name], value, rtol=1e-6, atol=1e-7)


def test_halving_matches_the_grid_winner_for_a_third_of_the_work(tmp_path):
    data = make_dataset(tmp_path, DemoSpec(classes=10, dim=32, separation=0.5), 100, 1, shards=2,
                        row_group_rows=128)
    head = {"type": "linear", "lr": [1e-4, 1e-3, 1e-2], "weight_decay": [1e-4, 1e-2, 1.0], "epochs": 6,
            "batch_size": 64, "label_smoothing": 0.1, "refit": False}
    train = {"device": "cpu", "threads": 1, "holdout_fraction": 0.2}
    grid = train_head(data["manifest"], outputs_in(tmp_path / "grid", "train_head"),
                      name="g", head=head, train=train, num_classes=10)
    halved = train_head(data["manifest"], outputs_in(tmp_path / "half", "train_head"), name="h",
                        head={**head, "selection": "halving", "halving_eta": 3},
                        train=train, num_classes=10)
    assert halved["halving"]["rungs"] == [1, 3] and len(halved["halving"]["survivors"]) == 1
    assert halved["winner"]["holdout_acc"] >= grid["winner"]["holdout_acc"] - 0.001
    # 9 candidates × 6 epochs against 9 × 1 + 3 × 2 + 1 × 3.
    assert grid["timing"]["candidate_epochs"] == 54 and halved["timing"]["candidate_epochs"] == 18
    assert grid["halving"] is None
