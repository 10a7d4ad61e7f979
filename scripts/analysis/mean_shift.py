"""Mean shift (per head): re-standardise each test set with its own feature mean (and std) in place
of the training mean/std stored in the head, and report how top-1 moves: does matching the first
moments close the gap? A description of that one mechanism (its `reading`); the decomposition's
`mean_shift` term is the part of the gap it accounts for.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from scripts.lib.analysis import evidence
from scripts.lib.analysis.common import pyplot, save_figure, write_summary, write_table
from scripts.lib.analysis.step import analysis_cli, begin
from scripts.lib.featio.errors import FeatgapError
from scripts.lib.featio.reader import read_split
from scripts.lib.stats import inference

OUTPUTS = {"table": ".csv", "summary": ".json", "figure": ".png"}


# ---------------------------------------------------------------- step: adapt
def _own_moments(head, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std of x as the head sees it before standardisation (after L2 norm if it uses it)."""
    if head.l2_normalize:
        x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    m = inference.moments(x)
    return m.mean.astype(np.float32), np.sqrt(m.var).astype(np.float32)


def mean_shift(*, model: str | Path, test1: str | Path, test2: str | Path, outputs: Mapping[str, str | Path],
          options: dict | None = None, seed: int = 0, head_name: str) -> dict[str, Any]:
    """Top-1 of a head with the stored train standardisation vs each test set's own moments."""
    import torch

    from scripts.lib.heads import load_checkpoint, load_head, predict_logits

    started, opts, files = begin("mean_shift", options, outputs, OUTPUTS)
    ckpt = load_checkpoint(model)
    base = load_head(ckpt)
    train_std = base.std.numpy().astype(np.float32)
    data = {t: read_split(p, features=True, columns=("label",)) for t, p in
            (("test1", test1), ("test2", test2))}
    rows, correct = [], {}
    set_means = {t: _own_moments(base, split.features)[0] for t, split in data.items()}
    for test, split in data.items():
        y = split.label.astype(np.int64)
        if y.max() >= base.num_classes:
            raise FeatgapError(f"{test}: labels exceed the head's {base.num_classes} classes")
        own_mean, own_std = _own_moments(base, split.features)
        variants = {
            "train": (ckpt["mean"], ckpt["std"]),
            "own_mean": (torch.from_numpy(own_mean), torch.from_numpy(train_std)),
            "own_mean_std": (torch.from_numpy(own_mean), torch.from_numpy(np.maximum(own_std, 1e-12))),
        }
        if test == "test2":
            # The counterfactual of mean_shift: test set 2 moved onto test set 1's mean, i.e. the
            # test1 → test2 difference of means taken away (the head then sees x − (m2 − m1)).
            moved = ckpt["mean"].numpy() + (set_means["test2"] - set_means["test1"])
            variants["test1_mean"] = (torch.from_numpy(moved.astype(np.float32)), ckpt["std"])
        for variant, (mean, std) in variants.items():
            head = load_head({**ckpt, "mean": mean, "std": std})
            hit, nll = np.empty(len(y), bool), np.empty(len(y))
            step = int(opts["batch_size"])
            for start in range(0, len(y), step):  # one batch of logits in memory at a time
                sl = slice(start, start + step)
                logits = predict_logits(head, split.features[sl], batch_size=step)
                hit[sl] = logits.argmax(1) == y[sl]
                nll[sl] = -inference.log_softmax(logits)[np.arange(len(logits)), y[sl]]
            correct[(test, variant)] = hit
            rows.append({"test": test, "standardisation": variant, "n": len(y), "top1": float(hit.mean()),
                         "nll": float(nll.mean())})
    table = pd.DataFrame(rows)
    acc = {(r["test"], r["standardisation"]): r["top1"] for r in rows}

    def change_ci(test: str, variant: str, k: int) -> list[float]:
        diff = correct[(test, variant)].astype(float) - correct[(test, "train")].astype(float)
        return inference.bootstrap_ci(lambda idx: {"d": diff[idx].mean()}, len(diff),
                                  n_resamples=int(opts["bootstrap"]), seed=seed + k).get("d", [np.nan, np.nan])

    numbers: dict[str, Any] = {"head": head_name}
    gap_before = acc[("test1", "train")] - acc[("test2", "train")]
    numbers["gap_train_standardisation"] = gap_before
    for k, variant in enumerate(("own_mean", "own_mean_std")):
        for j, test in enumerate(("test1", "test2")):
            numbers[f"{test}_{variant}_change"] = acc[(test, variant)] - acc[(test, "train")]
            numbers[f"{test}_{variant}_change_ci95"] = change_ci(test, variant, 2 * k + j)
        gap = acc[("test1", variant)] - acc[("test2", variant)]
        numbers[f"gap_{variant}"] = gap
        # Only test 2 adapted, test 1 as it is: the fairest reading of "does it close the gap".
        gap2 = acc[("test1", "train")] - acc[("test2", variant)]
        numbers[f"gap_{variant}_test2_only"] = gap2
        numbers[f"gap_closed_share_{variant}"] = (gap_before - gap2) / gap_before if gap_before > 0 else None
    for key, value in acc.items():
        numbers[f"top1_{key[0]}_{key[1]}"] = value
    write_table(table, files["table"])
    figure = plot_adaptation(table[table["standardisation"] != "test1_mean"], head_name, files["figure"])
    labels = {t: split.label.astype(np.int64) for t, split in data.items()}
    reweighted = domain_reweighted_accuracy(data["test1"].features, data["test2"].features, labels["test1"],
                                            labels["test2"], correct[("test1", "train")], seed)
    numbers["domain_within_class"] = reweighted
    block = recentring_reading(correct, labels, reweighted, int(opts["bootstrap"]), seed)
    ch = numbers["test2_own_mean_std_change"]
    lo, hi = numbers["test2_own_mean_std_change_ci95"]
    closed = numbers["gap_closed_share_own_mean_std"]
    moved = not (lo <= 0 <= hi)
    verdict = (
        f"Re-standardising test set 2 with its own feature mean/std changes {head_name}'s top-1 by "
        f"{ch:+.2%} [{lo:+.2%}, {hi:+.2%}]{'' if moved else ' (not significant)'} "
        f"({acc[('test2', 'train')]:.2%} → {acc[('test2', 'own_mean_std')]:.2%}; re-centring only: "
        f"{numbers['test2_own_mean_change']:+.2%}); the gap to test set 1 goes from {gap_before:.2%} to "
        f"{numbers['gap_own_mean_std_test2_only']:.2%}"
        + ("." if closed is None else
           f", so matching the first moments closes {closed:.0%} of the gap." if closed >= 0.005 else
           f", so matching the first moments does not close the gap ({closed:+.0%}).")
    )
    return write_summary(files["summary"], verdict=verdict, figures=[figure], table=files["table"],
                         numbers=numbers, started=started, seed=seed, inputs=[model, test1, test2],
                         extra={"head": head_name, "reading": block})


def class_centred(x: np.ndarray, labels: np.ndarray, means: dict[int, np.ndarray] | None = None) -> np.ndarray:
    """Rows minus the mean of their class (pooled over both sets when `means` is given), so a
    domain classifier cannot use what tells classes apart, only how the sets differ within a class."""
    out = np.asarray(x, dtype=np.float64).copy()
    for c in np.unique(labels):
        rows = labels == c
        out[rows] -= means[c] if means is not None else out[rows].mean(axis=0)
    return out


def domain_reweighted_accuracy(x1: np.ndarray, x2: np.ndarray, y1: np.ndarray, y2: np.ndarray,
                               correct1: np.ndarray, seed: int, folds: int = 5, max_rows: int = 20000) -> dict:
    """A linear domain classifier fitted within class (features centred on each class's pooled
    mean), cross-fitted; test-1 accuracy re-weighted by its out-of-fold odds p(test2 | x) /
    p(test1 | x), i.e. test set 1 made to look like test set 2 along the directions the sets
    differ in. The drop from test-1 accuracy to the re-weighted one is the part of the gap
    that covariate shift along those directions accounts for."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    i1 = inference.stratified_subsample(y1, max_rows, seed)
    pooled = {c: np.concatenate([x1[y1 == c], x2[y2 == c]]).astype(np.float64).mean(axis=0) for c in np.unique(y1)}
    z1, z2 = class_centred(x1[i1], y1[i1], pooled), class_centred(x2, y2, pooled)
    x = np.concatenate([z1, z2])
    d = np.concatenate([np.zeros(len(z1), int), np.ones(len(z2), int)])
    prob = np.empty(len(d))
    for train, test in StratifiedKFold(folds, shuffle=True, random_state=seed).split(x, d):
        model = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=2000)).fit(x[train], d[train])
        prob[test] = model.predict_proba(x[test])[:, 1]
    odds = np.clip(prob[: len(z1)], 1e-6, 1 - 1e-6)
    weights = odds / (1 - odds)
    hit = correct1[i1].astype(float)
    acc_rw = float(np.sum(weights * hit) / np.sum(weights))
    ess = float(weights.sum() ** 2 / np.sum(weights**2))
    return {"auc_within_class": inference.auc(d, prob), "test1_top1": float(hit.mean()), "test1_top1_reweighted": acc_rw,
            "share_points": 100 * (float(hit.mean()) - acc_rw), "effective_sample_size": ess,
            "rows_test1": len(i1), "rows_test2": len(z2)}


def recentring_reading(correct: dict, labels: dict, reweighted: dict, n_boot: int, seed: int) -> dict[str, Any]:
    """Points recovered when test set 2 is moved onto test set 1's feature mean (the head unchanged).
    Interval: classes resampled (paired per-image differences)."""
    c1 = correct[("test1", "train")].astype(float)
    before, after = correct[("test2", "train")].astype(float), correct[("test2", "test1_mean")].astype(float)
    points = 100 * float(after.mean() - before.mean())
    gap = 100 * float(c1.mean() - before.mean())
    ci = evidence.class_bootstrap(lambda i1, i2: 100 * float(after[i2].mean() - before[i2].mean()),
                                  labels["test1"], labels["test2"], n_boot=max(n_boot, 100), seed=seed)
    sentence = (f"Moving test set 2 onto test set 1's feature mean recovers {points:.1f} of the {gap:.1f} points "
                f"(95% interval {ci[0]:.1f} to {ci[1]:.1f}, classes resampled); test set 1 re-weighted by a "
                f"within-class domain classifier's odds (AUC {reweighted['auc_within_class']:.2f}) loses "
                f"{reweighted['share_points']:.1f} points")
    sentence += "." if ci[0] > 0 else ": no evidence that a shift of the feature means accounts for part of the gap."
    return evidence.reading("recentring", points, ci, sentence=sentence, unit="classes resampled",
                            reweighted_share_points=reweighted["share_points"])


def plot_adaptation(table: pd.DataFrame, head_name: str, path: Path) -> str:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.6))
    variants = ["train", "own_mean", "own_mean_std"]
    labels = {"train": "train mean/std (as trained)", "own_mean": "own mean, train std", "own_mean_std": "own mean/std"}
    width = 0.27
    for i, variant in enumerate(variants):
        sub = table[table["standardisation"] == variant].set_index("test").loc[["test1", "test2"]]
        bars = ax.bar(np.arange(2) + (i - 1) * width, sub["top1"], width, label=labels[variant])
        for bar, v in zip(bars, sub["top1"]):
            ax.text(bar.get_x() + bar.get_width() / 2, v, f"{v:.1%}", ha="center", va="bottom", fontsize=7)
    ax.set_xticks(np.arange(2), ["test1", "test2"])
    ax.set_ylabel("top-1 accuracy")
    low = float(table["top1"].min())
    ax.set_ylim(max(0.0, low - 0.1), min(1.0, float(table["top1"].max()) + 0.06))
    ax.set_title(f"{head_name}: standardisation by each test set's own moments")
    ax.legend(fontsize=7, loc="lower left")
    return save_figure(fig, path)


def main(argv: Sequence[str] | None = None) -> None:
    analysis_cli(
        mean_shift,
        description="Mean shift: one head's top-1 with each test set's own moments.",
        declared=OUTPUTS,
        inputs={
            "model": "results/heads/{head}/model.pt",
            "test1": "test1 manifest",
            "test2": "test2 manifest",
        },
        argv=argv,
    )


if __name__ == "__main__":
    main()
