"""Benchmark: featgap convert vs polars sink_parquet (float32 schema) vs the seeds' pandas, same run.

Generates (once) a ~1 GB CSV in the real schema (1024 features, class-sorted), then runs each
converter as its own process, alternating, `--rounds` times, on `--threads` cores, and reports
MB/s, the ratio to polars' float32 sink (`polars_f32`, the same float32 values) and peak RSS
(from wait4, per process). Not a test: no asserts.

    .venv/bin/python tests/benchmarks/bench_convert.py [--gb 1.0] [--rounds 3] [--out FILE]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BYTES_PER_ROW_1024 = 11_090  # measured: ~10.8 characters per float32 value at D=1024

PEERS = {
    "featgap": """
import sys
from scripts.data.convert import convert_file
convert_file(sys.argv[1], sys.argv[2] + '/shards', sys.argv[2] + '/x.manifest.json', num_classes=1000,
             dim=1024, parts=1)
""",
    # The fair peer: the same float32 values (and int64 index / label, string path), polars' own
    # streaming sink with its defaults (zstd, statistics).
    "polars_f32": """
import sys, polars as pl
names = open(sys.argv[1], encoding='utf-8').readline().rstrip('\\r\\n').split(',')
schema = {n: pl.Int64 if n in ('', 'label') else pl.String if n == 'path' else pl.Float32 for n in names}
pl.scan_csv(sys.argv[1], schema=schema).sink_parquet(sys.argv[2] + '/out.parquet')
""",
    # Not the same work: infers and writes float64 (twice the output bytes); kept for comparison.
    "polars_sink": """
import sys, polars as pl
pl.scan_csv(sys.argv[1]).sink_parquet(sys.argv[2] + '/out.parquet')
""",
    "pandas_chunks": """
import sys, pandas as pd, pyarrow as pa, pyarrow.parquet as pq
writer = None
for chunk in pd.read_csv(sys.argv[1], chunksize=10_000):
    table = pa.Table.from_pandas(chunk, preserve_index=False)
    writer = writer or pq.ParquetWriter(sys.argv[2] + '/out.parquet', table.schema)
    writer.write_table(table)
writer.close()
""",
}


def make_csv(folder: Path, gigabytes: float) -> Path:
    csv = folder / "train.csv"
    if csv.exists():
        return csv
    sys.path.insert(0, str(ROOT))
    from scripts.data.generate_demo import DemoSpec, generate

    rows = int(gigabytes * 1e9 / BYTES_PER_ROW_1024)
    generate(folder, DemoSpec(classes=1000, dim=1024, train_scale=rows / 1_281_167, test1_per_class=1,
                              test2_per_class=1))
    return csv


def run_once(name: str, csv: Path, work: Path, threads: int) -> dict:
    out = work / name
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    env = {**os.environ, "POLARS_MAX_THREADS": str(threads), "OMP_NUM_THREADS": str(threads),
           "PYTHONPATH": str(ROOT)}
    cmd = ["taskset", "-c", f"0-{threads - 1}", sys.executable, "-c", PEERS[name], str(csv), str(out)]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    if status != 0:
        raise RuntimeError(f"{name} failed: {proc.stderr.read().decode()[-2000:]}")
    size = csv.stat().st_size
    out_bytes = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    shutil.rmtree(out, ignore_errors=True)
    # CPU seconds too: on a shared machine wall time depends on the others' load, CPU time much less.
    return {"seconds": seconds, "mb_s": size / seconds / 1e6, "peak_rss_mb": usage.ru_maxrss / 1024,
            "output_mb": out_bytes / 1e6, "cpu_s": usage.ru_utime + usage.ru_stime}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gb", type=float, default=1.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--work", default="/tmp/featgap-bench-convert")
    parser.add_argument("--peers", default="featgap,polars_f32,polars_sink,pandas_chunks")
    parser.add_argument("--out", default=str(ROOT / "tests/benchmarks/results/convert.json"))
    args = parser.parse_args()
    work = Path(args.work)
    csv = make_csv(work / f"data-{args.gb}", args.gb)
    peers = args.peers.split(",")
    runs: dict[str, list[dict]] = {name: [] for name in peers}
    for round_ in range(args.rounds):
        for name in peers:  # alternate, so drifting machine load hits every peer alike
            result = run_once(name, csv, work, args.threads)
            runs[name].append(result)
            print(f"round {round_ + 1} {name:14s} {result['mb_s']:7.1f} MB/s  cpu {result['cpu_s']:5.1f} s  "
                  f"peak {result['peak_rss_mb']:7.0f} MB  load {os.getloadavg()[0]:.1f}",
                  flush=True)
    summary = {name: {"median_mb_s": statistics.median(r["mb_s"] for r in rs),
                      "median_cpu_s": statistics.median(r["cpu_s"] for r in rs),
                      "max_peak_rss_mb": max(r["peak_rss_mb"] for r in rs),
                      "output_mb": rs[0]["output_mb"], "runs": rs} for name, rs in runs.items()}
    base = summary.get("polars_f32", {}).get("median_mb_s")
    for s in summary.values():
        s["ratio_vs_polars_f32"] = s["median_mb_s"] / base if base else None
        s["cpu_ratio_vs_polars_f32"] = (summary["polars_f32"]["median_cpu_s"] / s["median_cpu_s"]
                                        if "polars_f32" in summary else None)
    size = csv.stat().st_size
    report = {"csv_bytes": size, "threads": args.threads, "rounds": args.rounds, "peers": summary,
              "loadavg_1_5_15_at_end": os.getloadavg(),
              "train_13gb_minutes_extrapolated": {n: 13.0e9 / (s["median_mb_s"] * 1e6) / 60
                                                  for n, s in summary.items()}}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"\n{size / 1e9:.2f} GB CSV, {args.threads} threads, median of {args.rounds}:")
    for name, s in summary.items():
        print(f"  {name:14s} {s['median_mb_s']:7.1f} MB/s  x{s['ratio_vs_polars_f32'] or 0:.2f} vs polars f32  "
              f"peak RSS {s['max_peak_rss_mb']:.0f} MB")


if __name__ == "__main__":
    main()
