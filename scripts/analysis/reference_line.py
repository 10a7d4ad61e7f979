"""Accuracy on the line: what test-2 top-1 a model *should* have at its test-1 top-1.

Over many ImageNet models, ImageNetV2 top-1 lies on one straight line against ImageNet top-1 on
the probit scale (Recht et al. 2019; Miller et al. 2021, "accuracy on the line"). This step fits
that line over a reference table (timm's published results, resources/timm-results/, Apache-2.0)
and gives, for every head, the expected test-2 top-1 at its test-1 top-1 and its effective
robustness (observed − expected) with a 95% interval.

    probit(test2 / 100) = intercept + slope · probit(test1 / 100)     (OLS over the reference models)

Rows of the two tables are matched on (model, img_size): timm evaluates some models at several
sizes under one name. Filter: test-1 top-1 ≥ `min_test1_top1` (default 80 %). Over the 1,040
models that pass, slope 1.008, intercept −0.366, residual SD 0.48 points; 90.06 % → 82.36 %.

Two intervals of the effective robustness. The confidence interval (delta method, independent
parts: the head's test-2 top-1 with its evaluate interval, images resampled within class; its
test-1 top-1 carried through the line's slope; the fitted line's OLS uncertainty) says where the
head sits relative to the *fitted line*. The prediction interval adds the reference models' own
scatter around the line near the head's accuracy (models within ±`window_points`): it says where a
model at this accuracy lands, so only it can say "off the line". Its check: each reference model
judged against the others (binomial sampling errors for the tables' test-set sizes) is flagged
in about 5% of cases per accuracy band (`calibration` in the summary). The expected test-2 top-1
for other inclusion thresholds (`thresholds`) shows how much the answer depends on that choice.

CLI: python -m scripts.analysis.reference_line --test1-table CSV --test2-table CSV --options JSON
     --head NAME METRICS1 METRICS2 [--head ...] --output NAME=PATH ...
"""
from __future__ import annotations

import argparse
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from scripts.lib.analysis.common import mpl_text, pyplot, save_figure, write_summary, write_table
from scripts.lib.analysis.probit_line import (
    calibration,
    effective_robustness,
    expected_by_threshold,
    expected_test2,
    fit_line,
    local_scatter,
    prediction_interval,
    read_pairs,
)
from scripts.lib.featio.cli import run_cli
from scripts.lib.featio.jsonio import parse_json_arg, read_json
from scripts.lib.options import merge_options
from scripts.lib.step_outputs import add_output_args, output_paths, parse_outputs

OUTPUTS = {"table": ".csv", "summary": ".json", "figure": ".png"}


def _top1_and_se(metrics_path: str | Path) -> tuple[float, float]:
    m = read_json(metrics_path)
    top1 = 100 * float(m["metrics"]["top1"])
    ci = (m.get("ci95") or {}).get("top1")
    se = 100 * (float(ci[1]) - float(ci[0])) / (2 * 1.96) if ci and None not in ci else 0.0
    return top1, se


def plot_line(pairs: pd.DataFrame, line: dict, heads: dict, path: Path) -> str:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4.5))
    ax.scatter(pairs["top1_test1"], pairs["top1_test2"], s=6, alpha=0.4, color="#7f7f7f",
               label=f"reference models ({line['models']})")
    grid = np.linspace(pairs["top1_test1"].min(), max(pairs["top1_test1"].max(), 91), 200)
    ax.plot(grid, [expected_test2(line, g) for g in grid], color="#4f81bd",
            label=f"probit fit: slope {line['slope']:.3f}, intercept {line['intercept']:.3f}")
    for name, row in heads.items():
        ax.scatter([row["test1_top1"]], [row["test2_top1"]], s=40, marker="*", zorder=3)
        ax.annotate(mpl_text(name), (row["test1_top1"], row["test2_top1"]), fontsize=7, xytext=(3, -8),
                    textcoords="offset points")
    ax.set_xlabel("test set 1 top-1 (%)")
    ax.set_ylabel("test set 2 top-1 (%)")
    ax.set_title("Accuracy on the line")
    ax.legend(fontsize=7)
    return save_figure(fig, path)


def reference_line(*, test1_table: str | Path, test2_table: str | Path, heads: dict[str, tuple[str, str]],
                   outputs: Mapping[str, str | Path], options: dict | None = None) -> dict[str, Any]:
    started = time.perf_counter()
    opts = merge_options(options, "analysis.reference_line")
    files = output_paths(outputs, OUTPUTS, "reference_line")
    min_test1_top1, window = float(opts["min_test1_top1"]), float(opts["window_points"])
    pairs = read_pairs(test1_table, test2_table, min_test1_top1)
    line = fit_line(pairs)
    line["filter"] = f"test-1 top-1 >= {min_test1_top1:g}%"
    images = opts["reference_images"]
    line["calibration"] = calibration(pairs, line, window, int(images["test1"]), int(images["test2"]))
    rows = {}
    for name, (m1, m2) in heads.items():
        (t1, se1), (t2, se2) = _top1_and_se(m1), _top1_and_se(m2)
        row = effective_robustness(line, t1, t2, se1, se2)
        scatter = local_scatter(pairs, line, t1, window)
        row["local_scatter"] = scatter
        row["prediction_interval"] = prediction_interval(row, scatter["sd_points"], bool(opts["same_images"]))
        row["thresholds"] = expected_by_threshold(test1_table, test2_table, t1,
                                                  sorted({*map(float, opts["thresholds"]), min_test1_top1}))
        rows[name] = row
    write_table(pairs.assign(expected_test2=[expected_test2(line, v) for v in pairs["top1_test1"]]),
                files["table"])
    figure = plot_line(pairs, line, rows, files["figure"])
    parts = [f"{name}: {r['test1_top1']:.2f}% on test set 1 → expected {r['expected_test2_top1']:.2f}% on test set 2, "
             f"observed {r['test2_top1']:.2f}% (effective robustness {r['effective_robustness']:+.2f} points, 95% "
             f"prediction interval {r['prediction_interval'][0]:+.2f} to {r['prediction_interval'][1]:+.2f}: "
             + ("off the line" if r['prediction_interval'][0] > 0 or r['prediction_interval'][1] < 0
                else "no evidence that it is off the line") + ")" for name, r in rows.items()]
    flagged = line["calibration"][-1]["flagged"]
    verdict = (f"Over {line['models']} reference models ({line['filter']}), test-2 top-1 lies on one probit line "
               f"(slope {line['slope']:.3f}, intercept {line['intercept']:.3f}, residual SD "
               f"{line['residual_sd_points']:.2f} points; the prediction interval flags {100 * flagged:.1f}% of the "
               f"reference models themselves). " + "; ".join(parts) + ".")
    numbers = {k: v for k, v in line.items() if k not in ("cov", "calibration")}
    numbers["calibration"] = line["calibration"]
    numbers["heads"] = [{"head": k, **v} for k, v in rows.items()]
    return write_summary(files["summary"], verdict=verdict, figures=[figure], table=files["table"],
                         numbers=numbers, started=started,
                         inputs=[test1_table, test2_table, *[p for pair in heads.values() for p in pair]],
                         extra={"line": line, "heads": rows})


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Expected test-2 top-1 from the reference models' probit line.")
    parser.add_argument("--test1-table", required=True)
    parser.add_argument("--test2-table", required=True)
    parser.add_argument("--options", default="{}", help="the analysis.reference_line section as JSON")
    parser.add_argument("--head", nargs=3, action="append", metavar=("NAME", "METRICS1", "METRICS2"), default=[])
    add_output_args(parser, OUTPUTS)
    args = parser.parse_args(argv)
    summary = reference_line(test1_table=args.test1_table, test2_table=args.test2_table,
                             heads={n: (a, b) for n, a, b in args.head}, outputs=parse_outputs(args.output),
                             options=parse_json_arg(args.options, "options"))
    print(summary["verdict"])


if __name__ == "__main__":
    run_cli(main)
