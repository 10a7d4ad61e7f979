"""Workflow wiring of evaluate + analyses: only they read the test splits; every output is a target."""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
READS_TESTS = {"evaluate", "shift", "shift_adapt", "misclass", "embedding", "class_counts", "validate_split",
               "report"}  # report: the manifests' row counts (metadata) only, never the shards


def _snakemake(*args: str) -> str:
    exe = shutil.which("snakemake") or str(Path(sys.executable).with_name("snakemake"))
    if not Path(exe).exists():
        pytest.skip("snakemake not installed")
    res = subprocess.run([exe, *args, "--cores", "1", "--quiet", "all"], cwd=ROOT, capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stderr[-3000:]
    return res.stdout


@pytest.fixture(scope="module")
def dag():
    out = _snakemake("--dag", "--forceall")
    nodes = {int(i): label for i, label in re.findall(r'^\s*(\d+)\[label = "([^"]*)"', out, re.M)}
    edges = [(int(a), int(b)) for a, b in re.findall(r"^\s*(\d+) -> (\d+)", out, re.M)]
    return nodes, edges


def test_only_evaluate_and_analyses_read_test_splits(dag):
    nodes, edges = dag
    rule = {i: label.split("\\n")[0] for i, label in nodes.items()}
    parents: dict[int, set[int]] = {}
    for a, b in edges:
        parents.setdefault(b, set()).add(a)
    # The jobs that produce a test split: plan_convert of test1/test2 and everything downstream of
    # it within the data stage (convert_part, manifest).
    test_jobs = {i for i, label in nodes.items() if rule[i] == "plan_convert" and re.search(r"split: test[12]", label)}
    changed = True
    while changed:
        changed = False
        for a, b in edges:
            if a in test_jobs and rule[b] in ("convert_part", "manifest") and b not in test_jobs:
                test_jobs.add(b)
                changed = True
    consumers = {rule[b] for a, b in edges if a in test_jobs} - {"convert_part", "manifest", "all"}
    assert consumers, "no consumers of the test splits found in the DAG"
    assert consumers <= READS_TESTS, f"rules reading a test split: {sorted(consumers - READS_TESTS)}"
    assert {"evaluate", "shift"} <= consumers
    # Training reads only the train split.
    for i, r in rule.items():
        if r.startswith("train_"):
            assert not (parents.get(i, set()) & test_jobs), nodes[i]


def test_all_analysis_outputs_are_targets(dag):
    nodes, _ = dag
    rules = {label.split("\\n")[0] for label in nodes.values()}
    for name in ("evaluate", "class_counts", "gap", "shift", "shift_adapt", "imbalance", "overfit", "misclass",
                 "embedding"):
        assert name in rules, f"rule {name} is not in the DAG of `all`"


# ---------------------------------------------------------------- end to end on tiny data
TINY = {
    "demo": {"enabled": True, "out_dir": "results/demo", "classes": 8, "dim": 16, "train_scale": 0.04,
             "test1_per_class": 20, "test2_per_class": 10, "seed": 0},
    "num_classes": 8,
    "dim": 16,
    "convert": {"parts": {"train": 1, "test1": 1, "test2": 1}},
    "validate": {"expected": {"test1": {"rows": 160, "per_class_min": 20, "per_class_max": 20},
                              "test2": {"rows": 80, "per_class_min": 10, "per_class_max": 10}}},
    "train": {"threads": 1},
    "heads": {"lin": {"type": "linear", "lr": [0.01], "weight_decay": [0.0], "epochs": 2, "batch_size": 64}},
    "baselines": {},
    "evaluate": {"bootstrap": 20},
    "analysis": {"shift": {"domain": {"folds": 3, "bootstrap": 20}}, "shift_adapt": {"bootstrap": 20},
                 "embedding": {"per_set": 40, "tsne_iter": 250, "pca_components": 8}},
}
# A representative subset (each rule kind once; the DAG test above covers the rest of the wiring)
# to keep this end-to-end run short.
MY_TARGETS = (
    [f"results/eval/lin/{t}/metrics.json" for t in ("test1", "test2")]
    + [f"results/analysis/{a}/summary.json" for a in ("shift", "embedding")]
    + [f"results/analysis/{a}/lin/summary.json" for a in ("gap", "overfit")]
    + ["results/analysis/misclass/lin/test2/summary.json"]
)


def test_end_to_end_and_one_parameter_reruns_one_analysis(tmp_path):
    import json
    import os

    import yaml

    exe = shutil.which("snakemake") or str(Path(sys.executable).with_name("snakemake"))
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}

    def run(config, *args):
        (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
        cmd = [exe, "-s", str(ROOT / "Snakefile"), "--directory", str(tmp_path), "--configfile",
               str(tmp_path / "config.yaml"), "--cores", "2", *args, *MY_TARGETS]
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
        assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-5000:]
        return res.stdout + res.stderr

    run(TINY)
    for target in MY_TARGETS:
        data = json.loads((tmp_path / target).read_text())
        assert "meta" in data
        if target.endswith("summary.json"):
            assert data["verdict"] and data["figures"] and data["table"]
            for fig in data["figures"]:
                assert (tmp_path / fig).is_file(), fig  # paths are relative to the workdir
            assert (tmp_path / data["table"]).is_file()
    changed = json.loads(json.dumps(TINY))
    changed["analysis"]["gap"] = {"top_k": 3}
    plan = run(changed, "-n")
    jobs = set(re.findall(r"^rule (\w+):", plan, re.M))
    assert jobs == {"gap"}, jobs
