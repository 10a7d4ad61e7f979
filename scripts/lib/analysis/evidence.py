"""The one judgement each analysis makes about the test-set gap: its `evidence` block.

Every analysis that stands for a cause writes, in its summary.json,

    evidence: {cause, title, share_of_gap: {points, ci95}, level, sentence, unit, estimable}

`share_of_gap` is counterfactual: how many accuracy points of the test-1 → test-2 gap disappear
if this cause is taken away, with a 95% interval (`unit` says what the interval resamples).
`level` (strong | moderate | weak | none) follows one rule for every cause (`level_for`), so the
levels compare; an analysis may lower it (never raise it) with its own test, e.g. a null
distribution that says the share is what noise alone gives. The report only reads and ranks
these blocks. Cause ids are a public vocabulary (docs/workflow.md, "The answer").
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

CAUSES = {
    "mean_shift": "The features of test set 2 moved as a whole",
    "difficulty": "Test-2 images are less typical of their class",
    "class_concentrated": "Some classes degraded beyond the common drop",
    "label_noise": "Test-2 labels that disagree with the image",
    "imbalance": "Class imbalance in the training set",
    "overfit": "Overfitting of the head",
}
LEVELS = ("none", "weak", "moderate", "strong")


def _finite(value: Any) -> float | None:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def level_for(points: float | None, ci95: list | tuple | None, gap_points: float | None) -> str:
    """The shared rule. `none` unless the interval excludes 0 (no evidence of any share);
    then by the share of the gap: ≥ 50% with the interval's low end ≥ 25% strong, ≥ 25%
    moderate, else weak. With no positive gap to explain, at most weak."""
    points, lo = _finite(points), _finite(ci95[0]) if ci95 else None
    if points is None or lo is None or lo <= 0:
        return "none"
    gap = _finite(gap_points)
    if gap is None or gap <= 0:
        return "weak"
    if points >= 0.5 * gap and lo >= 0.25 * gap:
        return "strong"
    return "moderate" if points >= 0.25 * gap else "weak"


def cap(level: str, highest: str) -> str:
    return LEVELS[min(LEVELS.index(level), LEVELS.index(highest))]


def block(cause: str, points: float | None, ci95: list | tuple | None, *, gap_points: float | None, sentence: str,
          unit: str, level: str | None = None, max_level: str = "strong", **extra: Any) -> dict[str, Any]:
    """An evidence block (points in accuracy points, i.e. percent of images)."""
    if cause not in CAUSES:
        raise ValueError(f"unknown cause {cause!r} (known: {sorted(CAUSES)})")
    points = _finite(points)
    ci = [_finite(v) for v in ci95] if ci95 is not None else [None, None]
    chosen = level if level is not None else level_for(points, ci, gap_points)
    return {"cause": cause, "title": CAUSES[cause], "estimable": points is not None,
            "share_of_gap": {"points": points, "ci95": ci}, "level": cap(chosen, max_level),
            "sentence": sentence, "unit": unit, **extra}


def not_estimable(cause: str, sentence: str, **extra: Any) -> dict[str, Any]:
    return block(cause, None, None, gap_points=None, sentence=sentence, unit="none", level="none", **extra)


def class_bootstrap(stat, classes_1: np.ndarray, classes_2: np.ndarray, *, n_boot: int, seed: int,
                    confidence: float = 0.95) -> list[float]:
    """Percentile interval of `stat(idx1, idx2)` over resamples of whole classes (clusters): the
    same classes drawn with replacement in both test sets, every image of a drawn class kept.
    `stat` takes row positions into each set and returns a number."""
    from scripts.lib.stats import inference

    c1, c2 = np.asarray(classes_1), np.asarray(classes_2)
    labels = np.union1d(np.unique(c1), np.unique(c2))
    rows1 = {c: np.flatnonzero(c1 == c) for c in labels}
    rows2 = {c: np.flatnonzero(c2 == c) for c in labels}
    rng = np.random.default_rng([seed, 31])
    draws = np.empty(n_boot)
    for b in range(n_boot):
        pick = labels[rng.integers(0, len(labels), len(labels))]
        draws[b] = stat(np.concatenate([rows1[c] for c in pick]), np.concatenate([rows2[c] for c in pick]))
    full = stat(np.arange(len(c1)), np.arange(len(c2)))
    return inference.bc_interval(draws[np.isfinite(draws)], full, confidence)
