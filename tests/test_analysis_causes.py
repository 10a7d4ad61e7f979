"""difficulty and label_noise as the rules run them: from shards and evaluate's predictions."""
from __future__ import annotations

import json

import numpy as np
from analysis_fixtures import planted, planted_eval  # noqa: F401 - fixtures
from step_layout import outputs_in

from scripts.analysis.difficulty import difficulty
from scripts.analysis.label_noise import label_noise
from scripts.analysis.train_reference import train_reference
from scripts.lib.featio.reader import read_split


def test_train_reference_matches_the_matrix(planted, tmp_path):
    info = train_reference(planted["train"], planted["spec"].classes, tmp_path / "ref.npz")
    ref = np.load(tmp_path / "ref.npz")
    split = read_split(planted["train"], columns=("label",))
    x, y = split.features.astype(np.float64), split.label.astype(np.int64)
    assert info["rows"] == len(y)
    np.testing.assert_allclose(ref["class_means"][3], x[y == 3].mean(axis=0), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ref["std"], x.std(axis=0), rtol=1e-4)


def test_difficulty_and_label_noise_write_their_readings(planted, planted_eval, tmp_path):
    train_reference(planted["train"], planted["spec"].classes, tmp_path / "ref.npz")
    p1, p2 = planted_eval["test1"] / "predictions.parquet", planted_eval["test2"] / "predictions.parquet"
    d = difficulty(reference=tmp_path / "ref.npz", test1=planted["test1"], test2=planted["test2"], predictions1=p1,
                   predictions2=p2, outputs=outputs_in(tmp_path / "d", "difficulty"), options={"bootstrap": 50},
                   head_name="linear")
    n = label_noise(predictions1=p1, predictions2=p2, outputs=outputs_in(tmp_path / "n", "label_noise"),
                    options={"bootstrap": 50}, head_name="linear")
    for summary, name in ((d, "difficulty"), (n, "confident_disagreements")):
        block = json.loads(json.dumps(summary))["reading"]
        assert block["name"] == name and block["unit"] == "classes resampled" and "evidence" not in summary
        lo, hi = block["ci95"]
        assert lo <= block["points"] <= hi
    # The fixture's test set 2 is noisier (test2_noise): its images are less typical.
    assert d["numbers"]["median_distance_test2"] > d["numbers"]["median_distance_test1"]
    assert (tmp_path / "n" / "disagreements.csv").is_file() and (tmp_path / "d" / "typicality.png").is_file()
