"""The accuracy bar on a small generated dataset: the default linear head (config/config.yaml)
is within 0.3 points of, or above, sklearn LogisticRegression(lbfgs) trained to convergence with
C chosen on the same holdout, on the same test rows."""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import yaml
from step_layout import outputs_in

from scripts.data.generate_demo import DemoSpec
from scripts.lib.heads import predict_logits
from scripts.lib.training.data import stratified_holdout
from scripts.train.train_head import train_head
from tests.train_helpers import make_dataset

ROOT = Path(__file__).resolve().parents[1]
C_GRID = [0.003, 0.01, 0.03, 0.1, 0.3, 1.0]


def logreg_test_accuracy(data: dict, fraction: float, seed: int) -> tuple[float, float]:
    """(test top-1, chosen C): standardised as the head is, C by holdout top-1, refit on all train."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    x, y = data["train_features"], data["train_labels"]
    scaler = StandardScaler().fit(x)
    xs, xt = scaler.transform(x), scaler.transform(data["test_features"])
    fit, hold = stratified_holdout(y, fraction, np.random.default_rng([seed, 0]))  # the head's holdout
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a ConvergenceWarning fails the test: "to convergence"
        scores = [(LogisticRegression(C=c, max_iter=5000, tol=1e-6).fit(xs[fit], y[fit]).score(xs[hold], y[hold]), -i)
                  for i, c in enumerate(C_GRID)]
        best = C_GRID[-max(scores)[1]]
        model = LogisticRegression(C=best, max_iter=5000, tol=1e-6).fit(xs, y)
    return float((model.predict(xt) == data["test_labels"]).mean()), best


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("acc"), DemoSpec(classes=20, dim=64, separation=0.5, seed=0),
                        150, 200)


def test_linear_head_matches_logistic_regression(dataset, tmp_path, capsys):
    config = yaml.safe_load((ROOT / "config/config.yaml").read_text())
    settings = {**config["train"], "device": "cpu"}
    train_head(dataset["manifest"], outputs_in(tmp_path, "train_head"),
               name="linear", head=config["heads"]["linear"], train=settings,
               num_classes=20, seed=0)
    logits = predict_logits(tmp_path / "model.pt", dataset["test_features"])
    head_acc = float((logits.argmax(1) == dataset["test_labels"]).mean())
    lr_acc, c = logreg_test_accuracy(dataset, settings["holdout_fraction"], 0)
    with capsys.disabled():
        print(f"\n[accuracy bar] linear head {100 * head_acc:.2f}% vs LogisticRegression(C={c}) "
              f"{100 * lr_acc:.2f}% on {len(logits)} test rows")
    assert head_acc >= lr_acc - 0.003
