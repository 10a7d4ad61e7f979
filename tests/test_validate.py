"""validate: QC record contents, expectations, layout checks, fail vs warn."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from scripts.data.validate import validate_split
from scripts.lib.featio.jsonio import write_json
from scripts.lib.featio.shards import write_shard

ROOT = Path(__file__).resolve().parents[1]


def manifest_of(folder):
    return folder.parent / f"{folder.name}.manifest.json"


def test_qc_record_of_a_clean_split(tiny_parquet):
    qc, problems = validate_split(tiny_parquet["test2"], "test2", num_classes=12,
                                  expected={"rows": 120, "per_class_min": 10, "per_class_max": 10})
    assert problems == []
    assert qc["rows"] == 120 and qc["dim"] == 32 and qc["classes_present"] == 12
    assert qc["per_class_min"] == qc["per_class_max"] == 10
    assert qc["nonfinite_values"] == 0 and qc["duplicate_paths"] == 0
    assert qc["layout_checks"]["numeric_folder_rows"] == 120
    assert qc["layout_checks"]["numeric_folder_label_mismatches"] == 0
    assert qc["layout_checks"]["folders_with_several_labels"] == 0


def test_train_counts_match_truth(tiny_parquet):
    qc, _ = validate_split(tiny_parquet["train"], "train", num_classes=12)
    assert qc["per_class_counts"] == tiny_parquet["truth"]["train_counts"]


def test_expectation_violations_are_reported(tiny_parquet):
    _, problems = validate_split(tiny_parquet["test1"], "test1", num_classes=12,
                                 expected={"rows": 50000, "per_class_min": 50, "per_class_max": 50})
    assert any("240 rows, expected 50000" in p for p in problems)
    assert any("expected at least 50" in p for p in problems)


def fake_split(tmp_path, paths, labels):
    folder = tmp_path / "test2"
    n = len(labels)
    write_shard(folder / "part-00000.parquet", row=np.arange(n), path_col=paths, label=np.array(labels),
                features=np.ones((n, 4), np.float32))
    write_json(manifest_of(folder), {"folder": folder.name, "dim": 4, "source": "fake.csv", "source_fingerprint": {}})
    return manifest_of(folder)


def test_layout_catches_v2_folder_label_mismatch_and_duplicates(tmp_path):
    base = "imagenetv2-matched-frequency-format-val"
    manifest = fake_split(tmp_path, [f"{base}/0/a.jpeg", f"{base}/1/b.jpeg", f"{base}/1/b.jpeg"], [0, 2, 1])
    qc, problems = validate_split(manifest, "test2", num_classes=3)
    assert qc["layout_checks"]["numeric_folder_label_mismatches"] == 1
    assert any("numeric folder differs from the label" in p and "label 2" in p for p in problems)
    assert any("occur more than once" in p for p in problems)


def test_layout_catches_wnid_folder_with_two_labels(tmp_path):
    manifest = fake_split(tmp_path, ["val/n01/a.JPEG", "val/n01/b.JPEG", "val/n02/c.JPEG"], [0, 1, 1])
    _, problems = validate_split(manifest, "test1", num_classes=3)
    assert any("more than one label" in p for p in problems)


@pytest.mark.parametrize("mode,code", [("fail", 1), ("warn", 0)])
def test_fail_or_warn(tiny_parquet, tmp_path, mode, code):
    out = tmp_path / "qc.json"
    result = subprocess.run(
        [sys.executable, "-m", "scripts.data.validate", "--manifest", str(tiny_parquet["test1"]),
         "--split", "test1", "--out", str(out), "--num-classes", "12", "--expected", json.dumps({"rows": 7}),
         "--on-violation", mode], cwd=ROOT, capture_output=True, text=True, check=False)
    assert result.returncode == code, result.stderr
    assert "240 rows, expected 7" in result.stderr and "Traceback" not in result.stderr
    assert out.exists() == (mode == "warn")
