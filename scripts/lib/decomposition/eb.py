"""Empirical-Bayes shrinkage of per-class effects estimated from few images.

A class's excess (its effect beyond the common one) is estimated with a known sampling variance;
most classes have none and a few may have a large one. A normal prior (Efron-Morris) shrinks the
large ones as much as the small ones; the nonparametric maximum-likelihood prior of Kiefer and
Wolfowitz (1956), as used for empirical Bayes by Jiang & Zhang (2009, "General maximum likelihood
empirical Bayes estimation of normal means", Ann. Statist.) and Koenker & Mizera (2014), adapts to
sparsity: noise is shrunk to about 0 while a clearly separated effect keeps most of its size.
Fitted by EM on a fixed grid (the usual approximation); classes enter with weights, so a class
bootstrap can refit it on resampled classes.
"""
from __future__ import annotations

import numpy as np


def npmle_posterior_mean(z: np.ndarray, se: np.ndarray, weights: np.ndarray | None = None,
                         grid_size: int = 80, iters: int = 200) -> np.ndarray:
    """Posterior means E[theta | z] under z ~ N(theta, se^2), theta ~ G, G the NPMLE."""
    weights = np.ones(len(z)) if weights is None else np.asarray(weights, float)
    fit = weights > 0
    span = max(np.abs(z[fit]).max(), 1e-9)
    grid = np.unique(np.concatenate([np.linspace(-span, span, grid_size), [0.0]]))
    like = np.exp(-0.5 * ((z[:, None] - grid[None, :]) / se[:, None]) ** 2) / se[:, None]
    prior = np.full(len(grid), 1 / len(grid))
    for _ in range(iters):
        post = like[fit] * prior
        post /= post.sum(1, keepdims=True) + 1e-300
        prior = (weights[fit, None] * post).sum(0) / weights[fit].sum()
    post = like * prior
    post /= post.sum(1, keepdims=True) + 1e-300
    return post @ grid
