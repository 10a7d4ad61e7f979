"""Per-class accuracy drop from test set 1 to test set 2 for one head.

Reads the two metrics.json files written by evaluate (per-class correct counts and mean
true-class probability) and the class-count table (train rows per class, class names); never a
feature. Writes the outputs (paths from the rule) table (one row per class, ranked by its shrunk
drop), summary, distribution_figure and top_figure.

Statistics (scripts.lib.stats.clustered; why and how well they work: docs/statistics.md):
  * is there a gap? the stratified permutation test on image-level counts with classes as
    strata (Cochran–Mantel–Haenszel as a cross-check); the paired t across classes (classes as
    the unit) as a second reading (not a Wilcoxon test on per-class accuracies: from 50 vs 10
    images it rejects a true null far too often, docs/statistics.md).
  * how large? the macro gap with two intervals: images resampled within class, and classes
    resampled;
  * is it concentrated in a few classes? every concentration number next to its value under
    binomial noise with a uniform drop (parametric bootstrap);
  * which classes? ranked by the drop of empirical-Bayes (shrunk) accuracies, so that a class
    is not "largest drop" only because 10 test-2 images are noisy; ties broken by the drop in
    mean true-class probability.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

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
from scripts.lib.stats import clustered, inference

OUTPUTS = {"table": ".csv", "summary": ".json", "distribution_figure": ".png", "top_figure": ".png"}


def _correct_counts(m: pd.DataFrame) -> np.ndarray:
    """Correct images per class: the integer column when evaluate wrote it, else accuracy × n."""
    if "correct" in m:
        return m["correct"].fillna(0).to_numpy(np.int64)
    return np.round(m["accuracy"].fillna(0).to_numpy(float) * m["n"].to_numpy(float)).astype(np.int64)


def per_class_gap(m1: pd.DataFrame, m2: pd.DataFrame, counts: pd.DataFrame) -> pd.DataFrame:
    frame = per_class.drop_table(counts, m1, m2)  # class, name, train_rows, acc_test1/2, drop
    for position, (column, values) in enumerate([
        ("n_test1", m1["n"].astype(np.int64)), ("n_test2", m2["n"].astype(np.int64)),
        ("correct_test1", _correct_counts(m1)), ("correct_test2", _correct_counts(m2)),
    ], start=3):
        frame.insert(position, column, values)
    frame.insert(9, "p_label_test1", m1["mean_p_label"].astype(float))
    frame.insert(10, "p_label_test2", m2["mean_p_label"].astype(float))
    frame["p_label_drop"] = frame["p_label_test1"] - frame["p_label_test2"]
    both = (frame["n_test1"] > 0) & (frame["n_test2"] > 0)
    k1, n1 = frame["correct_test1"].to_numpy(), frame["n_test1"].to_numpy()
    k2, n2 = frame["correct_test2"].to_numpy(), frame["n_test2"].to_numpy()
    # Empirical Bayes: a drop measured on 10 test-2 images is pulled towards the mean drop in
    # proportion to its binomial noise, so the ranking is not led by the noisiest classes.
    frame["drop_shrunk"] = np.nan
    frame.loc[both, "drop_shrunk"] = clustered.shrunk_drop(k1[both], n1[both], k2[both], n2[both])
    # Per class: is test 2 accuracy lower than test 1? One-sided Fisher exact test on the 2×2 counts.
    frame["fisher_p"] = np.where(both, clustered.fisher_greater_p(k1, n1, k2, n2), np.nan)
    frame["fisher_q"] = inference.bh_q(frame["fisher_p"].to_numpy())
    frame = frame.sort_values(["drop_shrunk", "p_label_drop", "class"], ascending=[False, False, True],
                              kind="stable", na_position="last")
    frame.insert(0, "rank", np.arange(1, len(frame) + 1))
    return frame.reset_index(drop=True)


def plot_distribution(frame: pd.DataFrame, head: str, path: Path) -> str:
    plt = pyplot()
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    valid = frame.dropna(subset=["drop"])
    ax.hist(valid["drop"], bins=min(41, max(10, len(valid) // 5)), color="#4f81bd")
    ax.axvline(0, color="k", lw=0.8)
    ax.axvline(valid["drop"].mean(), color="#c0504d", lw=1.2, label=f"mean {valid['drop'].mean():+.3f}")
    ax.hist(valid["drop_shrunk"], bins=min(41, max(10, len(valid) // 5)), color="#f79646", alpha=0.6,
            label="shrunk (empirical Bayes)")
    ax.set_xlabel("per-class accuracy drop (test1 − test2)")
    ax.set_ylabel("classes")
    ax.legend(fontsize=8)
    ax.set_title(mpl_text(f"{head}: distribution of per-class drops"))
    rng = np.random.default_rng(0)
    jitter = lambda n: rng.uniform(-0.006, 0.006, n)
    ax2.scatter(valid["acc_test1"] + jitter(len(valid)), valid["acc_test2"] + jitter(len(valid)), s=8, alpha=0.6)
    ax2.plot([0, 1], [0, 1], color="k", lw=0.8, ls="--")
    for row in valid.head(5).itertuples():
        ax2.annotate(mpl_text(row.name), (row.acc_test1, row.acc_test2), fontsize=7, xytext=(3, -8), textcoords="offset points")
    ax2.set_xlabel("accuracy on test1")
    ax2.set_ylabel("accuracy on test2")
    ax2.set_title("per class (below the diagonal: harder on test2)")
    return save_figure(fig, path)


def plot_top(frame: pd.DataFrame, k: int, head: str, path: Path) -> str:
    plt = pyplot()
    top = frame.head(k).iloc[::-1]
    fig, ax = plt.subplots(figsize=(7, 0.3 * max(len(top), 3) + 1.2))
    y = np.arange(len(top))
    ax.barh(y + 0.2, top["acc_test1"], 0.4, label="test1", color="#4f81bd")
    ax.barh(y - 0.2, top["acc_test2"], 0.4, label="test2", color="#c0504d")
    ax.set_yticks(y, [mpl_text(f"{n} ({t} train)") for n, t in zip(top["name"], top["train_rows"])], fontsize=7)
    ax.set_xlabel("accuracy")
    ax.set_xlim(0, 1)
    ax.legend(fontsize=7, loc="lower right")
    ax.set_title(mpl_text(f"{head}: classes with the largest drop (ranked on shrunk accuracies)"))
    return save_figure(fig, path)


def gap(*, metrics1: str | Path, metrics2: str | Path, class_counts: str | Path, outputs: Mapping[str, str | Path],
        options: dict | None = None, head_name: str, seed: int = 0) -> dict[str, Any]:
    started, opts, files = begin("gap", options, outputs, OUTPUTS)
    alpha, k = float(opts["alpha"]), int(opts["top_k"])
    head = head_name
    frame = per_class_gap(load_per_class(metrics1), load_per_class(metrics2), read_class_counts(class_counts))
    write_table(frame, files["table"])
    figures = [plot_distribution(frame, head, files["distribution_figure"]),
               plot_top(frame, k, head, files["top_figure"])]
    valid = frame.dropna(subset=["drop"])
    counts = [valid[c].to_numpy() for c in ("correct_test1", "n_test1", "correct_test2", "n_test2")]
    test = clustered.stratified_gap_test(*counts, n_perm=int(opts["permutations"]), seed=seed)
    intervals = clustered.gap_intervals(*counts, n_boot=int(opts["bootstrap"]), seed=seed)
    paired = inference.paired_tests(valid["acc_test1"].to_numpy(), valid["acc_test2"].to_numpy())
    null = clustered.concentration_null(*counts, reps=int(opts["null_reps"]), alpha=alpha, seed=seed)
    conc = {key: null[key] for key in ("share_of_drop_from_top_decile", "share_classes_dropping",
                                       "share_classes_improving", "n_classes_significant_drop")}
    numbers = {
        "n_classes": len(valid), "alpha": alpha,
        "mean_acc_test1": float(valid["acc_test1"].mean()), "mean_acc_test2": float(valid["acc_test2"].mean()),
        "mean_drop": test["gap"], "median_drop": paired["median_diff"],
        "mean_drop_ci95_images": intervals["ci_images_within_class"],
        "mean_drop_ci95_classes": intervals["ci_classes"],
        "gap_test": "stratified permutation (images swap sets within class), two-sided",
        "gap_test_p": test["p"], "gap_test_z": test["z"], "gap_test_p_normal": test["p_normal"],
        "permutations": test["n_perm"], "cmh_statistic": test["cmh_statistic"], "cmh_p": test["cmh_p"],
        "mh_odds_ratio": test["mh_odds_ratio"], "mh_odds_ratio_ci95": test["mh_odds_ratio_ci95"],
        "paired_t": paired["paired_t"], "paired_t_p": paired["paired_t_p"],
        **{key: value["observed"] for key, value in conc.items()},
        "n_classes_significant_drop": int(conc["n_classes_significant_drop"]["observed"]),
        **{f"{key}_null_95": value["null_95"] for key, value in conc.items()},
        **{f"{key}_p_upper": value["p_upper"] for key, value in conc.items()},
        "concentration_null": {key: null[key] for key in ("null_model", "reps", "logit_shift")},
        "units": {"gap_test": "images, classes as strata (conditional on these classes)",
                  "mean_drop_ci95_images": "images resampled within class",
                  "mean_drop_ci95_classes": "classes resampled",
                  "paired_t": "classes", "top_classes": "ranked by drop of shrunk (empirical-Bayes) accuracies"},
        "verdict_rests_on": ["gap_test_p", "mean_drop_ci95_classes", "share_of_drop_from_top_decile_p_upper"],
        "top_classes": frame.head(k)[["rank", "class", "name", "train_rows", "acc_test1", "acc_test2", "drop",
                                      "drop_shrunk", "fisher_q"]].to_dict(orient="records"),
    }
    share = clustered.concentrated_share(*counts, reps=int(opts["share_reps"]), n_boot=int(opts["share_reps"]),
                                             seed=seed)
    numbers["concentrated_share"] = share
    verdict = _verdict(head, numbers, frame.head(3), alpha)
    gap_block = {"points": 100 * test["gap"], "ci95": [100 * v for v in intervals["ci_classes"]],
                 "significant": bool(test["p"] < alpha), "p": test["p"], "alpha": alpha,
                 "unit": "classes resampled (interval); images within class (permutation p)"}
    return write_summary(files["summary"], verdict=verdict, figures=figures, table=files["table"],
                         numbers=numbers, started=started, seed=seed, inputs=[metrics1, metrics2, class_counts],
                         extra={"head": head, "gap": gap_block,
                                "reading": concentration_reading(share, frame, alpha)})


def concentration_reading(share: dict, frame: pd.DataFrame, alpha: float) -> dict[str, Any]:
    """The points carried by classes whose shrunk drop exceeds the common
    (median) drop, minus what binomial noise under a uniform drop gives. No evidence unless the
    statistic also exceeds its uniform-drop null (p_upper < alpha)."""
    points, ci = 100 * share["share"], [100 * v for v in share["ci95"]]
    beyond_noise = share["p_upper"] < alpha
    top = ", ".join(str(n) for n in frame["name"].head(3))
    sentence = (f"Classes that drop more than the common drop carry {points:.1f} points of the gap beyond noise "
                f"(95% interval {ci[0]:.1f} to {ci[1]:.1f}, classes resampled; uniform-drop null "
                f"{fmt_p(share['p_upper'])}); "
                + (f"largest shrunk drops: {top}." if beyond_noise else
                   "no evidence that the drop is more concentrated than binomial noise around a common drop."))
    return evidence.reading("concentration", points, ci, sentence=sentence, unit="classes resampled",
                            beyond_noise=bool(beyond_noise), null_p=share["p_upper"])


def _verdict(head: str, n: dict[str, Any], top: pd.DataFrame, alpha: float) -> str:
    gap, p = n["mean_drop"], n["gap_test_p"]
    lo, hi = n["mean_drop_ci95_classes"]
    significant = p < alpha
    share, share_null = n["share_of_drop_from_top_decile"], n["share_of_drop_from_top_decile_null_95"]
    conc_p = n["share_of_drop_from_top_decile_p_upper"]
    ilo, ihi = n["mean_drop_ci95_images"]
    # Two units, said as such: the test and the images interval are about these classes (images
    # swap sets within their class); the classes interval is about a population of such classes.
    parts = [
        f"Per class, {head} is {gap:+.1%} less accurate on test set 2 on average (95% interval "
        f"{ilo:+.1%} to {ihi:+.1%} with images resampled within these classes, {lo:+.1%} to {hi:+.1%} with "
        f"classes resampled; stratified permutation test of images within classes {fmt_p(p)}"
        + ("" if significant else f", so no evidence of a change at α = {alpha:g}") + ")",
    ]
    improving = n["share_classes_improving"]
    improving_null = n["share_classes_improving_null_95"]
    if improving_null[0] is not None:
        parts.append(f"{improving:.0%} of classes appear to improve, against {improving_null[0]:.0%}–"
                     f"{improving_null[1]:.0%} from noise alone under a uniform drop")
    if share is not None and share_null[0] is not None and conc_p is not None:
        concentrated = conc_p < alpha
        parts.append(f"the 10% of classes with the largest drop carry {share:.0%} of it (noise alone: "
                     f"{share_null[0]:.0%}–{share_null[1]:.0%}), "
                     + ("more concentrated than a uniform drop" if concentrated
                        else "no evidence that the drop is concentrated in a few classes"))
    parts.append(f"{n['n_classes_significant_drop']} classes drop significantly on their own (Fisher q < {alpha})")
    names = ", ".join(f"{r.name} ({r.acc_test1:.0%}→{r.acc_test2:.0%})" for r in top.itertuples())
    return "; ".join(parts) + f"; largest drops (shrunk estimates): {names}."


def main(argv: Sequence[str] | None = None) -> None:
    analysis_cli(
        gap,
        description="The test-set gap of one head and how it spreads over classes.",
        declared=OUTPUTS,
        inputs={
            "metrics1": "results/eval/{head}/test1/metrics.json",
            "metrics2": "results/eval/{head}/test2/metrics.json",
            "class-counts": "class_counts.csv",
        },
        argv=argv,
    )


if __name__ == "__main__":
    main()
