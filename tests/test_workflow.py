"""The workflow end to end through Snakemake, in a temporary directory, on tiny generated data."""
import json

import pytest
from workflow_helpers import TINY_CONFIG, snakemake, write_config

DATA_TARGETS = [f"results/qc/{split}.json" for split in ("train", "test1", "test2")]


@pytest.fixture
def workdir(tmp_path):
    write_config(tmp_path, TINY_CONFIG)
    return tmp_path


def test_data_stage_runs_and_second_run_does_nothing(workdir):
    snakemake(workdir, *DATA_TARGETS)
    for split in ("train", "test1", "test2"):
        qc = json.loads((workdir / f"results/qc/{split}.json").read_text())
        assert qc["violations"] == [] and qc["dim"] == 32
        manifest = json.loads((workdir / f"results/parquet/{split}.manifest.json").read_text())
        assert manifest["rows"] == qc["rows"]
    assert len(list((workdir / "results/parquet/train").glob("part-*.parquet"))) == 3
    assert (workdir / "logs/convert/train.00000.log").exists()
    dry = snakemake(workdir, "-n", *DATA_TARGETS)
    assert "Nothing to be done" in dry.stdout + dry.stderr


def test_bad_config_key_is_rejected_before_any_job(workdir):
    config = dict(TINY_CONFIG, convert={"parts": {"train": 1, "test1": 1, "test2": 1}, "chunk_megabytes": 4})
    write_config(workdir, config)
    result = snakemake(workdir, *DATA_TARGETS, check=False)
    assert result.returncode != 0
    assert "chunk_megabytes" in result.stdout + result.stderr
    assert not (workdir / "results").exists()


def test_missing_input_file_names_the_config_key(workdir):
    config = dict(TINY_CONFIG, demo={"enabled": False},
                  data={"train": "nope/train.csv", "test1": "nope/t1.csv", "test2": "nope/t2.csv"})
    write_config(workdir, config)
    result = snakemake(workdir, "-n", check=False)
    assert result.returncode != 0
    assert "data.train" in result.stdout + result.stderr and "nope/train.csv" in result.stdout + result.stderr


def test_bad_csv_fails_the_convert_job_with_the_line(workdir):
    data = workdir / "data"
    from scripts.data.generate_demo import DemoSpec, generate

    generate(data, DemoSpec(classes=12, dim=32, train_scale=0.05, test1_per_class=20, test2_per_class=10))
    lines = (data / "test2.csv").read_text().splitlines(keepends=True)
    lines[5] = "x" + lines[5]  # line 6: the index column is no longer an integer
    (data / "test2.csv").write_text("".join(lines))
    config = dict(TINY_CONFIG, demo={"enabled": False},
                  data={s: str(data / f"{s}.csv") for s in ("train", "test1", "test2")})
    write_config(workdir, config)
    result = snakemake(workdir, "results/parquet/test2.manifest.json", check=False)
    assert result.returncode != 0
    log = (workdir / "logs/convert/test2.00000.log").read_text()
    assert "line 6" in log and "expected an integer" in log and "Traceback" not in log
    assert not (workdir / "results/parquet/test2/part-00000.parquet").exists()


def test_default_config_runs_with_dim_16_one_head_and_no_baselines(tmp_path):
    """a user who changes only the data's width and the heads never edits the improve
    stage: pca_whiten is sized relative to dim, the ensemble is built from the heads that exist
    (left out, with a line in the log and the report, when fewer than two do)."""
    config = {**TINY_CONFIG, "demo": {**TINY_CONFIG["demo"], "dim": 16}, "dim": 16,
              "heads": {"linear": TINY_CONFIG["heads"]["linear"], "mlp": None},
              "baselines": {"sgd": None, "logreg": None},
              "improve": {"bootstrap": 50}}  # the default variants
    write_config(tmp_path, config)
    result = snakemake(tmp_path)
    assert "improve.variants: ensemble left out" in result.stdout + result.stderr
    summary = json.loads((tmp_path / "results/improve/summary.json").read_text())
    variants = {v["name"]: v for v in summary["variants"]}
    assert variants["pca_whiten"]["changes"] == {"pca_whiten": 12}  # three quarters of 16
    assert "ensemble" not in variants and "ensemble" in summary["left_out"]
    assert "ensemble" in summary["verdict"]
    assert (tmp_path / "results/report/index.html").is_file()
