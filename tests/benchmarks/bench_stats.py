"""Level and power of the per-class gap tests on the real design (docs/statistics.md).

1000 classes with Beta(9,1) accuracies, 50 test-1 and 10 test-2 images per class, α = 0.05:
rejection rates under the null (same accuracy in both sets) and with a real 0.8-point mean drop
(a uniform shift on the logit scale), for the stratified test (normal p and, on fewer
replicates, its Monte-Carlo permutation p), the paired t across classes and the Wilcoxon test
the gap analysis used before. Writes tests/benchmarks/results/stats.json.

    python tests/benchmarks/bench_stats.py             # ~6 minutes on one core
    python tests/benchmarks/bench_stats.py null_4000   # selected runs, merged into stats.json
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from scripts.lib.stats import clustered


def main() -> None:
    runs = {
        "null": {"drop": 0.0, "reps": 2000, "seed": 101},
        "null_4000": {"drop": 0.0, "reps": 4000, "seed": 105},
        "drop_0.8_points": {"drop": 0.008, "reps": 2000, "seed": 102},
        "null_permutation_999": {"drop": 0.0, "reps": 1000, "n_perm": 999, "seed": 103},
        "drop_0.8_points_permutation_999": {"drop": 0.008, "reps": 500, "n_perm": 999, "seed": 104},
        # The permutation p's level on fresh seeds: 3000 replicates (SE 0.4 points), and fewer classes.
        "null_permutation_999_3000": {"drop": 0.0, "reps": 3000, "n_perm": 999, "seed": 106},
        "null_permutation_999_100_classes": {"drop": 0.0, "reps": 1000, "n_perm": 999, "seed": 107, "n_classes": 100},
        "null_permutation_999_20_classes": {"drop": 0.0, "reps": 1000, "n_perm": 999, "seed": 108, "n_classes": 20},
    }
    path = ROOT / "tests" / "benchmarks" / "results" / "stats.json"
    selected = sys.argv[1:] or list(runs)
    out = json.loads(path.read_text()) if sys.argv[1:] and path.exists() else {}
    for name in selected:
        kw = {"n_classes": 1000, **runs[name]}
        start = time.perf_counter()
        out[name] = clustered.simulate_gap_tests(n1=50, n2=10, **kw)
        out[name]["seconds"] = round(time.perf_counter() - start, 1)
        print(name, json.dumps(out[name]), flush=True)
    path.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
