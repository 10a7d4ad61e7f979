"""Benchmark: the improve stage's cost against training the two heads again. Not a test.

On the demo (config/config.yaml), in the same run on the same machine, alternating, `repeats`
times: force the two trained heads (train_head: linear, mlp) and the whole improve stage
(improve_train for every retrained variant, improve_compare) to run again, one job at a time
(`--cores 1`, so no job shares the CPU with another), and read each job's Snakemake benchmark
file (wall s and CPU s). The peer is the two heads' training: the issue's yardstick.

    python tests/benchmarks/bench_improve.py [--repeats 3] [--workdir DIR]

Run from the repository root with the demo already built once (`snakemake --cores 2`). Writes
tests/benchmarks/results/improve.json.
"""
from __future__ import annotations

import argparse
import csv
import json
import statistics
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def read_tsv(path: Path) -> tuple[float, float]:
    with path.open(newline="") as handle:
        row = list(csv.DictReader(handle, delimiter="\t"))[-1]
    return float(row["s"]), float(row["cpu_time"])


def one_round(workdir: Path) -> dict[str, dict[str, float]]:
    subprocess.run(["snakemake", "--cores", "1", "--quiet", "all", "--forcerun", "train_head", "improve_train",
                    "improve_compare", "--until", "improve_compare", "--directory", str(workdir)],
                   cwd=ROOT, check=True)
    bench = workdir / "benchmarks"
    heads = [bench / "train" / "linear.tsv", bench / "train" / "mlp.tsv"]
    stage = sorted((bench / "improve").glob("*.tsv"))
    out = {}
    for name, files in (("two heads", heads), ("improve stage", stage)):
        wall, cpu = zip(*(read_tsv(f) for f in files))
        out[name] = {"wall_s": round(sum(wall), 2), "cpu_s": round(sum(cpu), 2), "jobs": len(files)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workdir", default=str(ROOT))
    args = parser.parse_args()
    rounds = [one_round(Path(args.workdir)) for _ in range(args.repeats)]
    ratios = {k: [r["improve stage"][k] / r["two heads"][k] for r in rounds] for k in ("wall_s", "cpu_s")}
    result = {"rounds": rounds, "ratio_median": {k: round(statistics.median(v), 3) for k, v in ratios.items()},
              "ratios": {k: [round(x, 3) for x in v] for k, v in ratios.items()}}
    out = ROOT / "tests/benchmarks/results/improve.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
