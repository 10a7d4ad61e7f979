"""Workflow wiring of evaluate + analyses: only they read the test splits; every output is a target.
(The end-to-end run and its rerun checks are in tests/test_reruns.py.)"""
from __future__ import annotations

import importlib
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
READS_TESTS = {"evaluate", "shift", "mean_shift", "misclass", "embedding", "class_counts", "validate_split",
               "qc_cross",  # labels and paths only: cross-split QC (classes, leakage), an input of evaluate
               "difficulty",  # typicality of test images against the train class means
               "decomposition",  # reverts test-2 features mechanism by mechanism and re-applies the head
               "improve_compare",  # the improve stage scores its variants on the test splits
               "report"}  # report: the manifests' row counts (metadata) only, never the shards


def _snakemake(*args: str, target: str = "") -> str:
    exe = shutil.which("snakemake") or str(Path(sys.executable).with_name("snakemake"))
    if not Path(exe).exists():
        pytest.skip("snakemake not installed")
    # The target goes first: --quiet and --configfile take every word after them.
    res = subprocess.run([exe, *([target] if target else []), *args, "--cores", "1", "--quiet", "all"], cwd=ROOT,
                         check=False, capture_output=True, text=True, timeout=120)
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
    for name in ("evaluate", "class_counts", "gap", "shift", "mean_shift", "imbalance", "overfit", "misclass",
                 "embedding"):
        assert name in rules, f"rule {name} is not in the DAG of `all`"


# Every analysis rule in the DAG, real_labels and reference_line included (off in the demo config).
ALL_ANALYSES = """
evaluate:
  real_labels: {file: resources/real-labels/real.json, test: test1}
analysis:
  reference_line:
    test1_table: resources/timm-results/results-imagenet.csv
    test2_table: resources/timm-results/results-imagenetv2-matched-frequency.csv
"""


def declared_outputs(module: str) -> dict[str, str] | None:
    """What a step declares it writes: `OUTPUTS` of its module (scripts.analysis.gap); None for a
    step without the interface (class_counts, convert, …)."""
    return getattr(importlib.import_module(module), "OUTPUTS", None)


@pytest.fixture(scope="module")
def analysis_jobs(tmp_path_factory):
    """(step, {output name: path}, the job's outputs) of every analysis step's job."""
    overlay = tmp_path_factory.mktemp("config") / "all_analyses.yaml"
    overlay.write_text(ALL_ANALYSES)
    exe = shutil.which("snakemake") or str(Path(sys.executable).with_name("snakemake"))
    if not Path(exe).exists():
        pytest.skip("snakemake not installed")
    res = subprocess.run([exe, "-n", "-p", "--forceall", "--cores", "1", "--configfile", str(overlay), "--", "all"],
                         cwd=ROOT, check=False, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-3000:]
    jobs = []
    for block in re.findall(r"^rule \w+:\n(.*?^Shell command: .*?)$", res.stdout, re.M | re.S):
        command = block.split("Shell command: ", 1)[1]
        args = shlex.split(command.split(" > ")[0])
        if "-m" not in args:
            continue
        module = args[args.index("-m") + 1]
        after = args[args.index("-m") + 2]
        step = module.rsplit(".", 1)[1] + ("" if after.startswith("--") else f" {after}")
        if declared_outputs(module) is None:
            continue
        assert "--out-dir" not in args, command
        named = dict(args[i + 1].split("=", 1) for i, a in enumerate(args) if a == "--output")
        outputs = re.search(r"^\s+output: (.*)$", block, re.M).group(1).split(", ")
        jobs.append((step, module, named, outputs))
    return jobs


def test_rules_pass_exactly_their_outputs_under_the_names_steps_declare(analysis_jobs):
    """Rule outputs == what the step is told to write (the step writes exactly those: test_step_outputs),
    under the names and formats the step declares; tests/step_layout.py matches the rules."""
    from step_layout import LAYOUT

    seen = set()
    for step, module, named, outputs in analysis_jobs:
        seen.add(step)
        assert sorted(named.values()) == sorted(outputs), step
        assert {name: Path(path).suffix for name, path in named.items()} == declared_outputs(module), step
        if step in LAYOUT:
            assert {name: Path(path).name for name, path in named.items()} == LAYOUT[step], step
    assert set(LAYOUT) <= seen, f"tests/step_layout.py names steps no rule runs: {sorted(set(LAYOUT) - seen)}"
    assert {"gap", "shift", "mean_shift", "misclass_compare", "reference_line", "real_labels"} <= seen


def _parents_of(out: str, rule: str) -> set[str]:
    """Rules of the jobs whose outputs `rule`'s jobs read, from a --dag listing."""
    nodes = {i: label.split("\\n")[0] for i, label in re.findall(r'^\s*(\d+)\[label = "([^"]*)"', out, re.M)}
    return {nodes[a] for a, b in re.findall(r"^\s*(\d+) -> (\d+)", out, re.M) if nodes[b] == rule}


def test_reference_line_feeds_improve_compare_only_when_configured(tmp_path):
    """On (a reference table configured): the fit is an input of improve_compare and of nothing that
    trains; off (the demo config): no such rule, and improve_compare does not wait for it."""
    timm = ROOT / "resources" / "timm-results"
    on = tmp_path / "on.yaml"
    on.write_text(f"analysis:\n  reference_line:\n    test1_table: {timm / 'results-imagenet.csv'}\n"
                  f"    test2_table: {timm / 'results-imagenetv2-matched-frequency.csv'}\n")
    with_line = _snakemake("--dag", "--forceall", "--configfile", str(ROOT / "config/config.yaml"), str(on),
                           target="improve_compare")
    assert "reference_line" in _parents_of(with_line, "improve_compare")
    assert "reference_line" not in _parents_of(with_line, "improve_train")
    without = _snakemake("--dag", "--forceall", target="improve_compare")
    assert "reference_line" not in _parents_of(without, "improve_compare")
    assert "reference_line" not in without


def test_a_switched_off_analysis_leaves_the_report(tmp_path):
    """`analysis.gap.enabled: false`: no gap job, and the report is not handed a gap summary."""
    off = tmp_path / "off.yaml"
    off.write_text("analysis:\n  gap:\n    enabled: false\n")
    printed = _dry_run(ROOT, "--configfile", str(ROOT / "config/config.yaml"), str(off))
    assert "rule gap:" not in printed and "--input gap:" not in printed
    assert "--input imbalance:linear=" in printed  # the others still are


def _dry_run(where: Path, *args: str) -> str:
    """`snakemake report -n -p` from scratch: every job with its inputs and its shell command."""
    exe = shutil.which("snakemake") or str(Path(sys.executable).with_name("snakemake"))
    res = subprocess.run([exe, "report", "-n", "-p", "--forceall", "--cores", "1", *args], cwd=where,
                         capture_output=True, text=True, timeout=300, check=False)
    assert res.returncode == 0, res.stderr[-3000:]
    return (res.stdout + res.stderr).replace("'", "")


NEW_RULE = '''

rule newcause:
    input:
        predictions1=eval_file("{head}", "test1", "predictions.parquet"),
        predictions2=eval_file("{head}", "test2", "predictions.parquet"),
        code=code("analysis.newcause"),
    output:
        **reported(analysis_dir("newcause", "{head}"), "newcause", "10. New cause", "{head}",
                   table="table.csv", summary="summary.json", figure="figure.png"),
    log:
        "logs/analysis/newcause.{head}.log",
    params:
        outputs=output_args,
        options=analysis_options("newcause"),
    shell:
        "python -m scripts.analysis.newcause --predictions1 {input.predictions1:q} --predictions2 {input.predictions2:q}"
        " {params.outputs} --options {params.options} > {log:q} 2>&1"


if analysis_on("newcause"):
    ALL_TARGETS.extend(targets(rules.newcause, head=HEADS))
    for_report("newcause", rules.newcause.output.summary, head=HEADS)
'''


def test_a_new_analysis_is_a_rule_block_a_step_and_a_schema_section(tmp_path):
    """docs/architecture.md "Adding an analysis", done in a copy of the project: the rule block in
    analysis.smk, the step module, its schema section (the fourth file is its test). Nothing else
    is edited, and the new analysis runs for every head, with its step's code as an input, and
    reaches the report under its own name."""
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    copy = tmp_path / "project"
    for name in files:
        if (ROOT / name).is_file():
            (copy / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, copy / name)
    with (copy / "workflow/rules/analysis.smk").open("a") as handle:
        handle.write(NEW_RULE)
    (copy / "scripts/analysis/newcause.py").write_text(
        '"""A new analysis."""\nfrom scripts.lib.analysis.step import analysis_cli, begin\n\n'
        'OUTPUTS = {"table": ".csv", "summary": ".json", "figure": ".png"}\n')
    schema = (copy / "workflow/schemas/config.schema.yaml").read_text()
    anchor = "      gap:\n"
    assert anchor in schema
    schema = schema.replace(anchor, "      newcause:\n        type: object\n        additionalProperties: false\n"
                            "        properties:\n          enabled: {type: boolean, default: true}\n"
                            "          threshold: {type: number, default: 0.5}\n        default: {}\n" + anchor, 1)
    (copy / "workflow/schemas/config.schema.yaml").write_text(schema)
    printed = _dry_run(copy)
    for head in ("linear", "mlp", "sgd", "logreg"):
        assert f"--input newcause:{head}=results/analysis/newcause/{head}/summary.json" in printed
    assert '--options {"threshold": 0.5}' in printed  # its schema default, without `enabled`
    assert "scripts/analysis/newcause.py" in printed and "scripts/lib/analysis/step.py" in printed  # code inputs from its imports
