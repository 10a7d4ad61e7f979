"""Benchmark: the heads' training on one CUDA GPU at the full EVA-02 shape. Not a test: no timed
asserts; it refuses to report a run whose steps were not replayed from a CUDA graph (`graphed`).

1. Generates a class-sorted train split of 1,281,167 rows × 1024 features × 1000 classes (the
   real per-class counts 732–1300) on the GPU, in memory, and writes it as Parquet shards in the
   project's contract into --work (class means + noise: the figures here are about speed; the
   accuracy only shows that selection worked).
2. Measures, in the same run, the bf16 and float32 matmul rates of the training step's own GEMM
   (batch × D @ D × K·C) with CUDA events (median of 50 after warm-up).
3. Runs `train_head` for each head of config/eva02.yaml (its real grid: 12 linear candidates ×
   10 epochs + refit; 4 MLP candidates) in a child process with `train.device: cuda`, and reports
   load time, time per grid epoch, rows/s, the share of the measured bf16 matmul rate the epoch
   reaches (useful flops: forward + weight gradient, 4·N·D·K·C for a linear head), the refit and
   calibration time, peak GPU memory and the child's own peak host RSS.

    python tests/benchmarks/bench_gpu.py [--work /tmp/featgap-gpu] [--rows 1281167] [--heads linear,mlp]

Writes --out (JSON) and the same path with .md. Needs a CUDA GPU and ~12 GB of host memory.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from scripts.data.generate_demo import DemoSpec, train_counts
from tests.train_helpers import write_split_shards

FULL_ROWS, DIM, CLASSES = 1_281_167, 1024, 1000


def manifest_path(work: Path, *, rows: int, dim: int, classes: int, seed: int = 0) -> Path:
    """One folder per shape and seed: a run with other --rows/--dim/--classes never reads another's split."""
    return work / f"train-{rows}x{dim}x{classes}-seed{seed}" / "train.manifest.json"


def cached_manifest(work: Path, *, rows: int, dim: int, classes: int, seed: int = 0) -> Path | None:
    """The split generated earlier for this very shape, else None (its manifest must agree too)."""
    manifest = manifest_path(work, rows=rows, dim=dim, classes=classes, seed=seed)
    if not manifest.is_file():
        return None
    stated = json.loads(manifest.read_text())
    return manifest if (stated.get("rows"), stated.get("dim")) == (rows, dim) else None


def generate(work: Path, rows: int, dim: int, classes: int, seed: int = 0) -> Path:
    """Class-sorted shards (20, as config/eva02.yaml converts the real file); returns the manifest.
    Reused from an earlier run only for the same rows, dim, classes and seed."""
    cached = cached_manifest(work, rows=rows, dim=dim, classes=classes, seed=seed)
    if cached is not None:
        return cached
    manifest = manifest_path(work, rows=rows, dim=dim, classes=classes, seed=seed)
    rng = np.random.default_rng(seed)
    spec = DemoSpec(classes=classes, dim=dim, train_scale=1.0, train_rows=rows, seed=seed)
    counts = train_counts(spec, rng)
    labels = np.repeat(np.arange(classes), counts).astype(np.int16)
    gen = torch.Generator(device="cuda").manual_seed(seed)
    # Separation chosen so a linear head lands near 90% top-1 (about the real features' level).
    means = torch.randn(classes, dim, device="cuda", generator=gen) * 0.155
    features = np.empty((len(labels), dim), dtype=np.float32)  # the one host copy, freed after writing
    step = 1 << 16
    lab = torch.from_numpy(labels.astype(np.int64)).cuda()
    for start in range(0, len(labels), step):
        y = lab[start : start + step]
        x = means[y] + torch.randn(len(y), dim, device="cuda", generator=gen)
        features[start : start + len(y)] = x.cpu().numpy()
    write_split_shards(manifest.parent / "train", labels, features, shards=20, row_group_rows=8192)
    return manifest


def matmul_rate(batch: int, dim: int, width: int, dtype: torch.dtype) -> float:
    """FLOP/s of x (batch, dim) @ w (dim, width) on the GPU, median of 50 timed runs."""
    x = torch.randn(batch, dim, device="cuda", dtype=dtype)
    w = torch.randn(dim, width, device="cuda", dtype=dtype)
    for _ in range(10):
        x @ w
    times = []
    for _ in range(50):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        x @ w
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1000)
    return 2 * batch * dim * width / float(np.median(times))


TRAIN = """
import json, sys, time, torch
from scripts.train.train_head import train_head
manifest, out, name, head, train = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4]), json.loads(sys.argv[5])
t0 = time.perf_counter()
outputs = {"model": f"{out}/model.pt", "history": f"{out}/history.csv", "selection": f"{out}/selection.json"}
sel = train_head(manifest, outputs, name=name, head=head, train=train, num_classes=int(sys.argv[6]), seed=0)
total = time.perf_counter() - t0
print("RESULT", json.dumps({"total_s": total, "selection": sel,
      "peak_gpu_mb": torch.cuda.max_memory_allocated() / 2**20}), flush=True)
for line in open("/proc/self/status"):
    if line.startswith("VmHWM:"):
        print("PEAK_RSS_KB", int(line.split()[1]), flush=True)
"""


def run_head(manifest: Path, work: Path, name: str, head: dict, classes: int) -> dict:
    train = {"device": "cuda", "holdout_fraction": 0.02, "threads": 8}
    proc = subprocess.run([sys.executable, "-c", TRAIN, str(manifest), str(work / "heads" / name), name,
                           json.dumps(head), json.dumps(train), str(classes)],
                          cwd=ROOT, stdout=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(ROOT)},
                          check=True)
    out = proc.stdout.decode().splitlines()
    result = json.loads(next(line for line in out if line.startswith("RESULT"))[7:])
    result["peak_rss_mb"] = int(next(line for line in out if line.startswith("PEAK_RSS_KB")).split()[1]) / 1024
    return result


def summarise(name: str, head: dict, result: dict, rates: dict, dim: int, classes: int) -> dict:
    sel = result["selection"]
    if not sel.get("graphed"):
        # An eager run measures PyTorch's launch overhead, not the replayed step: no figure from it.
        raise SystemExit(f"bench_gpu: {name} trained without CUDA graph replay "
                         f"({sel.get('graph_capture_error') or 'graphed is not true in selection.json'})")
    k = len(sel["grid"])
    fit_rows = sel["data"]["fit_rows"]
    epochs = sel["timing"]["grid_epochs"]
    epoch_s = sel["timing"]["grid_s"] / epochs
    width = sum(head.get("hidden", [])) or classes
    flops = 4 * fit_rows * dim * width * k  # first layer: forward + weight gradient (the bulk)
    if head.get("hidden"):
        h = head["hidden"][-1]
        flops += 6 * fit_rows * h * classes * k  # output layer: forward, weight and input gradients
    return {
        "head": name, "candidates": k, "epochs": epochs, "fit_rows": fit_rows,
        "load_s": sel["data"]["load_s"], "load_mb_per_s": sel["data"]["load_mb_per_s"],
        "placement": sel["data"]["placement"],
        "grid_s": sel["timing"]["grid_s"], "epoch_s": round(epoch_s, 3),
        "rows_per_s": round(fit_rows / epoch_s), "candidate_rows_per_s": round(fit_rows * k / epoch_s),
        "share_of_bf16_matmul_rate": round(flops / epoch_s / rates["bf16"], 3),
        "refit_s": (sel["refit"] or {}).get("seconds"),
        "training_s_after_load": round(result["total_s"] - sel["data"]["load_s"], 2),
        "total_s": round(result["total_s"], 2),
        "holdout_top1": sel["winner"]["holdout_acc"], "winner": {k2: sel["winner"][k2] for k2 in ("lr", "weight_decay")},
        "peak_gpu_mb": round(result["peak_gpu_mb"]), "peak_rss_mb": round(result["peak_rss_mb"]),
        "matrix_mb": sel["data"]["matrix_mb"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/featgap-gpu"))
    parser.add_argument("--rows", type=int, default=FULL_ROWS)
    parser.add_argument("--dim", type=int, default=DIM)
    parser.add_argument("--classes", type=int, default=CLASSES)
    parser.add_argument("--heads", default="linear,mlp")
    parser.add_argument("--epochs", type=int, default=None, help="override the config's epochs (quick checks)")
    parser.add_argument("--out", type=Path, default=ROOT / "tests/benchmarks/results/gpu.json")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("bench_gpu needs a CUDA GPU")
    args.work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    manifest = generate(args.work, args.rows, args.dim, args.classes)
    generate_s = time.perf_counter() - t0
    heads = yaml.safe_load((ROOT / "config/eva02.yaml").read_text())["heads"]
    names = [h for h in args.heads.split(",") if h]
    k_max = max(len(heads[h]["lr"]) * len(heads[h]["weight_decay"]) for h in names)
    width = k_max * args.classes
    rates = {"bf16": matmul_rate(1024, args.dim, width, torch.bfloat16),
             "fp32": matmul_rate(1024, args.dim, width, torch.float32)}
    report = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "rows": args.rows, "dim": args.dim,
              "classes": args.classes, "generate_s": round(generate_s, 1),
              "matmul_tflops": {k: round(v / 1e12, 1) for k, v in rates.items()}, "heads": []}
    for name in names:
        head = dict(heads[name])
        if args.epochs:
            head["epochs"] = args.epochs
        result = run_head(manifest, args.work, name, head, args.classes)
        report["heads"].append(summarise(name, head, result, rates, args.dim, args.classes))
        print(json.dumps(report["heads"][-1]), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    lines = [(f"GPU: {report['gpu']}, torch {report['torch']}; {args.rows:,} × {args.dim} × {args.classes}; "
              f"matmul (batch 1024, width {width}) bf16 {report['matmul_tflops']['bf16']} TFLOP/s, "
              f"fp32 {report['matmul_tflops']['fp32']} TFLOP/s"), "",
             ("| head | K | load s | epoch s | rows/s | bf16 share | refit s | after load s | holdout top-1 |"
              " peak GPU MB | peak RSS MB |"), "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for h in report["heads"]:
        lines.append(f"| {h['head']} | {h['candidates']} | {h['load_s']:.1f} | {h['epoch_s']:.2f} | "
                     f"{h['rows_per_s']:,} | {h['share_of_bf16_matmul_rate']:.0%} | {h['refit_s']} | "
                     f"{h['training_s_after_load']} | {h['holdout_top1']:.4f} | {h['peak_gpu_mb']:,} | "
                     f"{h['peak_rss_mb']:,} |")
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
