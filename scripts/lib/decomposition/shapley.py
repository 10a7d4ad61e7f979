"""Exact Shapley values of a set function over a few players (2^n coalitions; n = 4 here), and the
true Shapley shares of a gap from a head's top-1 on generated twins."""
from __future__ import annotations

import itertools
import math
from collections.abc import Callable


def shapley_weights(players: tuple[str, ...]) -> dict[str, dict[frozenset, float]]:
    """For each player p, the signed weight of every coalition's value in p's Shapley value.
    Shapley values are linear in the values, so a bootstrap can apply these weights to
    resampled coalition values without recomputing anything else."""
    n = len(players)
    out: dict[str, dict[frozenset, float]] = {}
    for p in players:
        weights: dict[frozenset, float] = {}
        others = [q for q in players if q != p]
        for k in range(n):
            w = math.factorial(k) * math.factorial(n - k - 1) / math.factorial(n)
            for subset in itertools.combinations(others, k):
                s = frozenset(subset)
                weights[s | {p}] = weights.get(s | {p}, 0.0) + w
                weights[s] = weights.get(s, 0.0) - w
        out[p] = weights
    return out


def shapley(value: Callable[[frozenset], float], players: tuple[str, ...]) -> dict[str, float]:
    """Exact Shapley values of `value` (value(empty set) is the baseline)."""
    return {p: sum(w * value(s) for s, w in ws.items()) for p, ws in shapley_weights(players).items()}


def shares_of_removals(top1: dict[frozenset, float], causes: tuple[str, ...], top1_test1: float) -> dict[str, float]:
    """The true shares (points) of a gap on generated twins: `top1[P]` is a head's top-1 on the twin
    of test set 2 with only the causes in P present (every subset of `causes`; the full set is test
    set 2). Each cause's share is the Shapley value of the drop top1[∅] − top1[P]; `residual` is
    top1_test1 − top1[∅] (what remains with every cause removed) and `gap` the observed gap, so the
    shares and the residual sum to the gap exactly."""
    full = frozenset(causes)
    shares = shapley(lambda present: 100 * (top1[frozenset()] - top1[frozenset(present) & full]), causes)
    shares["residual"] = 100 * (top1_test1 - top1[frozenset()])
    shares["gap"] = 100 * (top1_test1 - top1[full])
    return shares
