"""Does training-set class imbalance explain per-class accuracy or the drop? (one head)

Reads the class-count table (train rows per class, from the label column only) and the two
metrics.json files of evaluate. Writes the outputs table, summary, figure.

On ImageNet ~89% of classes have exactly the maximum of 1,300 training rows, so a rank
correlation of rows vs drop is in effect a comparison of two groups with a 900-way tie. When
one count holds at least `max_tie_share` of the classes, the analysis says so ("trend not
estimable") and its reading rests on the honest comparison: classes with the full number of
rows vs those with fewer, a permutation test of the difference in mean per-class drop (classes
as the unit, seeded), plus Spearman within the reduced classes when there are enough of them.
Otherwise Spearman ρ over all classes. A non-significant result is "no evidence", not "does not
explain": with ~110 reduced classes and 10 test-2 images each, a small effect can go unseen.

Both tests compare drops on the **logit** scale (empirical logits, `logit_drop`): classes with
fewer rows are often less accurate, and one common logit drop is a larger probability drop at a
lower base accuracy (a drop of 0.65: 90 % → 82.4 %, 7.6 points; 85.7 % → 75.8 %, 9.9 points), so a
probability-scale comparison rejected this null of "no extra drop" by construction (39.5 % of 200
simulations of this design; tests/test_stats_design.py; the logit scale: 4.5 %). The
drops in points are still reported beside it, and the share counterfactual moves each reduced
class to the full classes' mean logit drop from its own test-1 accuracy.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import special
from scipy import stats as sps

from scripts.lib.analysis import evidence, per_class
from scripts.lib.analysis.common import (
    fmt_p,
    load_per_class,
    mpl_text,
    pyplot,
    read_class_counts,
    save_figure,
    write_summary,
    write_table,
)
from scripts.lib.analysis.step import analysis_cli, begin
from scripts.lib.stats import inference

OUTPUTS = {"table": ".csv", "summary": ".json", "figure": ".png"}
TARGETS = (("acc_test1", "accuracy on test1"), ("acc_test2", "accuracy on test2"), ("drop", "drop (test1 − test2)"))


def plot_scatter(frame: pd.DataFrame, results: dict, head: str, path: Path) -> str:
    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    rng = np.random.default_rng(0)
    for ax, (col, label) in zip(axes, TARGETS):
        y = frame[col].to_numpy(float)
        ax.scatter(frame["train_rows"] + rng.uniform(-0.3, 0.3, len(frame)), y + rng.uniform(-0.004, 0.004, len(y)),
                   s=8, alpha=0.6)
        r = results[col]
        ax.set_title(f"Spearman ρ = {r['rho']:+.3f}, {fmt_p(r['p'])}" if r["rho"] is not None and np.isfinite(r["rho"])
                     else "Spearman ρ undefined (no spread)", fontsize=9)
        ax.set_xlabel("training rows of the class")
        ax.set_ylabel(label)
    fig.suptitle(mpl_text(f"{head}: class size in training vs per-class accuracy"))
    return save_figure(fig, path)


def imbalance(*, class_counts: str | Path, metrics1: str | Path, metrics2: str | Path, outputs: Mapping[str, str | Path],
              options: dict | None = None, head_name: str, seed: int = 0) -> dict[str, Any]:
    started, opts, files = begin("imbalance", options, outputs, OUTPUTS)
    alpha = float(opts["alpha"])
    head = head_name
    counts = read_class_counts(class_counts)
    m1, m2 = load_per_class(metrics1), load_per_class(metrics2)
    frame = per_class.drop_table(counts, m1, m2)
    frame["logit_drop"] = logit_drop(m1["correct"], m1["n"], m2["correct"], m2["n"])
    frame = frame.dropna(subset=["acc_test1", "acc_test2"])
    results = {col: inference.spearman(frame["train_rows"], frame[col]) for col, _ in TARGETS}
    results["logit_drop"] = inference.spearman(frame["train_rows"], frame["logit_drop"])
    full = frame["train_rows"] == frame["train_rows"].max()
    modal_share = float(frame["train_rows"].value_counts().iloc[0] / len(frame)) if len(frame) else 0.0
    trend_estimable = modal_share < float(opts["max_tie_share"]) and frame["train_rows"].nunique() >= 3
    groups = {"n_full_classes": int(full.sum()), "n_reduced_classes": int((~full).sum()),
              "full_rows": int(frame["train_rows"].max()), "modal_count_share": modal_share}
    min_group = int(opts["min_group"])
    for col in [c for c, _ in TARGETS] + ["logit_drop"]:
        groups[f"{col}_full"] = float(frame.loc[full, col].mean())
        groups[f"{col}_reduced"] = float(frame.loc[~full, col].mean()) if (~full).any() else None
        groups[f"{col}_group_p"] = (
            _group_permutation_p(frame.loc[~full, col].to_numpy(float), frame.loc[full, col].to_numpy(float),
                                 int(opts["permutations"]), seed)
            if full.sum() >= 2 and (~full).sum() >= 2 else None)
    reduced = frame[~full]
    within = inference.spearman(reduced["train_rows"], reduced["logit_drop"]) if len(reduced) >= min_group else None
    write_table(frame.sort_values("train_rows", kind="stable"), files["table"])
    figure = plot_scatter(frame, results, head, files["figure"])
    primary = _primary(results["logit_drop"], groups, trend_estimable, alpha, min_group)
    numbers = {"alpha": alpha, "n_classes": len(frame),
               "train_rows_min": int(frame["train_rows"].min()), "train_rows_max": int(frame["train_rows"].max()),
               "train_rows_ratio": float(frame["train_rows"].max() / max(frame["train_rows"].min(), 1)),
               "trend_estimable": bool(trend_estimable),
               **{f"spearman_{col}": results[col] for col in results}, **groups,
               "spearman_drop_within_reduced": within,
               "primary_test": primary["test"], "primary_p": primary["p"], "primary_effect": primary["effect"],
               "evidence": primary["evidence"],
               "units": {"group_p": "classes (permutation of the full/reduced labels)", "spearman": "classes",
                         "scale": "primary test on the per-class logit drop (empirical logits)"},
               "verdict_rests_on": ["primary_test", "primary_p", "primary_effect"]}
    verdict = _verdict(head, numbers, results, primary, alpha)
    block = imbalance_reading(frame, full, primary, min_group, seed)
    return write_summary(files["summary"], verdict=verdict, figures=[figure], table=files["table"],
                         numbers=numbers, started=started, seed=seed, inputs=[class_counts, metrics1, metrics2],
                         extra={"head": head, "reading": block})


def logit_drop(correct1, n1, correct2, n2) -> np.ndarray:
    """Per class: empirical logit of the test-1 accuracy minus that of test 2, log((k + ½)/(n − k + ½))
    (finite at 0 and n correct; nearly unbiased at n = 10). NaN where a class has no images."""
    k1, m1, k2, m2 = (np.asarray(a, float) for a in (correct1, n1, correct2, n2))
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.log((k1 + .5) / (m1 - k1 + .5)) - np.log((k2 + .5) / (m2 - k2 + .5))
    return np.where((m1 > 0) & (m2 > 0), out, np.nan)


def imbalance_share(drop: np.ndarray, reduced: np.ndarray, acc1: np.ndarray | None = None,
                    ldrop: np.ndarray | None = None) -> float:
    """Points of the macro gap that go if the classes with fewer training rows dropped like the
    full classes. With `acc1` and `ldrop` (per-class logit drops): each reduced class keeps its
    test-1 accuracy and loses the full classes' mean logit drop instead of its own (a lower base
    accuracy alone is no share), against its observed test-2 accuracy (not the expit of its own
    noisy logit drop: that is biased by Jensen's inequality at 10 images); without them, on the
    probability scale: (share of reduced classes) × (their mean drop − the full classes' mean drop)."""
    if reduced.sum() == 0 or (~reduced).sum() == 0:
        return float("nan")
    if acc1 is None or ldrop is None:
        return 100 * float(reduced.mean() * (drop[reduced].mean() - drop[~reduced].mean()))
    base = special.logit(np.clip(acc1[reduced], 1e-3, 1 - 1e-3))
    own = acc1[reduced] - drop[reduced]  # the observed test-2 accuracy
    like_full = special.expit(base - ldrop[~reduced].mean())
    return 100 * float(np.sum(like_full - own) / len(drop))


def imbalance_reading(frame: pd.DataFrame, full: pd.Series, primary: dict, min_group: int, seed: int,
                       n_boot: int = 2000) -> dict[str, Any]:
    """Counterfactual share: every class trained on the full number of rows. Interval: classes
    resampled. Not estimable when one group has fewer than `min_group` classes."""
    reduced = (~full).to_numpy()
    if reduced.sum() < min_group or (~reduced).sum() < min_group:
        return evidence.not_estimable(
            "imbalance", f"Not estimable: {int(reduced.sum())} classes have fewer training rows than the "
            f"others and {int((~reduced).sum())} the full number; a comparison needs {min_group} in each.")
    drop = frame["drop"].to_numpy(float)
    acc1, ldrop = frame["acc_test1"].to_numpy(float), frame["logit_drop"].to_numpy(float)
    points = imbalance_share(drop, reduced, acc1, ldrop)
    rng = np.random.default_rng([seed, 33])
    draws = []
    for _ in range(n_boot):
        idx = rng.integers(0, len(drop), len(drop))
        draws.append(imbalance_share(drop[idx], reduced[idx], acc1[idx], ldrop[idx]))
    draws = np.asarray(draws)
    ci = inference.bc_interval(draws[np.isfinite(draws)], points)
    sentence = (f"If the {int(reduced.sum())} classes with fewer training rows dropped like the full classes, the "
                f"gap would shrink by {points:.1f} points (95% interval {ci[0]:.1f} to {ci[1]:.1f}, classes "
                f"resampled; {primary['test']} {fmt_p(primary['p'])})"
                + ("." if primary["evidence"] != "none" else ": no evidence that class imbalance accounts for part of the gap."))
    return evidence.reading("imbalance", points, ci, sentence=sentence, unit="classes resampled",
                            supported=primary["evidence"] != "none")


def _group_permutation_p(reduced: np.ndarray, full: np.ndarray, n_resamples: int, seed: int) -> float:
    """Two-sided permutation p of the difference in means (reduced − full), classes as the unit."""
    res = sps.permutation_test((reduced, full), lambda a, b, axis: a.mean(axis=axis) - b.mean(axis=axis),
                               vectorized=True, n_resamples=n_resamples, rng=np.random.default_rng([seed, 10]))
    return float(res.pvalue)


def _primary(spearman_drop: dict, groups: dict, trend_estimable: bool, alpha: float, min_group: int) -> dict:
    """The test the verdict rests on, its p, its effect (positive: fewer rows, larger drop) and
    the evidence level for the report (moderate when significant in the direction that would
    account for part of the gap, else none)."""
    if trend_estimable:
        rho, p = spearman_drop["rho"], spearman_drop["p"]
        effect = -rho if rho is not None and np.isfinite(rho) else None
        test = "Spearman ρ of training rows vs per-class logit drop"
    elif groups["n_reduced_classes"] >= min_group and groups["n_full_classes"] >= min_group:
        p = groups["logit_drop_group_p"]
        effect = groups["logit_drop_reduced"] - groups["logit_drop_full"]
        test = "mean logit drop, classes with fewer rows vs the full number (permutation)"
    else:
        # No test: the report must read this as "unclear", not as evidence against imbalance.
        return {"test": "not estimable: too few classes in one group", "p": None, "effect": None, "evidence": None}
    supports = p is not None and np.isfinite(p) and p < alpha and effect is not None and effect > 0
    return {"test": test, "p": p, "effect": effect, "evidence": "moderate" if supports else "none"}


def _verdict(head: str, n: dict, results: dict, primary: dict, alpha: float) -> str:
    def describe(col: str) -> str:
        r = results[col]
        if r["rho"] is None or not np.isfinite(r["rho"]):
            return "undefined"
        return f"ρ = {r['rho']:+.2f} ({fmt_p(r['p'])})"

    rows = f"Training rows per class range {n['train_rows_min']}–{n['train_rows_max']}"
    if primary["p"] is None:
        return (f"{rows}; {primary['test']}, so whether class imbalance relates to {head}'s drop cannot be "
                "judged from these classes.")
    if n["trend_estimable"]:
        first = (f"{rows}; Spearman vs accuracy on test1 {describe('acc_test1')}, on test2 {describe('acc_test2')}, "
                 f"vs the drop {describe('drop')}, vs the logit drop {describe('logit_drop')}")
    else:
        first = (f"{rows}, but {n['modal_count_share']:.0%} of classes have the same count, so a trend is not "
                 f"estimable; classes with fewer rows ({n['n_reduced_classes']}) drop by "
                 f"{n['drop_reduced']:+.1%} on average vs {n['drop_full']:+.1%} for the {n['n_full_classes']} "
                 f"full classes, {n['logit_drop_reduced']:+.2f} vs {n['logit_drop_full']:+.2f} on the logit scale "
                 f"(permutation {fmt_p(primary['p'])}, compared on the logit scale, which a lower base accuracy "
                 "alone does not move)")
    if primary["evidence"] != "none":
        reading = "so classes with fewer training rows drop more: imbalance may help explain why test set 2 is harder"
    elif _opposite(primary, alpha):
        # A small p in the other direction must not read as a non-result next to "no evidence".
        reading = ("so classes with fewer training rows drop less, the opposite of what imbalance would cause: "
                   "no evidence that class imbalance accounts for part of why test set 2 is harder")
    else:
        reading = f"so no evidence (at α = {alpha:g}) that class imbalance accounts for part of why test set 2 is harder"
    return f"{first}; {reading} for {head}."


def _opposite(primary: dict, alpha: float) -> bool:
    """A significant difference in the direction imbalance cannot explain (fewer rows, smaller drop)."""
    p, effect = primary["p"], primary["effect"]
    return p is not None and np.isfinite(p) and p < alpha and effect is not None and effect < 0


def main(argv: Sequence[str] | None = None) -> None:
    analysis_cli(
        imbalance,
        description="Does train-set class imbalance account for part of the gap?",
        declared=OUTPUTS,
        inputs={
            "class-counts": "class_counts.csv",
            "metrics1": "test-1 metrics.json",
            "metrics2": "test-2 metrics.json",
        },
        argv=argv,
    )


if __name__ == "__main__":
    main()
