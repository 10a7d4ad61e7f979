"""Benchmark: loading a split's features into one preallocated float32 matrix, warm, same run.

Peers, each its own process pinned to the same cores, alternating, median of `--rounds`:
  featgap      featio.read_split(manifest, columns=(), out=matrix) (what train_data._load_to_host does),
               `--threads` threads, every page's CRC-32 checked;
  pyarrow      ParquetFile(page_checksum_verification=True).read_row_group per row group, copied
               into the matrix, the row groups spread over the same `--threads` threads;
  pyarrow_1t   the same in one thread (the loop featio used before);
  memcpy       numpy copy of an in-memory matrix of the same size (the ceiling).
The split's files are read once before timing (warm: from the page cache). Each process reports
the seconds of the load alone; peak RSS is from wait4 (matrix + what the reader holds).

    .venv/bin/python tests/benchmarks/bench_load.py --manifest results/parquet/train.manifest.json [--rounds 3]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

PEERS = {
    "featgap": """
from scripts.lib.featio.reader import read_split
def load(manifest, matrix, threads):
    read_split(manifest, columns=(), out=matrix, threads=threads)
""",
    "pyarrow": """
from concurrent.futures import ThreadPoolExecutor
from scripts.lib.featio.arrow import features_to_numpy
from scripts.lib.featio.shards import list_shards
import pyarrow.parquet as pq
def load(manifest, matrix, threads):
    jobs, at = [], 0
    for path in list_shards(manifest):
        pfile = pq.ParquetFile(path, page_checksum_verification=True)
        for group in range(pfile.num_row_groups):
            jobs.append((path, group, at))
            at += pfile.metadata.row_group(group).num_rows
    def one(job):
        path, group, at = job
        pfile = pq.ParquetFile(path, page_checksum_verification=True)  # one reader per task: thread-safe
        block = features_to_numpy(pfile.read_row_group(group, columns=["features"]).column(0), matrix.shape[1])
        matrix[at : at + len(block)] = block
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(one, jobs))
""",
    "pyarrow_1t": """
from scripts.lib.featio.arrow import features_to_numpy
from scripts.lib.featio.shards import list_shards
import pyarrow.parquet as pq
def load(manifest, matrix, threads):
    at = 0
    for path in list_shards(manifest):
        pfile = pq.ParquetFile(path, page_checksum_verification=True)
        for group in range(pfile.num_row_groups):
            block = features_to_numpy(pfile.read_row_group(group, columns=["features"]).column(0), matrix.shape[1])
            matrix[at : at + len(block)] = block
            at += len(block)
""",
    "memcpy": """
import numpy as np
source = None
def load(manifest, matrix, threads):
    np.copyto(matrix, source)
""",
}

RUNNER = """
import sys, time, numpy as np
from scripts.lib.featio.reader import split_shape
manifest, threads = sys.argv[1], int(sys.argv[2])
rows, dim = split_shape(manifest)
matrix = np.empty((rows, dim), np.float32)
if 'source' in globals():
    source = np.ones((rows, dim), np.float32)
start = time.perf_counter()
load(manifest, matrix, threads)
print(time.perf_counter() - start)
"""


def run_once(name: str, manifest: Path, threads: int, cores: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": str(threads)}
    code = PEERS[name] + RUNNER
    proc = subprocess.Popen(["taskset", "-c", cores, sys.executable, "-c", code, str(manifest), str(threads)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT)
    _, status, usage = os.wait4(proc.pid, 0)
    out, err = proc.stdout.read().decode(), proc.stderr.read().decode()
    if status != 0:
        raise RuntimeError(f"{name} failed: {err[-2000:]}")
    return {"seconds": float(out.split()[-1]), "peak_rss_mb": usage.ru_maxrss / 1024,
            "process_cpu_s": usage.ru_utime + usage.ru_stime}  # whole process, start-up included


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--manifest", required=True, type=Path)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--peers", default="featgap,pyarrow,pyarrow_1t,memcpy")
    parser.add_argument("--out", type=Path, default=ROOT / "tests/benchmarks/results/load.json")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    from scripts.lib.featio.reader import split_shape
    from scripts.lib.featio.shards import list_shards

    rows, dim = split_shape(args.manifest)
    matrix_mb = rows * dim * 4 / 1e6
    for path in list_shards(args.manifest):  # warm the page cache
        with open(path, "rb") as handle:
            while handle.read(1 << 24):
                pass
    cores = f"0-{args.threads - 1}"
    peers = args.peers.split(",")
    runs: dict[str, list[dict]] = {name: [] for name in peers}
    for round_ in range(args.rounds):
        for name in peers:  # alternate, so drifting machine load hits every peer alike
            result = run_once(name, args.manifest, args.threads, cores)
            result["mb_s"] = matrix_mb / result["seconds"]
            runs[name].append(result)
            print(f"round {round_ + 1} {name:11s} {result['mb_s']:7.0f} MB/s  peak {result['peak_rss_mb']:6.0f} MB",
                  flush=True)
    summary = {name: {"median_mb_s": statistics.median(r["mb_s"] for r in rs),
                      "max_peak_rss_mb": max(r["peak_rss_mb"] for r in rs), "runs": rs} for name, rs in runs.items()}
    base = summary.get("pyarrow", {}).get("median_mb_s")
    for s in summary.values():
        s["ratio_vs_pyarrow"] = s["median_mb_s"] / base if base else None
    report = {"manifest": str(args.manifest), "rows": rows, "dim": dim, "matrix_mb": matrix_mb, "threads": args.threads,
              "rounds": args.rounds, "loadavg_1_5_15_at_end": os.getloadavg(), "peers": summary}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\n{matrix_mb:.0f} MB matrix, {args.threads} threads, median of {args.rounds}:")
    for name, s in summary.items():
        print(f"  {name:11s} {s['median_mb_s']:7.0f} MB/s  x{s['ratio_vs_pyarrow'] or 0:.2f} vs pyarrow  "
              f"peak RSS {s['max_peak_rss_mb']:.0f} MB")


if __name__ == "__main__":
    main()
