"""The whole answer on planted data, in memory and in seconds.

One scenario = the demo generator (scripts.generate_demo.FeatureModel) with one cause planted,
small sizes (classes × 50 test-1 and 10 test-2 images, as the real design), a nearest-class-mean
head with a temperature fitted on a train holdout, then every cause's own evidence function as
the analyses call it, their summaries written in the workflow's layout, and the report's ranking
(scripts.report_evidence) read from them. Used by tests/test_answer_scenarios.py; run directly
(`python tests/answer_scenarios.py`) for the hit-rate table over more seeds.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import optimize

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scripts import gap, imbalance, stats, stats_classes
from scripts.difficulty import difficulty_share, nearest_mean_distance
from scripts.evidence import block
from scripts.featio import write_json
from scripts.generate_demo import DemoSpec, FeatureModel
from scripts.label_noise import label_noise_share
from scripts.report_collect import collect
from scripts.report_evidence import answer_json, headline
from scripts.shift import domain_reweighted_accuracy, mean_shift_evidence

BASE = {"classes": 100, "dim": 64, "separation": 0.6, "rank": 16, "test2_noise": 1.0, "shift_features": 0,
        "hard_classes": 0, "hard_noise": 1.0}
SCENARIOS = {
    "none": {},
    "mean_shift": {"shift_features": 16, "shift_size": 1.2},
    "difficulty": {"test2_noise": 1.3},
    "class_concentrated": {"drift_classes": 15, "drift": 0.7},
    "label_noise": {"label_noise": 0.12},
    "hard_classes": {"hard_classes": 15, "hard_noise": 2.5},
}
EXPECTED_FIRST = {"mean_shift": "mean_shift", "difficulty": "difficulty", "class_concentrated": "class_concentrated",
                  "label_noise": "label_noise", "hard_classes": "class_concentrated"}
TRAIN_PER_CLASS, N1, N2 = 60, 50, 10


def _draw(model: FeatureModel, split: str, per_class: int, rng) -> tuple[np.ndarray, np.ndarray]:
    labels = np.repeat(np.arange(model.spec.classes), per_class)
    x = np.concatenate([model.sample(c, per_class, rng, split) for c in range(model.spec.classes)])
    return x.astype(np.float64), labels


class NearestMeanHead:
    """Standardise with train mean/std, logits −|z − μ_c|² / 2 divided by a temperature fitted on a
    holdout (so confidences are calibrated, as the workflow's heads are)."""

    def __init__(self, x, y, holdout_x, holdout_y):
        self.mean, self.std = x.mean(axis=0), x.std(axis=0) + 1e-12
        z = (x - self.mean) / self.std
        self.means = np.stack([z[y == c].mean(axis=0) for c in np.unique(y)])
        raw = self.raw_logits(holdout_x)
        nll = lambda t: -np.mean(stats.log_softmax(raw / t)[np.arange(len(holdout_y)), holdout_y])
        self.temperature = float(optimize.minimize_scalar(nll, bounds=(0.05, 100), method="bounded").x)

    def raw_logits(self, x):
        z = (x - self.mean) / self.std
        return -0.5 * ((z**2).sum(1)[:, None] - 2 * z @ self.means.T + (self.means**2).sum(1)[None, :])

    def predict(self, x):
        logp = stats.log_softmax(self.raw_logits(x) / self.temperature)
        return logp.argmax(1), np.exp(logp.max(1))


def run(name: str, seed: int, out: Path, n_boot: int = 200) -> dict:
    spec = DemoSpec(**{**BASE, **SCENARIOS[name], "seed": seed})
    model = FeatureModel(spec)
    rng = np.random.default_rng([seed, 99])
    xt, yt = _draw(model, "train", TRAIN_PER_CLASS, rng)
    xh, yh = _draw(model, "train", 10, rng)
    x1, y1 = _draw(model, "test1", N1, rng)
    x2, y2 = _draw(model, "test2", N2, rng)
    head = NearestMeanHead(xt, yt, xh, yh)
    (p1, c1), (p2, c2) = head.predict(x1), head.predict(x2)
    ok1, ok2 = p1 == y1, p2 == y2
    root = out / name / str(seed)
    analysis = root / "results" / "analysis"
    files = []

    def summary(rel: str, evidence: dict, **extra) -> None:
        path = analysis / rel / "summary.json"
        write_json(path, {"verdict": evidence["sentence"], "figures": [], "table": None, "numbers": {},
                          "evidence": evidence, "head": "head", **extra})
        files.append(str(path))

    # gap and class_concentrated (scripts.gap)
    k1, k2 = np.bincount(y1, weights=ok1).astype(int), np.bincount(y2, weights=ok2).astype(int)
    sizes1, sizes2 = np.bincount(y1), np.bincount(y2)
    test = stats_classes.stratified_gap_test(k1, sizes1, k2, sizes2, n_perm=2000, seed=seed)
    ci = stats_classes.gap_intervals(k1, sizes1, k2, sizes2, n_boot=1000, seed=seed)["ci_classes"]
    gap_block = {"points": 100 * test["gap"], "ci95": [100 * v for v in ci], "significant": bool(test["p"] < 0.05),
                 "p": test["p"]}
    share = stats_classes.concentrated_share(k1, sizes1, k2, sizes2, reps=n_boot, n_boot=n_boot, seed=seed)
    names = pd.DataFrame({"name": [f"class_{c}" for c in range(spec.classes)]})
    summary("gap/head", gap.concentration_evidence(share, gap_block, names, 0.05), gap=gap_block)
    # mean_shift (scripts.shift adapt): test set 2 moved onto test set 1's mean, the head unchanged
    moved, _ = head.predict(x2 - (x2.mean(axis=0) - x1.mean(axis=0)))
    correct = {("test1", "train"): ok1, ("test2", "train"): ok2, ("test2", "test1_mean"): moved == y2}
    reweighted = domain_reweighted_accuracy(x1, x2, y1, y2, ok1, seed, folds=3)
    summary("shift/adapt/head", mean_shift_evidence(correct, {"test1": y1, "test2": y2}, reweighted, n_boot, seed))
    # difficulty (scripts.difficulty): typicality from train class means only
    reference = {"class_means": np.stack([xt[yt == c].mean(0) for c in range(spec.classes)]), "mean": xt.mean(0),
                 "std": xt.std(0)}
    d = difficulty_share(nearest_mean_distance(x1, reference), ok1, y1, nearest_mean_distance(x2, reference), ok2, y2,
                         bins=10, n_boot=n_boot, seed=seed)
    summary("difficulty/head", block("difficulty", d["points"], d["ci95"], gap_points=gap_block["points"],
                                     sentence="difficulty", unit="classes resampled"))
    # label_noise (scripts.label_noise): confident disagreements beyond calibration
    ln = label_noise_share(c1, ~ok1, y1, c2, ~ok2, y2, threshold=0.8, n_boot=n_boot, seed=seed)
    summary("label_noise/head", block("label_noise", ln["points"], ln["ci95"], gap_points=gap_block["points"],
                                      sentence="label noise", unit="classes resampled"))
    # imbalance (scripts.imbalance): every class has the same train rows here, so not estimable
    frame = pd.DataFrame({"drop": k1 / sizes1 - k2 / sizes2})
    summary("imbalance/head", imbalance.imbalance_evidence(frame, pd.Series(np.ones(spec.classes, bool)),
                                                           {"test": "", "p": None, "evidence": "none"}, 10, seed))
    for test, ok in (("test1", ok1), ("test2", ok2)):
        path = root / "results" / "eval" / "head" / test / "metrics.json"
        write_json(path, {"metrics": {"top1": float(ok.mean())}, "ci95": {}})
        files.append(str(path))
    hl = headline(collect(files, {"heads": {"head": {}}}))
    return answer_json(hl)


def hit_table(seeds, out: Path) -> dict[str, list]:
    results = {}
    for name in SCENARIOS:
        results[name] = [run(name, s, out) for s in seeds]
    return results


if __name__ == "__main__":
    import tempfile

    seeds = range(int(sys.argv[1]) if len(sys.argv) > 1 else 5)
    with tempfile.TemporaryDirectory() as tmp:
        for name, answers in hit_table(seeds, Path(tmp)).items():
            firsts = [(a["causes"][0]["id"], a["causes"][0]["evidence"]) for a in answers]
            gaps = [(round(a["gap"]["points"], 1), a["gap"]["significant"]) for a in answers]
            print(name, firsts, gaps)
            for a in answers[:1]:
                print("   ", [(c["id"], round(c["share_of_gap"], 1) if c["share_of_gap"] is not None else None,
                              c["evidence"]) for c in a["causes"]])
