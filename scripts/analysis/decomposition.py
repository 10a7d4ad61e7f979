"""Decomposition (per head): the test-1 → test-2 top-1 gap as the sum of four mechanism terms and a
residual, by Shapley attribution over reverts of each mechanism (scripts/lib/decomposition), with
95% intervals from a bootstrap over classes. Writes the terms table, the summary's `decomposition`
block (the report's answer reads it), a waterfall from test-1 to test-2 top-1 and the test-2 rows
most likely mislabelled (confident learning).
"""
from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from scripts.lib.analysis.common import pyplot, save_figure, write_summary, write_table
from scripts.lib.analysis.evidence import CAUSES as TITLES
from scripts.lib.analysis.evidence import level_for
from scripts.lib.analysis.step import analysis_cli, begin
from scripts.lib.decomposition.decompose import CAUSES, Decomposition, decompose
from scripts.lib.featio.errors import FeatgapError
from scripts.lib.featio.reader import read_split

OUTPUTS = {"table": ".csv", "summary": ".json", "figure": ".png", "label_issues": ".csv"}
UNIT = "classes resampled (a class brings its test-1 and test-2 images)"
METHOD = (
    "The gap is split by Shapley attribution over shift mechanisms (Zhang, Singh, Ghassemi & Joshi, ICML 2023, "
    "'Why did the model fail?'): four mechanisms - the features moved as a whole (mean_shift), images less "
    "typical of their class (difficulty), classes degraded beyond the common drop (class_concentrated) and "
    "labels that disagree with the image (label_noise) - are each either kept at their test-2 level or "
    "reverted to test-1 level in the test-2 features, the head's top-1 is computed for all 16 combinations, "
    "and each term is the mechanism's Shapley value, its average effect over every order of removal. How many "
    "test-2 labels disagree with the image, beyond test set 1's rate, comes from a noisy-label model with a "
    "temperature of its own per test set (Natarajan et al. 2013; Patrini et al. 2017), fitted on test-2 features "
    "with the other mechanisms reverted, so that errors of a head that is over-confident on shifted data do not "
    "count as wrong labels; each label is corrected by its probability of being wrong, and confident learning "
    "with per-class thresholds set on test set 1 (Northcutt, Jiang & Chuang, JAIR 2021; cleanlab) names the "
    "images most likely mislabelled. "
    "The residual is what remains with every mechanism reverted (sampling difference of the two sets and "
    "anything the four mechanisms do not capture); terms and residual add up to the gap. Intervals: 95% "
    "percentile bootstrap over classes that refits every common parameter of the reverts. The terms say where "
    "the gap falls under these reverts, checked against true counterfactual shares on generated twins "
    "(docs/statistics.md); they account for parts of the gap and do not prove what caused it."
)


def _titles() -> dict[str, str]:
    return {c: TITLES[c] for c in CAUSES}


def _sentence(title: str, points: float, ci: Sequence[float], gap: float) -> str:
    lo, hi = ci
    if lo <= 0 <= hi:
        return (f"No evidence for this mechanism: {title.lower()} accounts for {points:+.1f} points of the "
                f"{gap:.1f}-point gap, and the 95% interval ({lo:+.1f} to {hi:+.1f}) includes 0.")
    return (f"{title} accounts for {points:+.1f} of the {gap:.1f} points of the gap "
            f"(95% interval {lo:+.1f} to {hi:+.1f}, classes resampled).")


def block(d: Decomposition, expected_gap: float | None) -> dict[str, Any]:
    """The summary's `decomposition` block; the residual is gap − Σ terms, so that they add up exactly."""
    titles = _titles()
    terms = []
    for cause in CAUSES:
        points, ci = float(d.terms[cause]), [float(v) for v in d.ci95[cause]]
        terms.append({"id": cause, "title": titles[cause], "points": points, "ci95": ci,
                      "level": level_for(points, ci, d.gap), "sentence": _sentence(titles[cause], points, ci, d.gap)})
    residual = float(d.gap) - sum(t["points"] for t in terms)
    return {"method": METHOD, "unit": UNIT,
            "gap": {"points": float(d.gap), "ci95": [float(v) for v in d.ci95["gap"]]},
            "terms": terms, "residual": {"points": residual, "ci95": [float(v) for v in d.ci95["residual"]]},
            "expected_gap": None if expected_gap is None else float(expected_gap)}


def expected_gap_of(summary_path: str | Path | None, head_name: str) -> float | None:
    """The reference line's expected gap (points) at this head's test-1 top-1, if the line is there."""
    if summary_path is None:
        return None
    heads = json.loads(Path(summary_path).read_text()).get("heads", {})
    row = heads.get(head_name)
    if row is None:
        return None
    return float(row["test1_top1"]) - float(row["expected_test2_top1"])


def plot_waterfall(block_: dict[str, Any], top1: tuple[float, float], head_name: str, path: str | Path) -> str:
    """From test-1 top-1 down to test-2 top-1: one step per term (its 95% interval as an error bar)
    and the residual; the reference line's expected test-2 top-1 dashed when given."""
    plt = pyplot()
    steps = [(t["title"], t["points"], t["ci95"]) for t in block_["terms"]]
    steps.append(("Residual (not captured by the four mechanisms)", block_["residual"]["points"],
                  block_["residual"]["ci95"]))
    fig, ax = plt.subplots(figsize=(9, 4.8))
    names = ["Test set 1"] + [s[0] for s in steps] + ["Test set 2"]
    ax.bar(0, top1[0], color="#4f81bd")
    level = top1[0]
    for i, (_, points, ci) in enumerate(steps, start=1):
        after = level - points
        ax.bar(i, -points, bottom=level, color="#c0504d" if points >= 0 else "#9bbb59")
        ax.errorbar(i, after, yerr=[[max(ci[1] - points, 0)], [max(points - ci[0], 0)]], color="black", capsize=4)
        ax.plot([i - 0.4, i + 1.4], [after, after], color="grey", lw=0.6)
        level = after
    ax.bar(len(steps) + 1, top1[1], color="#4f81bd")
    if block_["expected_gap"] is not None:
        expected = top1[0] - block_["expected_gap"]
        ax.axhline(expected, color="#8064a2", ls="--", lw=1.2,
                   label=f"expected test-2 top-1 on the reference line ({expected:.1f}%)")
        ax.legend(fontsize=7, loc="lower left")
    low = min(top1[1], level, top1[0]) - max(5.0, 0.6 * abs(block_["gap"]["points"]) + 3)
    ax.set_ylim(max(0.0, low), min(100.0, top1[0] + 3))
    ax.set_xticks(range(len(names)), [n if len(n) <= 28 else n[:26] + "…" for n in names],
                  rotation=25, ha="right", fontsize=7)
    ax.set_ylabel("top-1 (%)")
    ax.set_title(f"{head_name}: where the {block_['gap']['points']:.1f}-point gap falls (95% intervals, classes resampled)",
                 fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)


def label_issue_table(d: Decomposition, rows: np.ndarray, paths: np.ndarray | None, labels: np.ndarray,
                      limit: int) -> pd.DataFrame:
    """Flagged test-2 rows, the least likely label first; score = 1 − the head's probability of the
    given label on test set 2 with the other mechanisms reverted."""
    flagged = np.flatnonzero(d.flagged)
    order = flagged[np.argsort(d.label_quality[flagged], kind="stable")][:limit]
    return pd.DataFrame({"row": rows[order], "path": paths[order] if paths is not None else [""] * len(order),
                         "label": labels[order], "suggested": d.suggested[order],
                         "score": 1.0 - d.label_quality[order]})


def decomposition(*, model: str | Path, test1: str | Path, test2: str | Path, train_reference: str | Path,
                  outputs: Mapping[str, str | Path], options: dict | None = None, seed: int = 0, head_name: str,
                  reference_line: str | Path | None = None) -> dict[str, Any]:
    """Terms + residual = gap for one head; the reference line only marks the expected gap."""
    from scripts.lib.heads import load_head, predict_logits

    started, opts, files = begin("decomposition", options, outputs, OUTPUTS)
    head = load_head(model)
    data = {t: read_split(p, features=True, columns=("row", "path", "label")) for t, p in
            (("test1", test1), ("test2", test2))}
    for name, split in data.items():
        if split.label.max() >= head.num_classes:
            raise FeatgapError(f"{name}: labels exceed the head's {head.num_classes} classes")
    with np.load(train_reference) as ref:
        train_means = ref["class_means"]
    if train_means.shape != (head.num_classes, data["test1"].features.shape[1]):
        raise FeatgapError(f"{train_reference}: class_means has shape {train_means.shape}, expected "
                           f"({head.num_classes}, {data['test1'].features.shape[1]})")
    batch = int(opts["batch_size"])

    def logits(x: np.ndarray) -> np.ndarray:
        return predict_logits(head, x.astype(np.float32, copy=False), batch_size=batch).astype(np.float64)

    y1, y2 = (data[t].label.astype(np.int64) for t in ("test1", "test2"))
    d = decompose(data["test1"].features, y1, data["test2"].features, y2, train_means, logits,
                  bootstrap=int(opts["bootstrap"]), seed=seed, progress=True)
    out = block(d, expected_gap_of(reference_line, head_name))
    table = pd.DataFrame([{"term": t["id"], "title": t["title"], "points": t["points"], "ci_low": t["ci95"][0],
                           "ci_high": t["ci95"][1], "level": t["level"]} for t in out["terms"]]
                         + [{"term": "residual", "title": "Residual", "points": out["residual"]["points"],
                             "ci_low": out["residual"]["ci95"][0], "ci_high": out["residual"]["ci95"][1],
                             "level": ""}])
    write_table(table, files["table"])
    split2 = data["test2"]
    rows = split2.row if split2.row is not None else np.arange(len(y2))
    write_table(label_issue_table(d, rows, split2.path, y2, int(opts["label_issues"])), files["label_issues"])
    figure = plot_waterfall(out, d.top1, head_name, files["figure"])
    named = [t for t in out["terms"] if t["level"] != "none"]
    verdict = (f"{head_name}: the {out['gap']['points']:.1f}-point gap ({d.top1[0]:.1f}% → {d.top1[1]:.1f}%) "
               + ("; ".join(f"{t['title'].lower()} accounts for {t['points']:.1f} points" for t in named)
                  if named else "has no term whose interval excludes 0")
               + f"; residual {out['residual']['points']:+.1f} points.")
    numbers = {"head": head_name, "top1_test1": d.top1[0], "top1_test2": d.top1[1],
               "label_issue_rate_test1": d.label_issue_share[0], "label_issue_rate_test2": d.label_issue_share[1],
               "difficulty_spread_ratio": d.reverts.g, "flagged_test2": int(d.flagged.sum())}
    inputs = [model, test1, test2, train_reference] + ([reference_line] if reference_line else [])
    return write_summary(files["summary"], verdict=verdict, figures=[figure], table=files["table"], numbers=numbers,
                         started=started, seed=seed, inputs=inputs, extra={"decomposition": out})


def _reference_line_arg(parser) -> None:
    parser.add_argument("--reference-line", default=None,
                        help="reference_line summary.json (optional: marks the line's expected gap)")


def main(argv: Sequence[str] | None = None) -> None:
    analysis_cli(decomposition, description="Shapley decomposition of the top-1 gap over four mechanisms.",
                 declared=OUTPUTS, extra=_reference_line_arg, argv=argv,
                 inputs={"model": "the head's model.pt", "test1": "test1 manifest", "test2": "test2 manifest",
                         "train-reference": "train_reference.npz (per-class train means)"})


if __name__ == "__main__":
    main()
