"""Label issues by confident learning (Northcutt, Jiang & Chuang 2021, JAIR), through cleanlab.

Per-class thresholds t_j = the head's mean probability of class j over the images labelled j
(cleanlab.count.get_confident_thresholds). An image is a label issue when some other class is
confidently predicted (probability >= its threshold): an off-diagonal entry of the confident joint
(cleanlab.count.compute_confident_joint). The thresholds are taken from test set 1 and applied to
both sets, so that the two sets' shares of issues are counted with the same yardstick; the caller
applies them to test-set-2 features whose other mechanisms are reverted to test-1 level, which is
what keeps an over-confident head on a shifted set from counting its own errors as wrong labels.
"""
from __future__ import annotations

import numpy as np
from cleanlab.count import compute_confident_joint, get_confident_thresholds


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    p = np.exp(z)
    return p / p.sum(axis=1, keepdims=True)


def confident_thresholds(labels: np.ndarray, logits: np.ndarray) -> np.ndarray:
    return get_confident_thresholds(labels, softmax(logits))


def label_issues(labels: np.ndarray, logits: np.ndarray, thresholds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(is_issue bool, guessed true class int) per image; the guess is cleanlab's rule: the one
    confident class, or the most probable class when several are confident."""
    probs = softmax(logits)
    _, off_diagonal = compute_confident_joint(labels, probs, thresholds=thresholds, calibrate=False,
                                              return_indices_of_off_diagonals=True)
    confident = probs >= thresholds - 1e-6  # cleanlab's own tolerance
    guess = np.where(confident.sum(1) > 1, probs.argmax(1), confident.argmax(1))
    is_issue = np.zeros(len(labels), bool)
    is_issue[off_diagonal] = True
    return is_issue, np.where(is_issue, guess, labels)


def issue_counts_by_class(labels: np.ndarray, logits: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """Estimated number of label issues per given class: the off-diagonal row mass of cleanlab's
    *calibrated* confident joint (rows rescaled to the class's image count). Flags alone miss the
    wrong labels whose image the head is not confident about; the calibrated joint extrapolates
    the off-diagonal rate among confidently counted images to the whole class (Northcutt et al.
    2021, eq. 2-3). Per class, so that a class bootstrap can resample it."""
    joint = compute_confident_joint(labels, softmax(logits), thresholds=thresholds, calibrate=True)
    return joint.sum(axis=1) - np.diag(joint)
