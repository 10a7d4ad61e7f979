"""ImageNet "ReaL" labels: re-score a test set whose images are ImageNet val files, split its errors,
and calibrate the label-noise cause on real annotations (one head).

ReaL (Beyer et al. 2020, "Are we done with ImageNet?"; resources/real-labels/, Apache-2.0) gives,
for each of the 50,000 val images, the set of classes raters judged correct (entry i of real.json ↔
`ILSVRC2012_val_{i+1:08d}.JPEG`; an empty set: no valid label). Images are matched by **file
name**, never by row order; class indices follow the ImageNet-1k order of the labels.

Used twice:
  * by scripts.evaluate.evaluate (`rescore`, in the library scripts/lib/real_scoring.py): ReaL top-1 over
    the images that have a ReaL label, with a 95 % interval that resamples images within each
    (original-label) class, next to the original top-1 on the same images, and the split of the
    errors: the metrics.json `real` block;
  * by the `real_labels/{head}` rule (`real_check`, this module's CLI): the same split with its
    examples (path, label, prediction, ReaL set, class names) and a figure; whether the head's
    confident disagreements (calibrated confidence ≥ the label_noise threshold, prediction ≠
    label) are enriched for "prediction in the ReaL set" (ratio and difference of shares against
    the other errors, 95 % interval resampling classes); and `rows.parquet`, the per-image flags
    with which scripts.analysis.label_noise bounds its test-2 share by what ReaL supports on this test set.

Error categories (prediction ≠ original label):
  in_real    the prediction is in the image's ReaL set (the original label was too narrow or wrong)
  no_label   the image has no valid label (empty ReaL set)
  genuine    the image has a ReaL set and the prediction is not in it (a model error)
"""
from __future__ import annotations

import argparse
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from scripts.lib.analysis import evidence
from scripts.lib.analysis.common import load_class_names, mpl_text, pyplot, save_figure, write_summary, write_table
from scripts.lib.featio.cli import run_cli
from scripts.lib.featio.errors import FeatgapError
from scripts.lib.featio.jsonio import parse_json_arg
from scripts.lib.options import merge_options, step_defaults

# The matching and re-scoring evaluate uses too: a library, so no step imports another step.
from scripts.lib.real_scoring import (  # noqa: F401 (load_real, match_paths, rescore: this step's API as well)
    CATEGORIES,
    RealLabels,
    Scored,
    categories,
    error_split,
    load_real,
    match_paths,
    rescore,
    score,
)
from scripts.lib.step_outputs import add_output_args, output_paths, parse_outputs

OUTPUTS = {"table": ".csv", "rows": ".parquet", "summary": ".json", "figure": ".png"}
CATEGORY_TEXT = {"in_real": "prediction in the ReaL set", "no_label": "image with no valid label",
                 "genuine": "genuine error"}


# ------------------------------------------------------------------ the check (rule real_labels)
def enrichment(confident: np.ndarray, in_real: np.ndarray, wrong: np.ndarray, classes: np.ndarray, *,
               n_boot: int, seed: int) -> dict[str, Any]:
    """Share of errors with the prediction in the ReaL set among confident disagreements vs among
    the other errors: ratio and difference, 95 % intervals resampling whole classes."""
    confident, in_real, wrong = (np.asarray(a, bool) for a in (confident, in_real, wrong))

    def parts(idx: np.ndarray) -> tuple[float, float]:
        c, o = wrong[idx] & confident[idx], wrong[idx] & ~confident[idx]
        share_c = in_real[idx][c].mean() if c.any() else np.nan
        share_o = in_real[idx][o].mean() if o.any() else np.nan
        return float(share_c), float(share_o)

    def ratio(idx: np.ndarray, _unused=None) -> float:
        a, b = parts(idx)
        return a / b if b > 0 else np.nan

    def difference(idx: np.ndarray, _unused=None) -> float:
        a, b = parts(idx)
        return 100 * (a - b)

    every = np.arange(len(wrong))
    share_c, share_o = parts(every)
    out = {"share_in_real_confident": share_c, "share_in_real_other": share_o,
           "confident_errors": int((wrong & confident).sum()), "other_errors": int((wrong & ~confident).sum())}
    for key, fn in (("ratio", ratio), ("difference_points", difference)):
        value = fn(every)
        # The same class resampler as the causes (evidence.class_bootstrap), on this one test set.
        ci = (evidence.class_bootstrap(lambda i1, _i2, fn=fn: fn(i1), classes, np.empty(0, np.int64),
                                       n_boot=n_boot, seed=seed) if np.isfinite(value) and n_boot else [None, None])
        out[key] = value if np.isfinite(value) else None
        out[f"{key}_ci95"] = ci
    return out


def real_check(*, predictions: str | Path, real_file: str | Path, outputs: Mapping[str, str | Path], num_classes: int,
               threshold: float, source: str | None = None, class_names: str | None = None,
               options: dict | None = None, head_name: str, test_name: str = "test1",
               seed: int = 0, real_entries: int | None = None) -> dict[str, Any]:
    """Error split with examples and figure, enrichment of confident disagreements for "prediction in
    the ReaL set", the calibration that scripts.analysis.label_noise uses, and rows.parquet. `real_entries`:
    the entries real.json must hold (config evaluate.real_labels.entries; None: the schema's default)."""
    started = time.perf_counter()
    opts = merge_options(options, "analysis.real_labels")
    files = output_paths(outputs, OUTPUTS, "real_labels")
    head = head_name
    frame = pd.read_parquet(predictions, columns=["row", "path", "label", "pred", "confidence"])
    if frame.empty:
        raise FeatgapError(f"{predictions}: no predictions")
    if real_entries is None:
        real_entries = step_defaults("evaluate.real_labels")["entries"]
    real = load_real(real_file, num_classes, entries=int(real_entries))
    names = load_class_names(class_names, num_classes)
    label, pred = frame["label"].to_numpy(np.int64), frame["pred"].to_numpy(np.int64)
    conf = frame["confidence"].to_numpy(np.float64)
    scored = score(frame["path"].tolist(), label, pred, real, source=source or str(predictions))
    cats = categories(label, pred, scored)
    wrong = cats != "correct"
    confident = conf >= threshold
    split = error_split(label, pred, scored)
    n = len(frame)
    in_real = cats == "in_real"
    enrich = enrichment(confident, in_real, wrong, label, n_boot=int(opts["bootstrap"]), seed=seed)
    conf_dis = wrong & confident
    # Calibration of the label-noise cause on this test set: how much of its confident
    # disagreements ReaL shows to be label noise (the prediction is in the ReaL set).
    precision = float(in_real[conf_dis].mean()) if conf_dis.any() else None
    expected = float((1 - conf[confident]).sum())
    calibration = {
        "threshold": threshold,
        "confident_disagreements": int(conf_dis.sum()),
        "confident_disagreement_points": 100 * float(conf_dis.mean()),
        "calibration_excess_points": 100 * (float(conf_dis.sum()) - expected) / n,
        "label_noise_points": 100 * float((conf_dis & in_real).mean()),
        "label_noise_share_of_confident_disagreements": precision,
    }
    rows = pd.DataFrame({"row": frame["row"].to_numpy(np.int64), "label": label, "pred": pred,
                         "confidence": conf.astype(np.float32), "n_real": scored.n_real.astype(np.int16),
                         "pred_in_real": scored.pred_in_real, "label_in_real": scored.label_in_real,
                         "category": cats.astype(str)})
    write_table(rows, files["rows"])
    errors = _error_table(frame, cats, scored, real, names)
    write_table(errors, files["table"])
    figure = plot_errors(cats, conf, threshold, head, test_name, files["figure"])
    examples = {c: errors[errors["category"] == c].head(int(opts["examples"])).to_dict(orient="records")
                for c in CATEGORIES}
    errs = split["errors"]
    sentence = _sentence(split, n, enrich, calibration, test_name)
    numbers = {"test": test_name, "images": n, "images_with_real": int(scored.has_real.sum()),
               "errors": errs, **{f"errors_{c}": split[c] for c in CATEGORIES},
               **{f"errors_{c}_points": 100 * split[c] / n for c in CATEGORIES},
               "correct_but_label_not_in_real": split["correct_but_label_not_in_real"],
               "enrichment_ratio": enrich["ratio"], "enrichment_ratio_ci95": enrich["ratio_ci95"],
               "enrichment_difference_points": enrich["difference_points"],
               "enrichment_difference_ci95": enrich["difference_points_ci95"],
               "share_in_real_confident": enrich["share_in_real_confident"],
               "share_in_real_other": enrich["share_in_real_other"],
               **{(k if k.startswith("calibration") else f"calibration_{k}"): v for k, v in calibration.items()},
               **{f"examples_{c}": examples[c] for c in CATEGORIES}}
    return write_summary(files["summary"], verdict=sentence, figures=[figure], table=files["table"],
                         numbers=numbers, started=started, seed=seed, inputs=[predictions, real_file],
                         extra={"head": head, "test": test_name, "real_file": str(real_file),
                                "error_split": split, "enrichment": enrich, "calibration": calibration,
                                "unit": "classes resampled (enrichment intervals)"})


def _sentence(split: dict, n: int, enrich: dict, calibration: dict, test: str) -> str:
    errs = split["errors"]
    pts = {c: 100 * split[c] / n for c in CATEGORIES}
    text = (f"With ReaL labels, {test}'s {100 * errs / n:.1f} points of errors ({errs} images) are "
            f"{pts['in_real']:.1f} points with the prediction in the ReaL set (label noise: the original label too "
            f"narrow or wrong), {pts['no_label']:.1f} points of images with no valid label and {pts['genuine']:.1f} "
            "points of genuine errors.")
    ratio, ci = enrich["ratio"], enrich["ratio_ci95"]
    diff, dci = enrich["difference_points"], enrich["difference_points_ci95"]
    if (ratio is None or None in ci) and (diff is None or None in dci):
        text += " The enrichment of confident disagreements is not estimable (no confident or no other errors)."
    elif ratio is None or None in ci:  # no other error in the ReaL set: the ratio is undefined
        text += (f" Confident disagreements (confidence ≥ {calibration['threshold']:g}) have the prediction in the "
                 f"ReaL set {enrich['share_in_real_confident']:.0%} of the time against "
                 f"{enrich['share_in_real_other']:.0%} for the other errors: {diff:+.1f} points (95% interval "
                 f"{dci[0]:.1f} to {dci[1]:.1f}, classes resampled)"
                 + (", so they are enriched for label noise." if dci[0] > 0 else
                    ": no evidence that they are enriched for label noise."))
    else:
        text += (f" Confident disagreements (confidence ≥ {calibration['threshold']:g}) have the prediction in the "
                 f"ReaL set {enrich['share_in_real_confident']:.0%} of the time against "
                 f"{enrich['share_in_real_other']:.0%} for the other errors: enrichment ×{ratio:.2f} (95% interval "
                 f"{ci[0]:.2f} to {ci[1]:.2f}, classes resampled)"
                 + (", so they are enriched for label noise." if ci[0] > 1 else
                    ": no evidence that they are enriched for label noise."))
    share = calibration["label_noise_share_of_confident_disagreements"]
    if share is not None:
        text += (f" {share:.0%} of the confident disagreements are label noise by ReaL "
                 f"({calibration['label_noise_points']:.2f} points of {test}'s images; calibration alone counts "
                 f"{calibration['calibration_excess_points']:.2f} points of excess).")
    return text


def _error_table(frame: pd.DataFrame, cats: np.ndarray, scored: Scored, real: RealLabels,
                 names: list[str]) -> pd.DataFrame:
    wrong = np.flatnonzero(cats != "correct")
    sets = [real.set_of(int(scored.entry[i])) for i in wrong]
    table = pd.DataFrame({
        "category": cats[wrong].astype(str),
        "row": frame["row"].to_numpy()[wrong], "path": frame["path"].to_numpy()[wrong],
        "label": frame["label"].to_numpy()[wrong], "label_name": [names[k] for k in frame["label"].to_numpy()[wrong]],
        "pred": frame["pred"].to_numpy()[wrong], "pred_name": [names[k] for k in frame["pred"].to_numpy()[wrong]],
        "confidence": frame["confidence"].to_numpy()[wrong].astype(np.float64),
        "real": [" ".join(str(k) for k in s) for s in sets],
        "real_names": ["; ".join(names[k] for k in s) for s in sets]})
    order = {c: i for i, c in enumerate(CATEGORIES)}
    table["_c"] = table["category"].map(order)
    table = table.sort_values(["_c", "confidence", "row"], ascending=[True, False, True], kind="stable")
    return table.drop(columns="_c").reset_index(drop=True)


def plot_errors(cats: np.ndarray, conf: np.ndarray, threshold: float, head: str, test: str, path: Path) -> str:
    """Left: the errors by category. Right: the share of each category by confidence band."""
    plt = pyplot()
    colors = {"in_real": "#4f81bd", "no_label": "#9bbb59", "genuine": "#c0504d"}
    wrong = cats != "correct"
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6), gridspec_kw={"width_ratios": [1, 1.4]})
    counts = [int(np.sum(cats == c)) for c in CATEGORIES]
    left.barh(np.arange(3)[::-1], counts, color=[colors[c] for c in CATEGORIES])
    left.set_yticks(np.arange(3)[::-1], [CATEGORY_TEXT[c] for c in CATEGORIES])
    for y, c in zip(np.arange(3)[::-1], counts):
        left.text(c, y, f" {c}", va="center", fontsize=8)
    left.set_xlabel(f"errors on {mpl_text(test)}")
    edges = np.unique(np.r_[0.0, 0.2, 0.4, 0.6, threshold, 1.0 + 1e-9])
    band = np.digitize(conf[wrong], edges[1:-1])
    labels = [f"{edges[i]:.2g}–{min(edges[i + 1], 1):.2g}" for i in range(len(edges) - 1)]
    bottom = np.zeros(len(labels))
    totals = np.bincount(band, minlength=len(labels)).astype(float)
    for c in CATEGORIES:
        share = np.bincount(band, weights=(cats[wrong] == c), minlength=len(labels)) / np.maximum(totals, 1)
        right.bar(np.arange(len(labels)), share, bottom=bottom, color=colors[c], label=CATEGORY_TEXT[c])
        bottom += share
    for x, t in enumerate(totals):
        right.text(x, 1.01, f"n={int(t)}", ha="center", fontsize=7)
    right.set_xticks(np.arange(len(labels)), labels)
    right.set_xlabel(f"calibrated confidence of the error (confident: ≥ {threshold:g})")
    right.set_ylabel("share of the errors")
    right.set_ylim(0, 1.08)
    right.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.suptitle(mpl_text(f"{head} on {test}: errors by ReaL label"))
    return save_figure(fig, path)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="ReaL labels: error split, enrichment, label-noise calibration.")
    parser.add_argument("--predictions", required=True, help="results/eval/{head}/{test}/predictions.parquet")
    parser.add_argument("--real", required=True, help="ReaL real.json")
    add_output_args(parser, OUTPUTS)
    parser.add_argument("--num-classes", type=int, required=True)
    parser.add_argument("--threshold", type=float, required=True, help="analysis.label_noise.threshold")
    parser.add_argument("--source", default=None, help="the test CSV (named in messages)")
    parser.add_argument("--class-names", default=None)
    parser.add_argument("--options", default="{}")
    parser.add_argument("--head-name", required=True)
    parser.add_argument("--test-name", default="test1")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--real-entries", type=int, default=None,
                        help="config evaluate.real_labels.entries: the entries real.json must hold")
    args = parser.parse_args(argv)
    summary = real_check(predictions=args.predictions, real_file=args.real, outputs=parse_outputs(args.output),
                         num_classes=args.num_classes, threshold=args.threshold, source=args.source,
                         class_names=args.class_names or None, options=parse_json_arg(args.options, "options"),
                         head_name=args.head_name, test_name=args.test_name, seed=args.seed,
                         real_entries=args.real_entries)
    print(summary["verdict"])


if __name__ == "__main__":
    run_cli(main)
