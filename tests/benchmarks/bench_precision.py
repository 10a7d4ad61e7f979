"""Benchmark: train.precision bf16 vs float32 on the CPU, same machine, same run. Not a test.

On the generated 100k × 1024 × 1000 train split of bench_train.py (class-sorted shards, 10k test
rows), each precision trains, alternating, `--rounds` times:
  epoch     one epoch over the fit rows of the EVA-02 linear grid (K = 12 candidates), of one
            linear candidate (K = 1, a refit) and of the EVA-02 MLP grid (K = 4, hidden 1024);
  select    (once each) train_head with config/eva02.yaml's linear and mlp heads and successive
            halving, as the full-size run uses them, in a child process: the winner, holdout and
            test top-1, wall time. On data as hard as the full-size run's (class separation 0.16,
            bench_fullsize.py; at bench_train's 0.325 the 1000 × 1024 classes are separated
            perfectly and every candidate scores 100 %), 100 train and 10 test rows per class.
The peer of bf16 is float32: the same code, data, batches, threads and outputs; only the
autocast of the step's matmuls differs. Reports rows/s and the bf16/float32 ratio.

    .venv/bin/python tests/benchmarks/bench_precision.py [--rounds 2] [--threads 2] [--skip-select]
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests/benchmarks"))

from bench_fullsize import FULLSIZE_SEPARATION
from bench_train import HEAD, child, dataset

from scripts.data.generate_demo import DemoSpec
from scripts.lib.device import configure_determinism, cpu_has_bf16_matrix_units, cpu_has_native_bf16
from scripts.lib.heads import predict_logits
from scripts.lib.training.config import HeadConfig, parse_config
from scripts.lib.training.data import load_train
from scripts.train.train_head import run_grid
from tests.step_layout import output_argv
from tests.train_helpers import make_dataset

PRECISIONS = {"float32": None, "bf16": torch.bfloat16}


def epoch_seconds(data, head: dict, k: int, autocast) -> float:
    cfg = parse_config(HeadConfig, {**head, "epochs": 1, "warmup_epochs": 0}, "heads.bench")
    cands = [{"candidate": i, "lr": 1e-3 * (i + 1), "weight_decay": 0.1} for i in range(k)]
    start = time.perf_counter()
    run_grid(data, cfg, cands, data.fit_rows, epochs=1, seed=0, phase="grid", select=False,
             desc=f"{cfg.type} K={k}", autocast=autocast)
    return time.perf_counter() - start


def bench_epochs(manifest: Path, threads: int, rounds: int) -> dict:
    configure_determinism(torch.device("cpu"), threads, 0)
    data = load_train(manifest, num_classes=1000, holdout_fraction=0.02, seed=0, memory_budget_mb=1e9)
    heads = yaml.safe_load((ROOT / "config/eva02.yaml").read_text())["heads"]
    shapes = {"linear K=12": (heads["linear"], 12), "linear K=1": (heads["linear"], 1),
              "mlp K=4": (heads["mlp"], 4)}
    runs: dict[str, dict[str, list[float]]] = {s: {p: [] for p in PRECISIONS} for s in shapes}
    for r in range(rounds):
        for shape, (head, k) in shapes.items():
            for precision, autocast in PRECISIONS.items():  # alternate: drifting load hits both alike
                seconds = epoch_seconds(data, head, k, autocast)
                runs[shape][precision].append(seconds)
                print(f"round {r + 1} {shape:12s} {precision:8s} {seconds:7.2f} s", flush=True)
    n = len(data.fit_rows)
    out = {}
    for shape, by_precision in runs.items():
        med = {p: statistics.median(v) for p, v in by_precision.items()}
        out[shape] = {"rows": n, "seconds": by_precision,
                      "rows_per_s": {p: round(n / s, 1) for p, s in med.items()},
                      "bf16_speedup": round(med["float32"] / med["bf16"], 2)}
    return out


def bench_select(data: dict, work: Path, threads: int) -> dict:
    eva02 = yaml.safe_load((ROOT / "config/eva02.yaml").read_text())
    out = {}
    for name in ("linear", "mlp"):
        head = {**eva02["heads"][name], "selection": "halving"}
        for precision in PRECISIONS:
            folder = work / f"{name}-{precision}"
            settings = {"holdout_fraction": eva02["train"]["holdout_fraction"], "device": "cpu",
                        "threads": threads, "precision": precision}
            seconds, rss, _ = child(HEAD, "--manifest", str(data["manifest"]), *output_argv(folder, "train_head"),
                                    "--name", name, "--options", json.dumps(head),
                                    "--train-options", json.dumps(settings), "--num-classes", "1000",
                                    "--seed", "0", "--threads", str(threads))
            selection = json.loads((folder / "selection.json").read_text())
            test_acc = float((predict_logits(folder / "model.pt", data["test_features"]).argmax(1)
                              == data["test_labels"]).mean())
            win = selection["winner"]
            out[f"{name} {precision}"] = {"seconds": round(seconds, 1), "peak_rss_mb": round(rss, 1),
                                          "winner": {k: win[k] for k in ("lr", "weight_decay", "epochs")},
                                          "holdout_acc": win["holdout_acc"], "test_acc": test_acc,
                                          "precision_used": selection["precision"]}
            print(f"select {name:6s} {precision:8s} {seconds:7.1f} s  winner lr={win['lr']} wd={win['weight_decay']} "
                  f"holdout {win['holdout_acc']:.4f} test {test_acc:.4f}", flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default="/tmp/featgap_bench_train")
    parser.add_argument("--out", default=str(ROOT / "tests/benchmarks/results/precision.json"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--skip-select", action="store_true")
    args = parser.parse_args()
    work = Path(args.work)
    data = dataset(work / "data")
    result = {"threads": args.threads, "cpu_has_amx_bf16": cpu_has_bf16_matrix_units(),
              "cpu_has_native_bf16": cpu_has_native_bf16(), "cpu": platform.processor() or platform.machine(),
              "epochs": bench_epochs(data["manifest"], args.threads, args.rounds)}
    if not args.skip_select:
        hard = make_dataset(work / "hard", DemoSpec(classes=1000, dim=1024, seed=0, separation=FULLSIZE_SEPARATION),
                            100, 10, shards=4, row_group_rows=8192)
        result["select"] = bench_select(hard, work / "select", args.threads)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    for shape, r in result["epochs"].items():
        print(f"{shape:12s} float32 {r['rows_per_s']['float32']:9.0f} rows/s  bf16 {r['rows_per_s']['bf16']:9.0f} "
              f"rows/s  x{r['bf16_speedup']}")


if __name__ == "__main__":
    np.set_printoptions(precision=4)
    main()
