"""The terms of the gap and the one rule that rates them.

`CAUSES` is the one table of the mechanisms the decomposition splits the gap into (scripts/analysis/
decomposition.py): their ids are a public vocabulary (answer.json `causes[].id`) and their titles are
what the report shows. `level_for` is the one rule that rates a term's share of the gap
(strong | moderate | weak | none); `block` builds a term as the decomposition writes it.

Other analyses measure one mechanism on their own (re-centring, typicality, imbalance,
overfitting): they write a `reading` — their own counterfactual number with its interval and
sentence — which describes that mechanism and is never a part of the gap: only the decomposition's
terms add up to it.
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


def reading(name: str, points: float | None, ci95: list | tuple | None, *, sentence: str, unit: str,
            **extra: Any) -> dict[str, Any]:
    """An analysis's own counterfactual number for one mechanism (points, 95% interval): a
    description, not a part of the gap (the decomposition's terms are)."""
    points = _finite(points)
    ci = [_finite(v) for v in ci95] if ci95 is not None else [None, None]
    return {"name": name, "points": points, "ci95": ci, "estimable": points is not None, "sentence": sentence,
            "unit": unit, **extra}


def not_estimable(name: str, sentence: str, **extra: Any) -> dict[str, Any]:
    return reading(name, None, None, sentence=sentence, unit="none", **extra)


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
