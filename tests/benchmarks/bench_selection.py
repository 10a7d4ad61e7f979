"""Benchmark: successive halving against the full grid. Not a test: no asserts.

For the EVA-02 linear head (config/eva02.yaml: 12 candidates × 10 epochs, then refit), on
  * 100k rows like bench_train.py's (1000 classes × 100 rows, 1024 features), made harder, and
  * the demo's train split (config/config.yaml's generator: 100 classes × 256 features),
trains `selection: grid` and `selection: halving` (eta 2: 12 → 6 → 3 → 2 → 1 after epochs 1, 2, 4, 8) on
the same machine in the same run, alternating (grid, halving, halving, grid), and reports each
one's winner, its holdout top-1, the candidate-epochs trained and the wall time of the selection
phase (refit excluded: it is the same single-candidate run for both when the winners agree).

    python tests/benchmarks/bench_selection.py [--threads 2] [--skip-100k]

Writes tests/benchmarks/results/selection.json and .md.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from scripts.data.generate_demo import DemoSpec
from scripts.train.train_head import train_head
from tests.step_layout import outputs_in
from tests.train_helpers import make_dataset


def datasets(work: Path, skip_100k: bool) -> dict[str, tuple[Path, int]]:
    demo = yaml.safe_load((ROOT / "config/config.yaml").read_text())["demo"]
    spec = DemoSpec(classes=demo["classes"], dim=demo["dim"], seed=demo["seed"])
    out = {"demo (100 classes × 256, ~10k rows)": (
        make_dataset(work / "demo", spec, int(1015 * demo["train_scale"]), 1, shards=2)["manifest"], spec.classes)}
    if not skip_100k:
        # bench_train's 100k speed set (separation 0.325) is separable (holdout top-1 100 %: every
        # candidate ties); at 1024 features, separation 0.2 gives ~85–90 % (measured).
        out["100k rows (1000 classes × 1024)"] = (
            make_dataset(work / "100k", DemoSpec(classes=1000, dim=1024, seed=0, separation=0.2), 100, 1,
                         shards=4, row_group_rows=8192)["manifest"], 1000)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--skip-100k", action="store_true")
    parser.add_argument("--out", type=Path, default=ROOT / "tests/benchmarks/results/selection.json")
    args = parser.parse_args()
    head = yaml.safe_load((ROOT / "config/eva02.yaml").read_text())["heads"]["linear"]
    head = {**head, "refit": False, "calibrate": False}
    train = {"device": "cpu", "threads": args.threads, "holdout_fraction": 0.1}
    report = {"threads": args.threads, "head": head, "sets": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for name, (manifest, classes) in datasets(Path(tmp), args.skip_100k).items():
            runs: dict[str, list[dict]] = {"grid": [], "halving": []}
            for i, method in enumerate(("grid", "halving", "halving", "grid")):
                sel = train_head(manifest, outputs_in(Path(tmp) / f"{method}{i}", "train_head"), name=method,
                                 head={**head, "selection": method}, train=train, num_classes=classes, seed=0)
                runs[method].append(sel)
            summary = {}
            for method, sels in runs.items():
                sel = sels[0]
                summary[method] = {"winner": {k: sel["winner"][k] for k in ("lr", "weight_decay", "epochs")},
                                   "holdout_top1": sel["winner"]["holdout_acc"],
                                   "candidate_epochs": sel["timing"]["candidate_epochs"],
                                   "selection_s": [s["timing"]["grid_s"] for s in sels]}
            g, h = summary["grid"], summary["halving"]
            summary["same_winner"] = g["winner"] == h["winner"]
            summary["holdout_points_lost"] = round(100 * (g["holdout_top1"] - h["holdout_top1"]), 3)
            summary["work_ratio"] = round(g["candidate_epochs"] / h["candidate_epochs"], 2)
            summary["time_ratio"] = round(statistics.median(g["selection_s"]) / statistics.median(h["selection_s"]), 2)
            report["sets"][name] = summary
            print(name, json.dumps(summary), flush=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    lines = [("| data | grid winner (lr, wd) | grid holdout | halving winner | halving holdout | points lost |"
              " candidate-epochs | selection time (median of 2) | time ratio |"),
             "|---|---|---:|---|---:|---:|---:|---:|---:|"]
    for name, s in report["sets"].items():
        g, h = s["grid"], s["halving"]
        lines.append(f"| {name} | {g['winner']['lr']}, {g['winner']['weight_decay']} | {100 * g['holdout_top1']:.2f} % "
                     f"| {h['winner']['lr']}, {h['winner']['weight_decay']} | {100 * h['holdout_top1']:.2f} % | "
                     f"{s['holdout_points_lost']} | {g['candidate_epochs']} vs {h['candidate_epochs']} | "
                     f"{statistics.median(g['selection_s']):.1f} s vs {statistics.median(h['selection_s']):.1f} s | "
                     f"**{s['time_ratio']}×** |")
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
