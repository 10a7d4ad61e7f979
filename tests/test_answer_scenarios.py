"""Proof on planted causes: the whole answer (the workflow's own evaluate and analysis steps on
shards, the report's ranking of their evidence blocks) on generated data with one cause planted at
a time, and none. Small sizes (100 classes, 50 / 10 test images per class, as the real design):
~4 s per scenario and seed. What is simulated, and why: tests/answer_scenarios.py."""
from __future__ import annotations

import pytest
from answer_scenarios import EXPECTED_FIRST, SCENARIOS, run

SEEDS = (0, 1, 2)


@pytest.mark.parametrize("name", [n for n in SCENARIOS if n != "none"])
def test_the_planted_cause_ranks_first(name, tmp_path):
    for seed in SEEDS:
        answer = run(name, seed, tmp_path)
        assert answer["gap"]["significant"], (name, seed, answer["gap"])
        first = answer["causes"][0]
        assert first["id"] == EXPECTED_FIRST[name], (name, seed, answer["causes"])
        assert first["evidence"] in ("moderate", "strong") and first["ci95"][0] > 0
        # Every cause that is not planted and not first stays below the planted one's share; overfit's
        # share is an upper bound (min(gap, train − holdout), never above weak), not an estimate.
        others = [c for c in answer["causes"][1:] if c["id"] != "overfit"]
        assert all(c["share_of_gap"] is None or c["share_of_gap"] < first["share_of_gap"] for c in others)
        overfit = next(c for c in answer["causes"] if c["id"] == "overfit")
        assert overfit["evidence"] in ("none", "weak") and overfit["ci95"][0] == 0


def test_nothing_planted_no_significant_gap_and_nothing_above_weak(tmp_path):
    for seed in SEEDS:
        answer = run("none", seed, tmp_path)
        assert answer["gap"]["significant"] is False, (seed, answer["gap"])
        assert all(c["evidence"] in ("none", "weak") for c in answer["causes"]), answer["causes"]
        imbalance = next(c for c in answer["causes"] if c["id"] == "imbalance")
        assert imbalance["share_of_gap"] is None and not imbalance["estimable"]  # every class has one count
