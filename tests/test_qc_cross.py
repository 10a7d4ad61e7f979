"""Issue 10, item 6: splits are checked against each other (results/qc/cross.json) and train's QC
refuses a single class; training and evaluation take these QC files as inputs (test_workflow_failures)."""
import json

import numpy as np
import pytest

from scripts.data.qc_cross import cross_check
from scripts.data.qc_cross import main as cross_main
from scripts.data.validate import main as validate_main
from scripts.data.validate import validate_split
from scripts.lib.featio.cli import run_cli
from scripts.lib.featio.errors import FeatgapError
from scripts.lib.featio.jsonio import write_json
from scripts.lib.featio.shards import write_shard


def manifest_of(folder):
    return folder.parent / f"{folder.name}.manifest.json"


def fake(root, split, paths, labels):
    folder = root / split
    n = len(labels)
    write_shard(folder / "part-00000.parquet", row=np.arange(n), path_col=paths, label=np.array(labels),
                features=np.ones((n, 4), np.float32))
    write_json(manifest_of(folder), {"folder": folder.name, "dim": 4, "rows": n, "source": f"{split}.csv",
                                     "source_fingerprint": {}})
    return manifest_of(folder)


def fake_splits(root, train=None, test1=None, test2=None):
    train = train or ([f"train/c{i % 3}/{i}.JPEG" for i in range(9)], [i % 3 for i in range(9)])
    test1 = test1 or ([f"val/c{i % 3}/{i}.JPEG" for i in range(6)], [i % 3 for i in range(6)])
    test2 = test2 or ([f"v2/{i % 3}/{i}.jpeg" for i in range(3)], [0, 1, 2])
    return {split: fake(root, split, *data) for split, data in (("train", train), ("test1", test1), ("test2", test2))}


def test_clean_splits_fit_together(tiny_parquet):
    record, problems = cross_check({s: tiny_parquet[s] for s in ("train", "test1", "test2")})
    assert problems == [] and record["splits"]["test2"] == {"rows": 120, "classes": 12, "dim": 32}
    assert record["shared_paths"]["train&test1"]["count"] == 0


def test_test_class_without_training_rows(tmp_path):
    manifests = fake_splits(tmp_path, train=([f"train/{i}.JPEG" for i in range(6)], [0, 1] * 3))
    record, problems = cross_check(manifests)
    assert record["test_classes_without_train_rows"] == {"test1": [2], "test2": [2]}
    assert any(p.startswith("test1: 1 classes have no training rows (e.g. labels [2])") for p in problems)


def test_test_rows_that_are_train_rows_are_leakage(tmp_path):
    leaked = (["train/c0/0.JPEG", "train/c1/1.JPEG", "val/x.JPEG"], [0, 1, 2])
    record, problems = cross_check(fake_splits(tmp_path, test2=leaked))
    assert record["shared_paths"]["train&test2"] == {"count": 2, "examples": ["train/c0/0.JPEG", "train/c1/1.JPEG"]}
    assert any("2 paths occur in both train and test2 (leakage" in p for p in problems)


def test_files_without_paths_are_not_leakage(tmp_path):
    blank = ([""] * 6, [0, 1, 2] * 2)
    _, problems = cross_check(fake_splits(tmp_path, train=([""] * 9, [0, 1, 2] * 3), test1=blank))
    assert problems == []


def test_train_with_one_class_fails_its_qc(tmp_path):
    manifests = fake_splits(tmp_path, train=([f"train/c0/{i}.JPEG" for i in range(5)], [0] * 5))
    _, problems = validate_split(manifests["train"], "train", num_classes=3)
    assert any("training a classifier needs at least 2" in p for p in problems)
    # Even with on_violation: warn (LogisticRegression would stop with a traceback otherwise).
    argv = ["--manifest", str(manifests["train"]), "--split", "train", "--out", str(tmp_path / "qc.json"),
            "--num-classes", "3", "--on-violation", "warn", "--layout", "none"]
    with pytest.raises(FeatgapError, match=r"needs at least 2 .*does not waive"):
        validate_main(argv)
    assert not (tmp_path / "qc.json").exists()


@pytest.mark.parametrize("mode,code", [("fail", 1), ("warn", 0)])
def test_cli_fails_in_one_line_or_warns(tmp_path, capsys, mode, code):
    manifests = fake_splits(tmp_path, test1=(["train/c0/0.JPEG"], [0]))
    out = tmp_path / "cross.json"
    argv = [f"--{s}={m}" for s, m in manifests.items()] + ["--out", str(out), "--on-violation", mode]
    with pytest.raises(SystemExit) as caught:
        run_cli(cross_main, argv)
        raise SystemExit(0)
    assert caught.value.code == code
    err = capsys.readouterr().err
    assert "1 paths occur in both train and test1" in err and "Traceback" not in err
    assert out.exists() == (mode == "warn")
    if mode == "warn":
        assert json.loads(out.read_text())["violations"]
