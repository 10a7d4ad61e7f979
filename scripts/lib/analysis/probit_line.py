"""The accuracy-on-the-line fit: a library used by the reference_line step and by improve.

probit(test2 / 100) = intercept + slope · probit(test1 / 100), OLS over reference models (timm's
published results), and a model's effective robustness (observed − expected test-2 top-1) with a
delta-method 95% interval. scripts/analysis/reference_line.py says where the numbers come from.
"""
from __future__ import annotations

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
