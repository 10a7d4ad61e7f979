"""Reruns do only what changed, and an interrupted run completes to the same outputs.

The workflow is copied into a temporary directory so that its code and template can be edited
there; every test reads the dry-run job list (`snakemake -n`) of a finished tiny run.
"""
from __future__ import annotations

import copy
import filecmp
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
from workflow_helpers import ROOT, TINY_CONFIG, command, environment, planned_jobs, snakemake, write_config

WORKFLOW_FILES = ["Snakefile", "workflow", "scripts", "config", "profiles", "envs", "resources"]
HEADS = ["linear", "mlp", "sgd", "logreg"]


def copy_workflow(dest: Path) -> Path:
    for name in WORKFLOW_FILES:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
        elif source.exists():
            shutil.copy2(source, dest / name)
    return dest


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A copy of the workflow and a finished tiny run of it."""
    base = tmp_path_factory.mktemp("reruns")
    copy_workflow(base)
    write_config(base, TINY_CONFIG)
    snakemake(base)
    return base


def jobs(base: Path, config: dict | None = None) -> dict[str, int]:
    if config is not None:
        write_config(base, config)
    try:
        return planned_jobs(base)
    finally:
        write_config(base, TINY_CONFIG)


def test_second_run_does_nothing(finished):
    assert jobs(finished) == {}


def test_every_analysis_summary_is_complete(finished):
    summaries = sorted((finished / "results/analysis").rglob("summary.json"))
    assert len(summaries) >= 1 + 2 * len(HEADS) + 3 * len(HEADS)  # shift, embedding; per head and test
    for path in summaries:
        data = json.loads(path.read_text())
        assert data["verdict"] and data["figures"] and "meta" in data, path
        for figure in data["figures"]:
            assert (finished / figure).is_file(), figure  # paths are relative to the working directory
        assert (finished / data["table"]).is_file(), path
    for head in HEADS:
        for test in ("test1", "test2"):
            metrics = json.loads((finished / f"results/eval/{head}/{test}/metrics.json").read_text())
            assert 0 < metrics["metrics"]["top1"] <= 1 and "ci95" in metrics and "meta" in metrics


def test_analysis_parameter_reruns_only_that_analysis_and_the_report(finished):
    config = copy.deepcopy(TINY_CONFIG)
    config["analysis"]["gap"] = {"top_k": 5}
    assert jobs(finished, config) == {"gap": len(HEADS), "report": 1}


def test_head_hyperparameter_reruns_that_head_only(finished):
    config = copy.deepcopy(TINY_CONFIG)
    config["heads"]["linear"]["epochs"] = 5
    planned = jobs(finished, config)
    assert planned["train_head"] == 1 and planned["report"] == 1
    assert planned["evaluate"] == 2  # linear on test1 and test2, not the other heads
    for per_head in ("gap", "imbalance", "overfit", "mean_shift"):
        assert planned[per_head] == 1
    assert planned["misclass"] == 2
    for untouched in ("generate_demo", "plan_convert", "convert_part", "manifest", "validate_split",
                      "train_baseline", "shift", "class_counts"):
        assert untouched not in planned


def test_editing_step_code_reruns_that_step_and_dependents(finished):
    module = finished / "scripts" / "analysis" / "gap.py"
    original = module.read_text()
    try:
        module.write_text(original + "\n# an edit\n")
        assert jobs(finished) == {"gap": len(HEADS), "report": 1}
    finally:
        module.write_text(original)
        snakemake(finished, "--touch")


def test_editing_a_helper_reruns_exactly_its_importers(finished):
    """lib/stats/clustered is imported by gap and misclass only (code inputs come from the imports)."""
    module = finished / "scripts" / "lib" / "stats" / "clustered.py"
    original = module.read_text()
    try:
        module.write_text(original + "\n# an edit\n")
        # misclass_compare reads misclass's tables: an unchanged table (same bytes) still has a new mtime
        assert jobs(finished) == {"gap": len(HEADS), "misclass": 2 * len(HEADS), "misclass_compare": len(HEADS),
                                  "report": 1}
    finally:
        module.write_text(original)
        snakemake(finished, "--touch")


def test_an_analysis_switched_off_leaves_the_report_inputs(finished):
    """analysis.gap.enabled: false: no gap job, and only the report (which omits gap) reruns."""
    config = copy.deepcopy(TINY_CONFIG)
    config["analysis"]["gap"] = {**config["analysis"].get("gap", {}), "enabled": False}
    assert jobs(finished, config) == {"report": 1}


@pytest.mark.parametrize("name, edit", [("report.html", ("</body>", "<!-- edited --></body>")),
                                        ("report.md", ("## Models", "## Models {# edited #}"))])
def test_editing_only_a_report_template_reruns_only_the_report(finished, name, edit):
    template = finished / "scripts" / "report" / "templates" / name
    original = template.read_text()
    try:
        template.write_text(original.replace(*edit))
        assert jobs(finished) == {"report": 1}
    finally:
        template.write_text(original)
        snakemake(finished, "--touch")


# ---------------------------------------------------------------- interruption
def run_and_kill(base: Path, targets: list[str], started) -> bool:
    """Start snakemake, SIGKILL its whole process group once `started()` is true; True if killed mid-step."""
    proc = subprocess.Popen(command(base, *targets), env=environment(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 300
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            if started():
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                return True
            time.sleep(0.002)
        return False
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


def slow_config() -> dict:
    config = copy.deepcopy(TINY_CONFIG)
    # Bigger train file, 1 MB chunks and more epochs: the steps we kill run for a few seconds.
    config["demo"].update(classes=20, dim=256, train_scale=0.1)
    config.update(num_classes=20, dim=256)
    config["convert"].update(parts={"train": 1, "test1": 1, "test2": 1}, chunk_mb=1)
    config["validate"]["expected"] = {}
    config["heads"] = {"linear": dict(TINY_CONFIG["heads"]["linear"], epochs=40)}
    config["baselines"] = {}
    return config


TARGETS = ["results/parquet/train.manifest.json", "results/heads/linear/model.pt"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    base = tmp_path_factory.mktemp("uninterrupted")
    copy_workflow(base)
    write_config(base, slow_config())
    snakemake(base, *TARGETS)
    return base


def same_outputs(a: Path, b: Path) -> None:
    shards = sorted(p.name for p in (a / "results/parquet/train").glob("part-*.parquet"))
    assert shards and shards == sorted(p.name for p in (b / "results/parquet/train").glob("part-*.parquet"))
    for name in shards:
        assert filecmp.cmp(a / "results/parquet/train" / name, b / "results/parquet/train" / name, shallow=False)
    assert filecmp.cmp(a / "results/heads/linear/model.pt", b / "results/heads/linear/model.pt", shallow=False)


@pytest.mark.parametrize("stage", ["convert", "train"])
def test_sigkill_then_rerun_gives_identical_outputs(uninterrupted, tmp_path, stage):
    copy_workflow(tmp_path)
    write_config(tmp_path, slow_config())
    if stage == "convert":
        folder = tmp_path / "results/parquet/train"
        started = lambda: folder.exists() and any(p.name.startswith(".part-") for p in folder.iterdir())
    else:
        log = tmp_path / "logs/train/linear.log"
        started = lambda: log.exists() and "epoch" in log.read_text(errors="replace")
    assert run_and_kill(tmp_path, TARGETS, started), f"the workflow finished before {stage} could be killed"
    assert not (tmp_path / "results/heads/linear/model.pt").exists()
    # What a user does after a crash: release Snakemake's lock, then finish the incomplete jobs.
    snakemake(tmp_path, "--unlock")
    snakemake(tmp_path, "--rerun-incomplete", *TARGETS)
    same_outputs(uninterrupted, tmp_path)


def test_snakemake_report_zip(finished, tmp_path):
    snakemake(finished, "--report", str(tmp_path / "report.zip"))
    import zipfile

    with zipfile.ZipFile(tmp_path / "report.zip") as archive:
        names = archive.namelist()
    assert any(name.endswith("report.html") for name in names)
    assert any(name.endswith("volcano.png") for name in names)
