"""What, if anything, makes test set 2 better? Each variant against the primary head, on the same images.

Variants (config `improve.variants`, one entry each):
  retrain        the primary head's config with some keys changed (L2 normalisation, PCA whitening,
                 feature noise, mixup, class-balanced or logit-adjusted loss, …), trained by
                 scripts.train.train_head (rule improve_train) either once with the hyperparameters the
                 primary head's holdout selection chose (improve.hyperparameters: inherit, so the
                 variant differs from it in its own keys only) or with its own holdout selection;
  ensemble       the mean of the calibrated logits of several trained heads;
  restandardize  unsupervised test-time adaptation: each test set standardised with its own feature
                 mean and SD instead of the training ones (no labels are used).
No variant ever sees a test label before it is scored.

For each variant and test set: top-1, the paired difference from the primary head in points with a
95 % bootstrap interval (images resampled within class, both heads on the same resample), the exact
McNemar p on the discordant images, Holm-adjusted over the variants; the change in the gap (test 1
minus test 2) with its interval (both test sets resampled within class). A variant "improves test
set 2" only if its Holm-adjusted McNemar p is below alpha and its interval excludes 0; one that
gains on test set 2 while losing on test set 1 the same way is flagged.

With the accuracy-on-the-line fit (analysis reference_line, --reference-line: its summary.json),
the baseline and every variant also get the expected test-2 top-1 at their own test-1 top-1 and
their effective robustness (observed − expected, points) with a 95 % interval, computed by the
reference-line step's own formula (scripts.lib.analysis.probit_line.effective_robustness) from the variant's
top-1 standard errors (the exact variance of the within-class bootstrap) and the line's covariance.
"""
from __future__ import annotations

import argparse
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import binom
from statsmodels.stats.multitest import multipletests

from scripts.lib.analysis.common import mpl_text, pyplot, save_figure, write_table
from scripts.lib.analysis.probit_line import effective_robustness
from scripts.lib.featio.cli import run_cli
from scripts.lib.featio.errors import FeatgapError
from scripts.lib.featio.jsonio import parse_json_arg, read_json, write_json
from scripts.lib.featio.provenance import meta_block
from scripts.lib.featio.reader import read_split
from scripts.lib.heads import load_checkpoint, predict_logits
from scripts.lib.stats import inference
from scripts.lib.step_outputs import add_output_args, output_paths, parse_outputs
from scripts.lib.threads import add_threads_arg, limit_threads

KINDS = ("retrain", "ensemble", "restandardize")
TESTS = ("test1", "test2")
OUTPUTS = {"summary": ".json", "table": ".csv", "figure": ".png"}


@dataclass
class TestSet:
    name: str
    features: np.ndarray
    labels: np.ndarray


def load_test(manifest: str | Path, name: str) -> TestSet:
    split = read_split(manifest, columns=("label",))
    return TestSet(name, split.features, split.label.astype(np.int64))


def restandardized(checkpoint: dict, features: np.ndarray) -> dict:
    """The head with the test set's own feature mean and SD in place of the training ones."""
    x = features.astype(np.float64)
    if checkpoint.get("l2_normalize"):
        x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    std = x.std(axis=0)
    std[std < 1e-6] = 1.0  # as in training: a constant feature is left unscaled
    return {**checkpoint, "mean": x.mean(axis=0).astype(np.float32), "std": std.astype(np.float32)}


def variant_predictions(spec: dict, baseline: str, test: TestSet) -> np.ndarray:
    """Predicted classes of one variant on one test set."""
    kind = spec["kind"]
    if kind == "retrain":
        logits = predict_logits(spec["models"][0], test.features)
    elif kind == "ensemble":
        # predict_logits divides by each head's fitted temperature: calibrated logits are comparable.
        logits = np.mean([predict_logits(path, test.features) for path in spec["models"]], axis=0)
    elif kind == "restandardize":
        logits = predict_logits(restandardized(load_checkpoint(baseline), test.features), test.features)
    else:
        raise FeatgapError(f"improve variant kind must be one of {KINDS}, got {kind!r}")
    return logits.argmax(1)


def mcnemar_exact(base_correct: np.ndarray, variant_correct: np.ndarray) -> float:
    """Two-sided exact McNemar p: a binomial test on the discordant images."""
    gains = int(np.sum(~base_correct & variant_correct))
    losses = int(np.sum(base_correct & ~variant_correct))
    # Binomial(gains + losses, 1/2) is symmetric: the two-sided exact p is twice the smaller tail.
    return min(1.0, 2.0 * float(binom.cdf(min(gains, losses), gains + losses, 0.5)))


def paired_comparison(base: dict[str, np.ndarray], variant: dict[str, np.ndarray], labels: dict[str, np.ndarray],
                      *, n_boot: int, seed: int) -> dict[str, Any]:
    """Differences in top-1 (points) per test set and in the gap, with within-class bootstrap intervals."""
    out: dict[str, Any] = {}
    draws = {t: inference.stratified_resampler(labels[t]) for t in TESTS}
    rng = np.random.default_rng(seed)
    boot = {t: np.empty(n_boot) for t in TESTS}
    for i in range(n_boot):
        for t in TESTS:
            idx = draws[t](rng)
            boot[t][i] = 100 * (variant[t][idx].mean() - base[t][idx].mean())
    for t in TESTS:
        point = 100 * float(variant[t].mean() - base[t].mean())
        out[t] = {"points": point, "ci95": inference.bc_interval(boot[t], point) if n_boot else None,
                  "mcnemar_p": mcnemar_exact(base[t], variant[t])}
    gap_change = out["test1"]["points"] - out["test2"]["points"]  # (v1 - v2) - (b1 - b2)
    out["gap_change"] = {"points": gap_change,
                         "ci95": inference.bc_interval(boot["test1"] - boot["test2"], gap_change) if n_boot else None}
    return out


def stratified_se(correct: np.ndarray, labels: np.ndarray) -> float:
    """Standard error of top-1 (points) under the within-class bootstrap, exactly: classes keep
    their sizes, so var = Σ_c (n_c / N)² · p_c (1 − p_c) / n_c (no resampling noise to add)."""
    sizes = np.bincount(labels)
    hits = np.bincount(labels, weights=correct.astype(np.float64))
    present = sizes > 0
    p = hits[present] / sizes[present]
    return 100 * float(np.sqrt(np.sum(sizes[present] * p * (1 - p)) / len(labels) ** 2))


def on_the_line(line: dict, correct: dict[str, np.ndarray], labels: dict[str, np.ndarray]) -> dict[str, Any]:
    """Expected test-2 top-1 at this model's test-1 top-1 and its effective robustness with a 95 % interval."""
    t1, t2 = (100 * float(correct[t].mean()) for t in TESTS)
    row = effective_robustness(line, t1, t2, stratified_se(correct["test1"], labels["test1"]),
                               stratified_se(correct["test2"], labels["test2"]))
    return {k: row[k] for k in ("expected_test2_top1", "expected_gap", "effective_robustness", "ci95")}


def read_line(path: str | Path) -> dict[str, Any]:
    """The fitted line (with its covariance) from the reference_line step's summary.json."""
    line = read_json(path).get("line")
    if not isinstance(line, dict) or not {"intercept", "slope", "cov"} <= set(line):
        raise FeatgapError(f"{path}: no fitted 'line' (intercept, slope, cov): not reference_line's?")
    return line


def improve(baseline: str | Path, variants: dict[str, dict], test1: str | Path, test2: str | Path,
            outputs: Mapping[str, str | Path], *, baseline_name: str, bootstrap: int = 1000, alpha: float = 0.05,
            seed: int = 0, reference_line: str | Path | None = None, left_out: dict[str, str] | None = None) -> dict:
    """Score every variant against the baseline head; write the summary, the variants table and the figure.
    `left_out`: configured variants that do not apply to this data or these heads, with why
    (workflow/rules/common.smk); the summary and its verdict name them."""
    started = time.perf_counter()
    files = output_paths(outputs, OUTPUTS, "improve")
    if not variants:
        raise FeatgapError("improve: no variants configured (improve.variants)")
    tests = {"test1": load_test(test1, "test1"), "test2": load_test(test2, "test2")}
    labels = {t: tests[t].labels for t in TESTS}
    base = {t: predict_logits(baseline, tests[t].features).argmax(1) == labels[t] for t in TESTS}
    line = read_line(reference_line) if reference_line else None
    rows = []
    for i, (name, spec) in enumerate(variants.items()):
        correct = {t: variant_predictions(spec, str(baseline), tests[t]) == labels[t] for t in TESTS}
        comparison = paired_comparison(base, correct, labels, n_boot=bootstrap, seed=seed + i)
        rows.append({"name": name, "kind": spec["kind"], "changes": spec.get("set", {}),
                     "test1_top1": 100 * float(correct["test1"].mean()),
                     "test2_top1": 100 * float(correct["test2"].mean()),
                     "delta_test1": comparison["test1"], "delta_test2": comparison["test2"],
                     "gap_change": comparison["gap_change"],
                     **_selected_on(spec)})
        if line is not None:
            rows[-1]["reference_line"] = on_the_line(line, correct, labels)
    for t in TESTS:  # Holm over the variants, per test set: many variants, one question each
        adjusted = multipletests([r[f"delta_{t}"]["mcnemar_p"] for r in rows], method="holm")[1]
        for row, p in zip(rows, adjusted):
            row[f"delta_{t}"]["mcnemar_p_holm"] = float(p)
    for row in rows:
        row["improves_test2"] = _beyond_noise(row["delta_test2"], alpha, +1)
        row["hurts_test2"] = _beyond_noise(row["delta_test2"], alpha, -1)
        row["hurts_test1"] = _beyond_noise(row["delta_test1"], alpha, -1)
        row["gains_test2_by_losing_test1"] = row["improves_test2"] and row["hurts_test1"]
        row["flag"] = flag(row)
    rows.sort(key=lambda r: -r["delta_test2"]["points"])
    summary = {
        "baseline": baseline_name,
        "baseline_test1_top1": 100 * float(base["test1"].mean()),
        "baseline_test2_top1": 100 * float(base["test2"].mean()),
        "variants": rows,
        "verdict": verdict(rows, baseline_name, alpha) + "".join(
            f" Left out: {name} ({why})." for name, why in (left_out or {}).items()),
        "left_out": dict(left_out or {}),
        "figures": [str(files["figure"])],
        "table": str(files["table"]),
        **({"reference_line": {"models": line.get("models"), "slope": line["slope"], "intercept": line["intercept"],
                               "filter": line.get("filter"), "baseline": on_the_line(line, base, labels)}}
           if line is not None else {}),
        "method": {"interval": "95 % bias-corrected bootstrap, images resampled within class, "
                               f"{bootstrap} resamples, both heads on the same resample",
                   "test": "exact McNemar on discordant images, Holm-adjusted over the variants",
                   "alpha": alpha},
        "meta": meta_block(seed=seed, started=started,
                           inputs=[baseline, test1, test2, *([reference_line] if reference_line else [])]),
    }
    write_table(pd.DataFrame([_flat(r) for r in rows]), files["table"])
    save_figure(_figure(rows, baseline_name), files["figure"])
    write_json(files["summary"], summary)
    return summary


def _selected_on(spec: dict) -> dict:
    """Where the variant's choices were made: never on a test set."""
    if spec["kind"] == "restandardize":
        return {"selected_on": "nothing to select: unsupervised, each test set's own feature statistics"}
    how = {"retrain": {"inherit": "the baseline's holdout selection (lr, weight decay, epochs), trained once",
                       "select": "its own selection on the train holdout"}.get(spec.get("hyperparameters", "select")),
           "ensemble": "each member's own selection on the train holdout"}[spec["kind"]]
    return {"selected_on": "holdout", "hyperparameters": how}


def _beyond_noise(delta: dict, alpha: float, sign: int) -> bool:
    ci = delta["ci95"]
    excludes = ci is not None and (ci[0] > 0 if sign > 0 else ci[1] < 0)
    return bool(excludes and delta["mcnemar_p_holm"] < alpha and np.sign(delta["points"]) == sign)


def flag(row: dict) -> str:
    """The stage's own one-line judgement of a variant, from its flags (the report shows it as written)."""
    if row["gains_test2_by_losing_test1"]:
        return "gains on test set 2 only by losing on test set 1"
    if row["improves_test2"]:
        return "improves test set 2"
    losses = [f"loses on test set {t}" for t, hurt in (("2", row["hurts_test2"]), ("1", row["hurts_test1"])) if hurt]
    return "; ".join(losses) or "within noise"


def verdict(rows: list[dict], baseline: str, alpha: float) -> str:
    better = [r for r in rows if r["improves_test2"] and not r["hurts_test1"]]
    traded = [r for r in rows if r["gains_test2_by_losing_test1"]]
    if not better:
        text = (f"No variant improves test set 2 over the primary head ({baseline}) beyond noise "
                f"(Holm-adjusted exact McNemar, alpha {alpha}): no evidence that any of them helps.")
    else:
        best = better[0]
        lo, hi = best["delta_test2"]["ci95"]
        text = (f"{best['name']} improves test set 2 by {best['delta_test2']['points']:+.2f} points "
                f"[{lo:+.2f}, {hi:+.2f}] over {baseline} (Holm-adjusted McNemar p = "
                f"{best['delta_test2']['mcnemar_p_holm']:.2g}), without losing on test set 1"
                + (f"; {len(better) - 1} more also do." if len(better) > 1 else "."))
    if traded:
        text += " Gains on test set 2 only by losing on test set 1: " + ", ".join(r["name"] for r in traded) + "."
    return text


def _flat(row: dict) -> dict:
    flat = {k: v for k, v in row.items() if not isinstance(v, dict)}
    flat["changes"] = ", ".join(f"{k}={v}" for k, v in row["changes"].items())
    for key in ("delta_test1", "delta_test2", "gap_change", "reference_line"):
        for field, value in row.get(key, {}).items():
            if field == "ci95":
                flat[f"{key}_lo"], flat[f"{key}_hi"] = value if value else (None, None)
            else:
                flat[f"{key}_{field}"] = value
    return flat


def _figure(rows: list[dict], baseline: str):
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 0.45 * len(rows) + 1.4))
    y = np.arange(len(rows))[::-1]
    for offset, (t, color) in zip((0.15, -0.15), (("test1", "tab:blue"), ("test2", "tab:red"))):
        points = np.array([r[f"delta_{t}"]["points"] for r in rows])
        ci = np.array([r[f"delta_{t}"]["ci95"] or [p, p] for r, p in zip(rows, points)])
        ax.errorbar(points, y + offset, xerr=[points - ci[:, 0], ci[:, 1] - points], fmt="o", color=color,
                    capsize=3, label=f"test set {t[-1]}")
    ax.axvline(0, color="black", lw=0.8)
    ax.set_yticks(y, [mpl_text(r["name"]) for r in rows])
    ax.set_xlabel(f"top-1 difference from {mpl_text(baseline)} (points, 95 % interval, within-class bootstrap)")
    ax.legend(loc="best")
    ax.set_title("What improves test set 2?")
    return fig


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", required=True, help="results/heads/{primary}/model.pt")
    parser.add_argument("--baseline-name", required=True)
    parser.add_argument("--variants", required=True,
                        help='JSON: {name: {"kind": ..., "models": [model.pt paths], "set": {...}}}')
    parser.add_argument("--test1", required=True, help="results/parquet/test1.manifest.json")
    parser.add_argument("--test2", required=True, help="results/parquet/test2.manifest.json")
    add_output_args(parser, OUTPUTS)
    parser.add_argument("--bootstrap", type=int, default=1000)
    parser.add_argument("--alpha", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=0)
    add_threads_arg(parser)
    parser.add_argument("--reference-line", help="results/analysis/reference_line/summary.json (when configured)")
    parser.add_argument("--left-out", default="{}", help="JSON: {variant: why} for variants that do not apply")
    args = parser.parse_args(argv)
    limit_threads(args.threads)
    summary = improve(args.baseline, parse_json_arg(args.variants, "variants"), args.test1, args.test2,
                      parse_outputs(args.output), baseline_name=args.baseline_name, bootstrap=args.bootstrap,
                      alpha=args.alpha, seed=args.seed, reference_line=args.reference_line,
                      left_out=parse_json_arg(args.left_out, "left-out"))
    print(summary["verdict"])


if __name__ == "__main__":
    run_cli(main)
