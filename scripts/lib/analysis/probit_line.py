"""The accuracy-on-the-line fit: a library used by the reference_line step and by improve.

probit(test2 / 100) = intercept + slope · probit(test1 / 100), OLS over reference models (timm's
published results), and a model's effective robustness (observed − expected test-2 top-1) with two
intervals: a confidence interval of the head's distance from the *fitted line* (delta method), and
a prediction interval of where a model at its accuracy lands, which adds the reference models' own
scatter around the line near that accuracy (`local_scatter`). Only the second says whether a head
is off the line: applied to the reference models themselves it flags about 5% of them at every
accuracy level (`calibration`). scripts/analysis/reference_line.py says where the numbers come from.
"""
from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import norm

from scripts.lib.featio.errors import FeatgapError


def read_pairs(test1_table: str | Path, test2_table: str | Path, min_test1_top1: float) -> pd.DataFrame:
    """Reference models with top-1 (percent) on both test sets, filtered on test-1 top-1."""
    frames = []
    for path in (test1_table, test2_table):
        frame = pd.read_csv(path)
        if not {"model", "top1"} <= set(frame.columns):
            raise FeatgapError(f"{path}: expected columns model, top1 (timm results format)")
        frames.append(frame)
    keys = ["model", "img_size"] if all("img_size" in f for f in frames) else ["model"]
    pairs = frames[0][keys + ["top1"]].merge(frames[1][keys + ["top1"]], on=keys, suffixes=("_test1", "_test2"))
    pairs = pairs[pairs["top1_test1"] >= min_test1_top1].reset_index(drop=True)
    if len(pairs) < 3:
        raise FeatgapError(f"reference line: {len(pairs)} models with test-1 top-1 ≥ {min_test1_top1}; need 3")
    return pairs


def fit_line(pairs: pd.DataFrame) -> dict[str, Any]:
    """OLS of probit(test2) on probit(test1); with the coefficients' covariance for intervals."""
    x = norm.ppf(pairs["top1_test1"].to_numpy(float) / 100)
    y = norm.ppf(pairs["top1_test2"].to_numpy(float) / 100)
    design = np.column_stack([np.ones_like(x), x])
    coef, *_ = np.linalg.lstsq(design, y, rcond=None)
    resid = y - design @ coef
    sigma2 = float(resid @ resid / (len(x) - 2))
    cov = sigma2 * np.linalg.inv(design.T @ design)
    fitted_pct = 100 * norm.cdf(design @ coef)
    return {"models": len(x), "intercept": float(coef[0]), "slope": float(coef[1]), "cov": cov.tolist(),
            "residual_sd_probit": float(np.sqrt(sigma2)),
            "residual_sd_points": float(np.std(pairs["top1_test2"].to_numpy(float) - fitted_pct, ddof=2))}


def expected_test2(line: dict, test1_pct: float) -> float:
    return float(100 * norm.cdf(line["intercept"] + line["slope"] * norm.ppf(test1_pct / 100)))


def effective_robustness(line: dict, test1_pct: float, test2_pct: float, se1_pct: float, se2_pct: float) -> dict:
    """Expected test-2 top-1 and observed − expected with a 95% interval (percent / points)."""
    z1 = norm.ppf(test1_pct / 100)
    eta = line["intercept"] + line["slope"] * z1
    expected = float(100 * norm.cdf(eta))
    density = 100 * norm.pdf(eta)
    d_test1 = density * line["slope"] / (100 * norm.pdf(z1))  # d expected / d test1 (points per point)
    grad = np.array([1.0, z1])
    se_line = density * float(np.sqrt(grad @ np.asarray(line["cov"]) @ grad))
    se = float(np.sqrt(se2_pct**2 + (d_test1 * se1_pct) ** 2 + se_line**2))
    er = test2_pct - expected
    return {"test1_top1": test1_pct, "test2_top1": test2_pct, "expected_test2_top1": expected,
            "expected_gap": test1_pct - expected, "observed_gap": test1_pct - test2_pct,
            "effective_robustness": er, "ci95": [er - 1.96 * se, er + 1.96 * se], "se_line_points": se_line}


def residuals_points(pairs: pd.DataFrame, line: dict) -> np.ndarray:
    """Observed − expected test-2 top-1 (points) of every reference model."""
    expected = 100 * norm.cdf(line["intercept"] + line["slope"] * norm.ppf(pairs["top1_test1"].to_numpy(float) / 100))
    return pairs["top1_test2"].to_numpy(float) - expected


def local_scatter(pairs: pd.DataFrame, line: dict, test1_pct: float, window: float, min_models: int = 20,
                  exclude: int | None = None) -> dict[str, float]:
    """SD (points) of the reference models' residuals within ±window points of `test1_pct`; the
    window widens until it holds `min_models` models (the scatter is not constant along the line:
    it shrinks towards the top). `exclude`: a row left out (a reference model judged against the others)."""
    x = pairs["top1_test1"].to_numpy(float)
    resid = residuals_points(pairs, line)
    keep = np.ones(len(x), bool)
    if exclude is not None:
        keep[exclude] = False
    half = float(window)
    while True:
        near = keep & (np.abs(x - test1_pct) <= half)
        if near.sum() >= min_models or half > 100:
            break
        half *= 1.5
    values = resid[near]
    return {"sd_points": float(np.std(values, ddof=1)) if len(values) > 1 else float("nan"),
            "models": int(near.sum()), "window_points": half}


def prediction_interval(row: dict, scatter_sd: float, same_images: bool = True) -> list[float]:
    """95% prediction interval of the effective robustness (`row` from effective_robustness): the
    reference models' scatter around the line near its accuracy plus the fitted line's uncertainty.

    `same_images`: the head was evaluated on the reference tables' own test images (ImageNet val and
    ImageNetV2 for timm's tables). Then its image-sampling error is not added: the part every
    model shares (which images were drawn) moves the whole line, and the model's own part is
    already in the reference models' scatter, which were measured on the same images; adding it
    flags 1.4% of the reference models instead of 5.7% (calibration). On other images it is added."""
    se = row["se_line_points"]
    if not same_images:
        se = (row["ci95"][1] - row["ci95"][0]) / (2 * 1.96)  # test-1, test-2 and line errors together
    half = 1.96 * float(np.hypot(se, scatter_sd))
    return [row["effective_robustness"] - half, row["effective_robustness"] + half]


def calibration(pairs: pd.DataFrame, line: dict, window: float, n_test1: int, n_test2: int,
                bands: tuple[float, ...] = (80, 83, 86, 88, 100)) -> list[dict[str, Any]]:
    """The rule applied to the reference models themselves, each against the others (its own
    residual left out of the scatter, binomial sampling errors for test sets of n_test1 / n_test2
    images, which only the `same_images=False` rule uses): the share flagged as off the line
    (interval excluding 0), per band of test-1 top-1. A calibrated rule flags about 5% in every band."""
    x, y = pairs["top1_test1"].to_numpy(float), pairs["top1_test2"].to_numpy(float)
    flagged = np.zeros(len(x), bool)
    for i in range(len(x)):
        se1 = 100 * np.sqrt(x[i] / 100 * (1 - x[i] / 100) / n_test1)
        se2 = 100 * np.sqrt(y[i] / 100 * (1 - y[i] / 100) / n_test2)
        row = effective_robustness(line, x[i], y[i], se1, se2)
        interval = prediction_interval(row, local_scatter(pairs, line, x[i], window, exclude=i)["sd_points"], True)
        flagged[i] = interval[0] > 0 or interval[1] < 0
    out = []
    for lo, hi in itertools.pairwise(bands):
        sel = (x >= lo) & (x < hi)
        if sel.any():
            out.append({"band": f"{lo:g}–{hi:g}%", "models": int(sel.sum()), "flagged": float(flagged[sel].mean())})
    out.append({"band": "all", "models": len(x), "flagged": float(flagged.mean())})
    return out


def expected_by_threshold(test1_table: str | Path, test2_table: str | Path, test1_pct: float,
                          thresholds: list[float]) -> list[dict[str, Any]]:
    """The expected test-2 top-1 at `test1_pct` for lines fitted over models above each inclusion
    threshold: how much the answer depends on that choice."""
    rows = []
    for threshold in thresholds:
        try:
            line = fit_line(read_pairs(test1_table, test2_table, threshold))
        except FeatgapError:
            continue
        rows.append({"min_test1_top1": float(threshold), "models": line["models"],
                     "expected_test2_top1": expected_test2(line, test1_pct)})
    return rows
