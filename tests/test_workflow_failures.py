"""Issue 10 through Snakemake: quoted paths, stale shards after fewer parts, a truncated shard
rebuilt on the next run, a CSV edited with its mtime kept, QC as an input of training and
evaluation, head names checked before any job. One data-stage run on tiny data, then dry runs."""
from __future__ import annotations

import copy
import json
import os

import pytest
from workflow_helpers import TINY_CONFIG, planned_jobs, snakemake, write_config

WEIRD = "we ird's (dir) & $(touch PWNED) `touch PWNED2`"
QC = [f"results/qc/{s}.json" for s in ("train", "test1", "test2")] + ["results/qc/cross.json"]


def weird_config(**convert):
    config = copy.deepcopy(TINY_CONFIG)
    out = f"{WEIRD}/demo"
    config["demo"]["out_dir"] = out
    config["data"] = {s: f"{out}/{s}.csv" for s in ("train", "test1", "test2")}
    config["convert"]["parts"].update(convert)
    return config


@pytest.fixture(scope="module")
def done(tmp_path_factory):
    base = tmp_path_factory.mktemp("reliability")
    write_config(base, weird_config())
    snakemake(base, *QC)
    return base


def pwned(base):
    return [p for name in ("PWNED", "PWNED2") for p in (base / name, base / WEIRD / name, base.parent / name)
            if p.exists()]


def test_paths_with_spaces_quotes_and_command_substitution_are_data(done):
    assert not pwned(done)
    assert (done / WEIRD / "demo" / "train.csv").is_file()
    cross = json.loads((done / "results/qc/cross.json").read_text())
    assert cross["violations"] == [] and cross["splits"]["train"]["classes"] == 12


def test_training_and_evaluation_wait_for_qc(tmp_path):
    write_config(tmp_path, TINY_CONFIG)
    train = planned_jobs(tmp_path, "results/heads/linear/model.pt")
    assert train["validate_split"] == 1 and "qc_cross" not in train  # train's QC only: tests never feed training
    evaluate = planned_jobs(tmp_path, "results/eval/linear/test2/metrics.json")
    assert evaluate["validate_split"] == 2 and evaluate["qc_cross"] == 1


def test_primary_head_typo_is_caught_before_any_job(tmp_path):
    write_config(tmp_path, dict(TINY_CONFIG, report={"primary_head": "lineer"}))
    result = snakemake(tmp_path, "-n", check=False)
    assert result.returncode != 0 and "report.primary_head" in result.stdout + result.stderr
    assert "'lineer'" in result.stdout + result.stderr


def test_fewer_parts_leave_no_stale_shard_to_read(done):
    write_config(done, weird_config(train=1))  # was 3; the later tests keep 1
    snakemake(done, *QC)
    assert [p.name for p in (done / "results/parquet/train").glob("part-*.parquet")] == ["part-00000.parquet"]
    manifest = json.loads((done / "results/parquet/train.manifest.json").read_text())
    qc = json.loads((done / "results/qc/train.json").read_text())
    truth = json.loads((done / WEIRD / "demo/truth.json").read_text())
    assert manifest["rows"] == qc["rows"] == sum(truth["train_counts"])


def test_truncated_shard_fails_in_one_line_then_is_rebuilt(done):
    shard = done / "results/parquet/test2/part-00000.parquet"
    shard.write_bytes(shard.read_bytes()[:-300])
    failed = snakemake(done, *QC, check=False)
    assert failed.returncode != 0
    log = (done / "logs/convert/test2.manifest.log").read_text()
    assert "not a complete Parquet shard" in log and "run snakemake again" in log and "Traceback" not in log
    snakemake(done, *QC)  # the next run rebuilds the shard, the manifest and what depends on them
    assert json.loads((done / "results/qc/test2.json").read_text())["rows"] == 120


def test_csv_edited_with_its_mtime_kept_is_converted_again(done):
    config = weird_config(train=1)
    config["demo"] = {"enabled": False}  # the CSVs are now the user's
    write_config(done, config)
    snakemake(done, *QC)
    assert planned_jobs(done, *QC) == {}
    csv = done / WEIRD / "demo/test2.csv"
    stat = csv.stat()
    csv.write_bytes(csv.read_bytes().replace(b"imagenetv2", b"IMAGENETV2", 1))  # same size
    os.utime(csv, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    planned = planned_jobs(done, *QC)
    assert planned["plan_convert"] == 1 and planned["convert_part"] == 1 and planned["qc_cross"] == 1


@pytest.mark.parametrize("section, typo, where, near", [
    ({"analysis": {"gap": {"top_kk": 5}}}, "top_kk", "analysis.gap", "top_k"),
    ({"heads": {"linear": {**TINY_CONFIG["heads"]["linear"], "epoch": 3}}}, "epoch", "heads.linear", "epochs"),
    ({"seeed": 1}, "seeed", "the top level", "seed"),
])
def test_an_unknown_config_key_is_one_short_message(tmp_path, section, typo, where, near):
    """a typo names the key, where it sits and the nearest known key, before any job,
    instead of Snakemake printing the whole schema."""
    config = copy.deepcopy(TINY_CONFIG)
    for key, value in section.items():
        config[key] = {**config.get(key, {}), **value} if isinstance(value, dict) else value
    write_config(tmp_path, config)
    result = snakemake(tmp_path, "-n", check=False)
    text = result.stdout + result.stderr
    assert result.returncode != 0
    assert f"config: unknown key {typo!r} in {where}; did you mean {near!r}?" in text
    assert "additionalProperties" not in text and "description" not in text and len(text.splitlines()) < 15
