"""The whole answer on planted data, through the workflow's own steps, in seconds.

One scenario = the demo generator (scripts.data.generate_demo.FeatureModel) with one cause planted,
small sizes (classes × 50 test-1 and 10 test-2 images, as the real design), written as the
workflow's shards; a head; then the workflow's steps on those files, each the function its rule
calls: evaluate (predictions, metrics), class counts, gap (class_concentrated and the gap block),
imbalance, train_reference + difficulty, label_noise, mean_shift, and the report's
ranking (scripts.lib.report.answer) read from the summaries they wrote.

What is not the workflow's, and why:
  * the head: a nearest-class-mean classifier, stored as a real linear checkpoint (logits
    z·μ_c − |μ_c|²/2 on train-standardised z, divided by a temperature fitted on a train holdout),
    instead of train_head's grid search: training 100-class heads for 18 runs would cost minutes;
  * overfit: overfit() reads train_head's selection.json and history.csv, which this head has
    not; its evidence function (scripts.analysis.overfit.overfit_evidence, the one overfit() calls) gets
    the head's train and holdout accuracies directly;
  * the shift feature tests (shift_features) are not run: they write no evidence block;
  * figures are not drawn (each step's plot functions are stubbed): the answer never reads them.
Used by tests/test_answer_scenarios.py; run directly (`python tests/answer_scenarios.py [seeds]`)
for the hit-rate table over more seeds.
"""
from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from unittest import mock

import numpy as np
import torch
from scipy import optimize

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scripts.analysis import difficulty, gap, imbalance, label_noise, mean_shift, overfit, train_reference
from scripts.data.generate_demo import DemoSpec, FeatureModel
from scripts.evaluate import evaluate
from scripts.lib.analysis.common import class_counts
from scripts.lib.featio.jsonio import write_json
from scripts.lib.heads import make_checkpoint, save_head
from scripts.lib.options import step_defaults
from scripts.lib.report.answer import answer_json, headline
from scripts.lib.report.collect import collect
from scripts.lib.stats import inference
from tests.step_layout import outputs_in
from tests.train_helpers import write_split_shards

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


# Resamples and permutations: enough for stable intervals at 100 classes, few enough for CI.
# The evidence blocks' intervals keep 200 (mean_shift: its floor of 100 class resamples); the
# numbers the answer does not read (evaluate's metric intervals, mean_shift's re-standardisation
# intervals, gap's concentration null) get fewer.
OPTIONS = {"evaluate": {"bootstrap": 50, "device": "cpu"},
           "gap": {"permutations": 2000, "bootstrap": 1000, "null_reps": 50, "share_reps": 200},
           "imbalance": {"permutations": 1000}, "difficulty": {"bootstrap": 200}, "label_noise": {"bootstrap": 200},
           "mean_shift": {"bootstrap": 100}}
PLOTS = [(evaluate, "plot_confused_pairs"), (gap, "plot_distribution"), (gap, "plot_top"),
         (imbalance, "plot_scatter"), (difficulty, "plot_typicality"), (label_noise, "plot_confidence"),
         (mean_shift, "plot_adaptation")]


def _draw(model: FeatureModel, split: str, per_class: int, rng) -> tuple[np.ndarray, np.ndarray]:
    labels = np.repeat(np.arange(model.spec.classes), per_class)
    x = np.concatenate([model.sample(c, per_class, rng, split) for c in range(model.spec.classes)])
    return x.astype(np.float32), labels.astype(np.int16)


def nearest_mean_head(x: np.ndarray, y: np.ndarray, holdout_x: np.ndarray, holdout_y: np.ndarray) -> dict:
    """A nearest-class-mean classifier as the linear checkpoint it is: on z = (x − mean) / std,
    −|z − μ_c|²/2 = z·μ_c − |μ_c|²/2 + const, divided by a temperature fitted on the holdout (so its
    confidences are calibrated, as the workflow's heads are)."""
    x64 = x.astype(np.float64)
    mean, std = x64.mean(axis=0), x64.std(axis=0) + 1e-12
    means = np.stack([((x64[y == c] - mean) / std).mean(axis=0) for c in np.unique(y)])
    weight, bias = means, -0.5 * (means**2).sum(axis=1)
    raw = ((holdout_x - mean) / std) @ weight.T + bias
    nll = lambda t: -np.mean(inference.log_softmax(raw / t)[np.arange(len(holdout_y)), holdout_y])
    temperature = float(optimize.minimize_scalar(nll, bounds=(0.05, 100), method="bounded").x)
    arch = {"in_dim": x.shape[1], "num_classes": len(means), "hidden": []}
    state = {"0.weight": torch.from_numpy(weight), "0.bias": torch.from_numpy(bias)}
    return make_checkpoint(name="head", kind="linear", arch=arch, state_dict=state, mean=mean, std=std,
                           l2_normalize=False, hparams={"nearest_class_mean": True}, temperature=temperature)


def _accuracy(checkpoint: dict, x: np.ndarray, y: np.ndarray) -> float:
    z = (x - checkpoint["mean"].numpy()) / checkpoint["std"].numpy()
    logits = z @ checkpoint["state_dict"]["0.weight"].numpy().T + checkpoint["state_dict"]["0.bias"].numpy()
    return float((logits.argmax(1) == y).mean())


def run(name: str, seed: int, out: Path) -> dict:
    spec = DemoSpec(**{**BASE, **SCENARIOS[name], "seed": seed})
    model = FeatureModel(spec)
    rng = np.random.default_rng([seed, 99])
    root = out / name / str(seed)
    res = root / "results"
    splits = {"train": _draw(model, "train", TRAIN_PER_CLASS, rng)}
    xh, yh = _draw(model, "train", 10, rng)
    splits.update(test1=_draw(model, "test1", N1, rng), test2=_draw(model, "test2", N2, rng))
    manifests = {s: write_split_shards(res / "parquet" / s, y, x, shards=1) for s, (x, y) in splits.items()}
    checkpoint = nearest_mean_head(*splits["train"], xh, yh)
    head_path = res / "heads" / "head" / "model.pt"
    head_path.parent.mkdir(parents=True)
    save_head(head_path, checkpoint)
    c = spec.classes
    with contextlib.ExitStack() as stack:  # no figures: the answer never reads them
        for module, plot in PLOTS:
            stack.enter_context(mock.patch.object(module, plot, return_value=""))
        ev = {t: res / "eval" / "head" / t for t in ("test1", "test2")}
        for t in ev:
            evaluate.evaluate(head_path=head_path, manifest=manifests[t], outputs=outputs_in(ev[t], "evaluate"), num_classes=c,
                              options=OPTIONS["evaluate"], seed=seed, head_name="head", test_name=t)
        metrics = {t: ev[t] / "metrics.json" for t in ev}
        predictions = {t: ev[t] / "predictions.parquet" for t in ev}
        counts = res / "analysis" / "class_counts.csv"
        class_counts(manifests, c, None, counts)
        analysis = res / "analysis"
        def outputs(step: str, *folder: str) -> dict[str, Path]:
            return outputs_in(analysis.joinpath(*folder, "head"), step)

        gap.gap(metrics1=metrics["test1"], metrics2=metrics["test2"], class_counts=counts,
                outputs=outputs("gap", "gap"), options=OPTIONS["gap"], head_name="head", seed=seed)
        imbalance.imbalance(class_counts=counts, metrics1=metrics["test1"], metrics2=metrics["test2"],
                            outputs=outputs("imbalance", "imbalance"), options=OPTIONS["imbalance"], head_name="head",
                            seed=seed)
        reference = analysis / "difficulty" / "train_reference.npz"
        reference.parent.mkdir(parents=True, exist_ok=True)
        train_reference.train_reference(manifests["train"], c, reference)
        difficulty.difficulty(reference=reference, test1=manifests["test1"], test2=manifests["test2"],
                              predictions1=predictions["test1"], predictions2=predictions["test2"],
                              outputs=outputs("difficulty", "difficulty"), options=OPTIONS["difficulty"],
                              head_name="head", seed=seed)
        label_noise.label_noise(predictions1=predictions["test1"], predictions2=predictions["test2"],
                                outputs=outputs("label_noise", "label_noise"), options=OPTIONS["label_noise"],
                                head_name="head", seed=seed)
        mean_shift.mean_shift(model=head_path, test1=manifests["test1"], test2=manifests["test2"],
                    outputs=outputs("mean_shift", "mean_shift"), options=OPTIONS["mean_shift"], seed=seed,
                              head_name="head")
    # overfit: its own evidence function on the head's train and holdout accuracies (see above).
    train_gap = _accuracy(checkpoint, *splits["train"]) - _accuracy(checkpoint, xh, yh)
    test_gap = _accuracy(checkpoint, *splits["test1"]) - _accuracy(checkpoint, *splits["test2"])
    block = overfit.overfit_evidence(train_gap, test_gap, step_defaults("analysis.overfit")["overfit_threshold"], False)
    write_json(analysis / "overfit" / "head" / "summary.json",
               {"verdict": block["sentence"], "figures": [], "table": None, "numbers": {}, "head": "head",
                "evidence": block})
    # The report's named inputs, as the rules register them (workflow/rules/common.smk for_report).
    folders = {"gap": "gap", "imbalance": "imbalance", "difficulty": "difficulty", "label_noise": "label_noise",
               "mean_shift": "mean_shift", "overfit": "overfit"}
    files = {**{f"metrics:head/{t}": metrics[t] for t in metrics},
             **{f"{kind}:head": analysis / folder / "head" / "summary.json" for kind, folder in folders.items()}}
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
