"""How many test labels are wrong, and which: maximum likelihood of a noisy-label model with a free
temperature, per test set.

Model (symmetric label noise, as in Natarajan et al. 2013 and the forward-corrected losses of
Patrini et al. 2017): an image's given label is its class with probability 1 - eps, else another
class; the head's class probabilities are right up to a temperature T, q = softmax(logits / T).
Per image, P(given label y | x) = (1 - eps) q_y + eps (1 - q_y) / (C - 1); (eps, T) are fitted
jointly by maximum likelihood for each test set. Why not the confident-learning count alone: on a
harder test set a head's errors become more frequent and more confident, and a count with fixed
thresholds takes some of them for wrong labels; the free temperature absorbs that change of
calibration, and only labels far less likely than the calibration allows need eps. The likelihood
is tabulated per class on an (eps, T) grid once, so that a class bootstrap refits it with one
matrix product. `wrong_label_posterior` gives each image's P(label wrong | x, y): the weight of its
label correction in the decomposition (an expected gain, not a flagged image's full gain).
"""
from __future__ import annotations

import numpy as np

EPS_GRID = np.linspace(0.0, 0.4, 161)
TEMP_GRID = np.exp(np.linspace(np.log(0.5), np.log(3.0), 41))


def _log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def likelihood_table(logits: np.ndarray, labels: np.ndarray, classes: int) -> np.ndarray:
    """(classes, len(TEMP_GRID) * len(EPS_GRID)) log-likelihood of each class's images."""
    c = logits.shape[1]
    rows = np.arange(len(labels))
    table = np.zeros((classes, len(TEMP_GRID), len(EPS_GRID)))
    for t, temp in enumerate(TEMP_GRID):
        q = np.exp(_log_softmax(logits / temp)[rows, labels])[:, None]
        like = np.log((1 - EPS_GRID) * q + EPS_GRID * (1 - q) / (c - 1) + 1e-300)
        np.add.at(table[:, t, :], labels, like)
    return table.reshape(classes, -1)


def fit(table: np.ndarray, weights: np.ndarray) -> tuple[float, float]:
    """ML (eps, T) for classes weighted by `weights` (1 = as observed)."""
    best = int(np.argmax(weights @ table))
    return float(EPS_GRID[best % len(EPS_GRID)]), float(TEMP_GRID[best // len(EPS_GRID)])


def wrong_label_posterior(logits: np.ndarray, labels: np.ndarray, eps: float, temp: float) -> tuple[np.ndarray, np.ndarray]:
    """Per image P(label wrong | x, y) under the fitted model, and q = softmax(logits / T)."""
    q = np.exp(_log_softmax(logits / temp))
    c = logits.shape[1]
    qy = q[np.arange(len(labels)), labels]
    other = eps * (1 - qy) / (c - 1)
    return other / np.maximum((1 - eps) * qy + other, 1e-300), q
