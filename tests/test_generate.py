"""The demo generator writes the real schema: header, class order, counts, paths, float32 text."""
import re

import numpy as np
import polars as pl

from scripts.data.generate_demo import DemoSpec, train_counts


def test_header_and_schema(tiny_csv):
    header = tiny_csv["train"].open().readline().rstrip("\n")
    dim = tiny_csv["truth"]["spec"]["dim"]
    assert header == ",path,label," + ",".join(str(i) for i in range(dim))


def test_rows_sorted_by_class_and_index_rises(tiny_csv):
    frame = pl.read_csv(tiny_csv["train"], columns=["", "label"])
    labels = frame["label"].to_numpy()
    assert (np.diff(labels) >= 0).all()
    assert (frame[""].to_numpy() == np.arange(len(frame))).all()
    assert np.bincount(labels).tolist() == tiny_csv["truth"]["train_counts"]


def test_balanced_tests_and_real_looking_paths(tiny_csv):
    spec = tiny_csv["truth"]["spec"]
    t1 = pl.read_csv(tiny_csv["test1"], columns=["path", "label"])
    t2 = pl.read_csv(tiny_csv["test2"], columns=["path", "label"])
    assert set(np.bincount(t1["label"].to_numpy())) == {spec["test1_per_class"]}
    assert set(np.bincount(t2["label"].to_numpy())) == {spec["test2_per_class"]}
    assert re.fullmatch(r"val/n\d{8}/ILSVRC2012_val_\d{8}\.JPEG", t1["path"][0])
    first = t2.row(0, named=True)
    assert re.fullmatch(rf"imagenetv2-matched-frequency-format-val/{first['label']}/[0-9a-f]{{40}}\.jpeg", first["path"])
    train_path = pl.read_csv(tiny_csv["train"], columns=["path"], n_rows=1)["path"][0]
    assert re.fullmatch(r"train/(n\d{8})/\1_1\.JPEG", train_path)


def test_floats_are_float32_text_with_nonzero_feature_means(tiny_csv):
    line = tiny_csv["test1"].open().readlines()[1].rstrip("\n").split(",")
    for text in line[3:]:
        value = np.float32(text)
        assert repr(float(value)) == text or str(value) == text or np.float32(float(text)) == value
    features = pl.read_csv(tiny_csv["train"]).select(pl.exclude("", "path", "label")).to_numpy()
    # LayerNorm with affine offset: per-feature means are clearly not all zero.
    assert np.abs(features.mean(axis=0)).max() > 0.2


def test_train_counts_follow_imagenet_and_exact_total():
    rng = np.random.default_rng(0)
    counts = train_counts(DemoSpec(classes=1000, train_scale=1.0), rng)
    assert counts.min() >= 732 and counts.max() == 1300
    exact = train_counts(DemoSpec(classes=1000, train_scale=1.0, train_rows=1_281_167), np.random.default_rng(0))
    assert exact.sum() == 1_281_167 and exact.min() >= 732 and exact.max() == 1300
