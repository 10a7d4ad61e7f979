"""Exact Shapley values of a set function over a few players (2^n coalitions; n = 4 here)."""
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
