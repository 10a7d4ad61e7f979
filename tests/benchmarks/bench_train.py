"""Benchmark: the train stage on the CPU, in one run. Not a test: no asserts.

On a generated 100k × 1024 × 1000 train split (class-sorted shards, regenerated into --work):
  load      load_train (shards → preprocessed in-memory matrix) in a child process: MB/s, peak RSS;
  speed     per thread count (default 1 and 2), rounds of: float32 matmul rate (the step's two GEMMs
            alone, and a square 2048³; the better one), one epoch of the linear head with K=1 and
            K=4 candidates (4·N·D·C·K flops), the matmul rate again. The machine may be shared, so
            each epoch is compared with the rate measured right before and after it; in addition
            each of 12 training steps is followed by its own two GEMMs alone (paired ratio).
            Then SGDClassifier(log_loss, n_jobs=threads).partial_fit rows/s on the same chunks;
  accuracy  on 100k rows of 100 classes × 256 features (1000 rows per class, as ImageNet; at
            1000 × 1024 an lbfgs fit to convergence takes about an hour on 2 cores): the linear head
            with the real-data config (config/eva02.yaml heads.linear, via the CLI in a child
            process: wall time, peak RSS) vs LogisticRegression(lbfgs, tol 1e-6) with C chosen on
            the same stratified holdout and refit on all train rows, on the same 10k test rows.
Writes --out (JSON) and the same path with .md (a table for docs/benchmarks.md).

    .venv/bin/python tests/benchmarks/bench_train.py [--rounds 4] [--speed-threads 1,2] [--skip-accuracy]

About 10 minutes on 2 cores; peak memory about 2 GB.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from scripts.data.generate_demo import DemoSpec
from scripts.lib.device import configure_determinism
from scripts.lib.training.config import HeadConfig, parse_config
from scripts.lib.training.data import load_train, stratified_holdout
from scripts.train.train_head import run_grid
from tests.step_layout import output_argv
from tests.train_helpers import make_dataset

CLASSES, DIM, TRAIN_PER_CLASS, TEST_PER_CLASS = 1000, 1024, 100, 10
FULL_ROWS = 1_281_167


def dataset(work: Path) -> dict:
    """The 100k-row class-sorted split as 4 shards + 10k test rows (regenerated: ~10 s, deterministic)."""
    return make_dataset(work, DemoSpec(classes=CLASSES, dim=DIM, seed=0), TRAIN_PER_CLASS, TEST_PER_CLASS,
                        shards=4, row_group_rows=8192)


PEAK = """
import atexit
def _peak():  # VmHWM: this process's own peak RSS (wait4's ru_maxrss would include the forking parent's)
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            print("PEAK_RSS_KB", int(line.split()[1]), flush=True)
atexit.register(_peak)
"""


def child(code: str, *args: str) -> tuple[float, float, str]:
    """Run python code in a fresh process: (seconds, its own peak RSS in MB, stdout)."""
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", PEAK + code, *args], cwd=ROOT, stdout=subprocess.PIPE,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"child failed ({proc.returncode}): {code[:80]}…")
    out = proc.stdout.decode()
    peak = [int(line.split()[1]) for line in out.splitlines() if line.startswith("PEAK_RSS_KB")]
    return time.perf_counter() - start, peak[-1] / 1024, out


LOAD = """
import json, sys, time, torch
torch.set_num_threads(int(sys.argv[2]))
from scripts.lib.training.data import load_train
t = time.perf_counter()
data = load_train(sys.argv[1], num_classes=1000, holdout_fraction=0.02, seed=0, memory_budget_mb=1e9)
print(json.dumps({**data.stats, "total_s": time.perf_counter() - t}))
"""


def bench_load(folder: Path, threads: int, rounds: int) -> dict:
    runs = []
    for _ in range(rounds):
        seconds, rss, out = child(LOAD, str(folder), str(threads))
        stats = json.loads([line for line in out.splitlines() if line.startswith("{")][-1])
        runs.append({"read_s": stats["load_s"], "read_mb_s": stats["load_mb_per_s"],
                     "with_preprocessing_s": round(stats["total_s"], 3), "peak_rss_mb": round(rss, 1),
                     "matrix_mb": stats["matrix_mb"], "process_s": round(seconds, 2)})
    best = max(runs, key=lambda r: r["read_mb_s"])
    return {"runs": runs, "read_mb_s": best["read_mb_s"], "matrix_mb": best["matrix_mb"],
            "peak_rss_mb": max(r["peak_rss_mb"] for r in runs),
            "peak_rss_over_matrix_mb": round(max(r["peak_rss_mb"] for r in runs) - best["matrix_mb"], 1),
            "note": "page cache warm (the shards were just written or read)"}


def matmul_rate(m: int, k: int, n: int, repeats: int = 3) -> float:
    """Median float32 GFLOP/s of torch.mm (m×k)@(k×n) into a preallocated output."""
    a, b, out = torch.randn(m, k), torch.randn(k, n), torch.empty(m, n)
    torch.mm(a, b, out=out)
    rates = []
    for _ in range(repeats):
        t = time.perf_counter()
        torch.mm(a, b, out=out)
        rates.append(2 * m * k * n / (time.perf_counter() - t) / 1e9)
    return statistics.median(rates)


def train_gemms_rate(batch: int, width: int, repeats: int = 3) -> float:
    """GFLOP/s of exactly the two GEMMs of a training step: x @ W and xᵀ @ G (batch × DIM × width)."""
    x, w, g = torch.randn(batch, DIM), torch.randn(DIM, width), torch.randn(batch, width)
    out, grad = torch.empty(batch, width), torch.empty(DIM, width)
    torch.mm(x, w, out=out)
    rates = []
    for _ in range(repeats):
        t = time.perf_counter()
        torch.mm(x, w, out=out)
        torch.mm(x.t(), g, out=grad)
        rates.append(4 * batch * DIM * width / (time.perf_counter() - t) / 1e9)
    return statistics.median(rates)


def machine_rate(batch: int, width: int) -> dict:
    """The float32 matmul rate now: the better of the training GEMM shapes and a square 2048³."""
    shape, square = train_gemms_rate(batch, width), matmul_rate(2048, 2048, 2048)
    return {"train_gemms_gflops": round(shape, 1), "square_2048_gflops": round(square, 1),
            "gflops": round(max(shape, square), 1)}


def paired_steps(data, k: int, batch: int, pairs: int) -> dict:
    """Step-by-step: each training step followed at once by the same GEMMs alone; the median of
    (GEMM time / step time) is the step's efficiency with both measured under the same load."""
    from scripts.lib.training.grid import CandidateGrid, GridOptimizer, grid_loss

    grid = CandidateGrid(DIM, CLASSES, [], k, 0.0, 0, torch.device("cpu"))
    opt = GridOptimizer(grid.params, "adamw", np.full(k, 1e-3), np.full(k, 0.1))
    w, g = torch.randn(DIM, k * CLASSES), torch.randn(batch, k * CLASSES)
    out, grad = torch.empty(batch, k * CLASSES), torch.empty(DIM, k * CLASSES)
    ratios, steps = [], data.batches(data.fit_rows, batch, np.random.default_rng(0))
    for i in range(pairs + 1):
        t0 = time.perf_counter()
        x, y = next(steps)
        loss, _, _ = grid_loss(grid.forward(x, train=True), y, 0.1, None)
        loss.backward()
        opt.step(1.0)
        t1 = time.perf_counter()
        torch.mm(x, w, out=out)
        torch.mm(x.t(), g, out=grad)
        t2 = time.perf_counter()
        if i:  # the first pair warms up
            ratios.append((t2 - t1) / (t1 - t0))
    return {"pairs": pairs, "median_step_vs_gemms": round(statistics.median(ratios), 3),
            "best_step_vs_gemms": round(max(ratios), 3)}


def epoch_rate(data, k: int, batch: int, seed: int) -> dict:
    """One training epoch of K linear candidates over the fit rows (no holdout pass)."""
    head = {"lr": [1e-3] * k, "batch_size": batch, "epochs": 1, "warmup_epochs": 0, "label_smoothing": 0.1}
    cfg = parse_config(HeadConfig, head, "heads.bench")
    cands = [{"candidate": i, "lr": 1e-3 * (i + 1), "weight_decay": 0.1} for i in range(k)]
    t = time.perf_counter()
    run_grid(data, cfg, cands, data.fit_rows, epochs=1, seed=seed, phase="grid", select=False, desc=f"epoch K={k}",
             autocast=None)  # float32: these are the float32 figures
    seconds = time.perf_counter() - t
    n = len(data.fit_rows)
    return {"seconds": round(seconds, 3), "rows_per_s": round(n / seconds, 1),
            "gflops": round(4 * n * DIM * CLASSES * k / seconds / 1e9, 1)}


def bench_sgd(data, chunks: int, chunk_rows: int, threads: int) -> dict:
    from sklearn.linear_model import SGDClassifier

    model = SGDClassifier(loss="log_loss", alpha=1e-4, random_state=0, n_jobs=threads)  # as scripts.train.train_baseline
    classes = np.arange(CLASSES)
    batches = data.batches(data.fit_rows, chunk_rows, np.random.default_rng(0))
    x, y = next(batches)
    model.partial_fit(x.numpy(), y.numpy(), classes=classes)  # first call sets up; not timed
    rows, t = 0, time.perf_counter()
    for _ in range(chunks):
        x, y = next(batches)
        model.partial_fit(x.numpy(), y.numpy())
        rows += len(y)
    seconds = time.perf_counter() - t
    return {"rows": rows, "seconds": round(seconds, 2), "rows_per_s": round(rows / seconds, 1)}


def bench_speed(folder: Path, threads: int, rounds: int, batch: int, sgd_chunks: int) -> dict:
    configure_determinism(torch.device("cpu"), threads, 0)
    data = load_train(folder, num_classes=CLASSES, holdout_fraction=0.02, seed=0, memory_budget_mb=1e9)
    per_round = []
    for r in range(rounds):
        # The matmul rate is taken right before and after each epoch (the machine may be shared).
        before = machine_rate(batch, CLASSES)
        k1 = epoch_rate(data, 1, batch, r)
        middle = machine_rate(batch, 4 * CLASSES)
        k4 = epoch_rate(data, 4, batch, r)
        after = machine_rate(batch, 4 * CLASSES)
        rate1 = (before["gflops"] + middle["gflops"]) / 2
        rate4 = (middle["gflops"] + after["gflops"]) / 2
        row = {"matmul": [before, middle, after], "epoch_k1": k1, "epoch_k4": k4,
               "matmul_rate_gflops": round((rate1 + rate4) / 2, 1),
               "k1_vs_matmul": round(k1["gflops"] / rate1, 3), "k4_vs_matmul": round(k4["gflops"] / rate4, 3)}
        per_round.append(row)
        print(json.dumps(row), flush=True)
    paired = {f"k{k}": paired_steps(data, k, batch, 12) for k in (1, 4)}
    print(json.dumps(paired), flush=True)
    sgd = bench_sgd(data, sgd_chunks, 8192, threads)
    med = lambda key, sub=None: statistics.median(
        (r[key][sub] if sub else r[key]) for r in per_round)
    k1_rows = med("epoch_k1", "rows_per_s")
    return {
        "batch_size": batch, "fit_rows": len(data.fit_rows), "rounds": per_round, "paired_steps": paired,
        "median_matmul_rate_gflops": med("matmul_rate_gflops"),
        "median_epoch_k1_gflops": med("epoch_k1", "gflops"), "median_epoch_k4_gflops": med("epoch_k4", "gflops"),
        "median_k1_vs_matmul": med("k1_vs_matmul"), "median_k4_vs_matmul": med("k4_vs_matmul"),
        "best_k1_vs_matmul": max(r["k1_vs_matmul"] for r in per_round),
        "best_k4_vs_matmul": max(r["k4_vs_matmul"] for r in per_round),
        "median_epoch_k1_rows_per_s": k1_rows, "median_epoch_k4_candidate_rows_per_s": 4 * med("epoch_k4", "rows_per_s"),
        "sgd_partial_fit": sgd, "head_k1_vs_sgd_rows_per_s": round(k1_rows / sgd["rows_per_s"], 1),
        "threads": threads, "load_average_1min": os.getloadavg()[0],
    }


def logreg_accuracy(data: dict, fit_x, threads: int, c_grid: list[float], holdout_fraction: float) -> dict:
    """LogisticRegression(lbfgs) on the head's preprocessing, C by holdout top-1, refit on all train."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from threadpoolctl import threadpool_limits

    y = data["train_labels"]
    mean, std = fit_x.mean(0), fit_x.std(0)
    fit_x -= mean
    fit_x /= std  # in place: one copy of the train matrix
    test_x = (data["test_features"] - mean) / std
    fit, hold = stratified_holdout(y, holdout_fraction, np.random.default_rng([0, 0]))
    scores, t0, fits = [], time.perf_counter(), {}
    # Warm starts along the C path (small C first: it converges fastest), and the refit on all train
    # rows from the winner's solution: the same optimum as cold starts, in fewer lbfgs iterations.
    model = LogisticRegression(max_iter=3000, tol=1e-6, warm_start=True)  # tight: "to convergence"
    with threadpool_limits(threads), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        for c in sorted(c_grid):
            t = time.perf_counter()
            model.set_params(C=c).fit(fit_x[fit], y[fit])
            fits[c] = (model.coef_.copy(), model.intercept_.copy())
            scores.append({"C": c, "holdout_acc": float(model.score(fit_x[hold], y[hold])),
                           "iterations": int(model.n_iter_.max()), "seconds": round(time.perf_counter() - t, 1)})
            print(json.dumps(scores[-1]), flush=True)
        best = max(scores, key=lambda s: (s["holdout_acc"], -s["C"]))
        model.set_params(C=best["C"])
        model.coef_, model.intercept_ = fits[best["C"]]
        model.fit(fit_x, y)
    return {"scores": scores, "C": best["C"], "test_acc": float((model.predict(test_x) == data["test_labels"]).mean()),
            "converged": not any(issubclass(w.category, ConvergenceWarning) for w in caught),
            "iterations": int(model.n_iter_.max()),
            "seconds": round(time.perf_counter() - t0, 1)}


HEAD = """
import sys
from scripts.lib.featio.cli import run_cli
from scripts.train.train_head import main
run_cli(main, sys.argv[1:])
"""


def bench_accuracy(work: Path, threads: int, c_grid: list[float], shape: tuple[float, ...]) -> dict:
    """Head vs LogisticRegression on `shape` = (classes, dim, train rows per class, separation), 100 test
    rows per class.

    Default 100 × 256 × 1000: 100k train rows with ImageNet's ~1000 rows per class. At 1000 × 1024
    one lbfgs fit to convergence takes about an hour on 2 cores (4·N·D·C flops per iteration)."""
    from scripts.lib.heads import predict_logits

    classes, dim, per_class, separation = int(shape[0]), int(shape[1]), int(shape[2]), shape[3]
    # separation 0.25: top-1 near 90%, the real data's level (the demo default 0.325 gives ~96% here).
    data = make_dataset(work / "accuracy", DemoSpec(classes=classes, dim=dim, seed=1, separation=separation),
                        per_class, 100,
                        shards=4, row_group_rows=8192)

    eva02 = yaml.safe_load((ROOT / "config/eva02.yaml").read_text())
    head, settings = eva02["heads"]["linear"], {"holdout_fraction": eva02["train"]["holdout_fraction"],
                                                   "device": "cpu", "threads": threads}
    seconds, rss, _ = child(HEAD, "--manifest", str(data["manifest"]), *output_argv(work / "linear", "train_head"),
                            "--name", "linear", "--options", json.dumps(head), "--train-options", json.dumps(settings),
                            "--num-classes", str(classes), "--seed", "0", "--threads", str(threads))
    selection = json.loads((work / "linear/selection.json").read_text())
    acc = float((predict_logits(work / "linear/model.pt", data["test_features"]).argmax(1)
                 == data["test_labels"]).mean())
    from scripts.lib.featio.reader import read_split

    train_x = read_split(data["manifest"], columns=()).features
    logreg = logreg_accuracy(data, train_x, threads, c_grid, settings["holdout_fraction"])
    return {"head_config": head, "head": {"test_acc": acc, "winner": selection["winner"], "seconds": round(seconds, 1),
                                          "peak_rss_mb": round(rss, 1), "timing": selection["timing"],
                                          "refit": selection["refit"]},
            "logreg": logreg, "head_minus_logreg_points": round(100 * (acc - logreg["test_acc"]), 2),
            "test_rows": len(data["test_labels"]), "train_rows": len(data["train_labels"]),
            "classes": classes, "dim": dim}


def markdown(result: dict) -> str:
    s, lines = result.get("speed"), [f"# Train benchmark ({result['machine']})", ""]
    if "load" in result:
        ld = result["load"]
        lines += [(f"- train matrix load ({ld['matrix_mb']} MB, 100k × 1024): **{ld['read_mb_s']} MB/s**, "
                  f"peak RSS {ld['peak_rss_mb']} MB (matrix + {ld['peak_rss_over_matrix_mb']} MB)")]
    for threads, sp in (s or {}).items():
        lines += [f"- **{threads}**: float32 matmul rate (median of rounds) {sp['median_matmul_rate_gflops']:.1f} GFLOP/s",
                  (f"  - linear head epoch, K=1: {sp['median_epoch_k1_gflops']:.1f} GFLOP/s = "
                  f"**{100 * sp['median_k1_vs_matmul']:.0f}%** of matmul ({sp['median_epoch_k1_rows_per_s']:.0f} rows/s); "
                  f"K=4 candidates: {sp['median_epoch_k4_gflops']:.1f} GFLOP/s = **{100 * sp['median_k4_vs_matmul']:.0f}%**"),
                  (f"  - best round: K=1 {100 * sp['best_k1_vs_matmul']:.0f}%, K=4 {100 * sp['best_k4_vs_matmul']:.0f}%; "
                  f"step by step (the step's two GEMMs timed alone right after each step, median): "
                  f"K=1 {100 * sp['paired_steps']['k1']['median_step_vs_gemms']:.0f}%, "
                  f"K=4 {100 * sp['paired_steps']['k4']['median_step_vs_gemms']:.0f}%"),
                  (f"  - SGDClassifier.partial_fit (n_jobs={sp['threads']}): {sp['sgd_partial_fit']['rows_per_s']} rows/s "
                  f"→ head K=1 is **{sp['head_k1_vs_sgd_rows_per_s']}×** faster")]
    if "accuracy" in result:
        a = result["accuracy"]
        lines += [(f"- accuracy ({a['train_rows']} train rows, {a['classes']} classes × {a['dim']} features), "
                  f"on {a['test_rows']} test rows: linear head **{100 * a['head']['test_acc']:.2f}%** "
                  f"(eva02 config, {a['head']['seconds']} s, peak RSS {a['head']['peak_rss_mb']} MB) vs "
                  f"LogisticRegression(C={a['logreg']['C']}) **{100 * a['logreg']['test_acc']:.2f}%** "
                  f"({a['logreg']['seconds']} s, converged: {a['logreg']['converged']}) → "
                  f"{a['head_minus_logreg_points']:+.2f} points")]
    if "full_size_estimate" in result:
        e = result["full_size_estimate"]
        lines += [f"- expected full 1.28M-row linear head (eva02 config) on this CPU: **{e['cpu_minutes']} min**"]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default="/tmp/featgap_bench_train")
    parser.add_argument("--out", default=str(ROOT / "tests/benchmarks/results/train.json"))
    parser.add_argument("--threads", type=int, default=2, help="threads for load and accuracy")
    parser.add_argument("--speed-threads", default="1,2", help="thread counts for the speed part")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--sgd-chunks", type=int, default=1)
    parser.add_argument("--c-grid", default="0.03,0.3")
    parser.add_argument("--accuracy-shape", default="100,256,1000,0.25",
                        help="classes,dim,train rows per class,class separation")
    parser.add_argument("--skip-accuracy", action="store_true")
    parser.add_argument("--skip-speed", action="store_true")
    args = parser.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    data = dataset(work)
    folder = data["manifest"]  # readers take a split by its manifest
    result = {"machine": f"{os.cpu_count()} CPUs visible, torch {torch.__version__}, "
                         f"load average at start {os.getloadavg()[0]:.1f}",
              "rows": TRAIN_PER_CLASS * CLASSES, "dim": DIM, "classes": CLASSES}
    result["load"] = bench_load(folder, args.threads, 2)
    print(json.dumps(result["load"]), flush=True)
    if not args.skip_speed:
        result["speed"] = {f"threads_{t}": bench_speed(folder, t, args.rounds, args.batch_size, args.sgd_chunks)
                           for t in (int(v) for v in args.speed_threads.split(","))}
        eva02 = yaml.safe_load((ROOT / "config/eva02.yaml").read_text())["heads"]["linear"]
        k = len(eva02["lr"]) * len(eva02["weight_decay"])
        cand_rows = max(sp["median_epoch_k4_candidate_rows_per_s"] for sp in result["speed"].values())
        # grid: K candidates × epochs, plus the refit (one candidate × epochs), at the K=4 rate.
        minutes = FULL_ROWS * eva02["epochs"] * (k + 1) / cand_rows / 60
        result["full_size_estimate"] = {"cpu_minutes": round(minutes, 1), "candidates": k, "epochs": eva02["epochs"],
                                        "load_s": round(FULL_ROWS * DIM * 4 / 2**20 / result["load"]["read_mb_s"], 1)}
    if not args.skip_accuracy:
        shape = tuple(float(v) for v in args.accuracy_shape.split(","))
        result["accuracy"] = bench_accuracy(work, args.threads, [float(c) for c in args.c_grid.split(",")], shape)
    result["total_s"] = round(time.perf_counter() - t0, 1)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    out.with_suffix(".md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
