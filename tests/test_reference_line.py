"""Accuracy on the line: the probit fit over timm's published results reproduces the published
figures, and a head's effective robustness comes with an interval that covers a head on the line."""
from __future__ import annotations

from pathlib import Path

import pytest
from step_layout import outputs_in

from scripts.analysis import reference_line as rl
from scripts.lib.analysis import probit_line
from scripts.lib.featio.jsonio import write_json

TIMM = Path(__file__).resolve().parents[1] / "resources" / "timm-results"
T1, T2 = TIMM / "results-imagenet.csv", TIMM / "results-imagenetv2-matched-frequency.csv"


def test_fit_reproduces_the_published_line():
    line = rl.fit_line(rl.read_pairs(T1, T2, 80.0))
    assert line["models"] == 1040  # matched on (model, img_size): some models are listed at several sizes
    assert line["slope"] == pytest.approx(1.008, abs=0.001)
    assert line["intercept"] == pytest.approx(-0.366, abs=0.001)
    assert line["residual_sd_points"] == pytest.approx(0.48, abs=0.02)
    assert rl.expected_test2(line, 90.06) == pytest.approx(82.36, abs=0.01)


def _metrics(path: Path, top1: float, half: float) -> Path:
    write_json(path, {"metrics": {"top1": top1}, "ci95": {"top1": [top1 - half, top1 + half]}})
    return path


def test_effective_robustness_of_heads(tmp_path):
    # EVA-02-L's own head (90.06 → 82.71): on the line within its interval.
    on = (_metrics(tmp_path / "a1.json", 0.9006, 0.0026), _metrics(tmp_path / "a2.json", 0.8271, 0.0074))
    # A head 5 points below the line.
    below = (_metrics(tmp_path / "b1.json", 0.9006, 0.0026), _metrics(tmp_path / "b2.json", 0.7736, 0.0082))
    summary = rl.reference_line(test1_table=T1, test2_table=T2, heads={"own": on, "worse": below},
                                outputs=outputs_in(tmp_path / "out", "reference_line"))
    own, worse = summary["heads"]["own"], summary["heads"]["worse"]
    assert own["expected_test2_top1"] == pytest.approx(82.36, abs=0.01)
    assert own["ci95"][0] < 0 < own["ci95"][1] and own["effective_robustness"] == pytest.approx(0.35, abs=0.01)
    assert worse["ci95"][1] < 0 and worse["effective_robustness"] == pytest.approx(-5.0, abs=0.01)
    assert (tmp_path / "out" / "line.png").stat().st_size > 0
    assert "1040 reference models" in summary["verdict"]
    # The prediction interval adds the reference models' scatter near 90% (79 models within ±3 points).
    assert own["local_scatter"]["models"] == 79 and own["local_scatter"]["sd_points"] == pytest.approx(0.60, abs=0.01)
    lo, hi = own["prediction_interval"]
    assert lo < own["ci95"][0] and hi > own["ci95"][1] and lo < 0 < hi
    assert worse["prediction_interval"][1] < 0 and "off the line" in summary["verdict"]
    # The expected test-2 top-1 for other inclusion thresholds, beside the chosen one (80%).
    expected = {row["min_test1_top1"]: row["expected_test2_top1"] for row in own["thresholds"]}
    assert sorted(expected) == [70, 75, 80, 85]
    assert expected[80] == pytest.approx(82.36, abs=0.01) and 82.1 < expected[70] < expected[85] < 82.7


def test_the_prediction_interval_flags_about_five_percent_of_the_reference_models():
    """The rule applied to every reference model, judged against the others: about 5% flagged in
    every band of test-1 top-1 (the top band has 37 models: 3 flagged). Adding each model's own
    image-sampling error to its interval (measured on the same images as the others) is too wide."""
    pairs = rl.read_pairs(T1, T2, 80.0)
    line = rl.fit_line(pairs)
    bands = {row["band"]: row for row in probit_line.calibration(pairs, line, 3.0, 50000, 10000)}
    assert 0.035 <= bands["all"]["flagged"] <= 0.075
    for name, row in bands.items():
        assert row["flagged"] <= 0.09, (name, row)
        assert row["flagged"] >= 0.03 or row["models"] < 50, (name, row)
    x = pairs["top1_test1"].to_numpy(float)
    too_wide = [probit_line.prediction_interval(probit_line.effective_robustness(line, v, w, 0.13, 0.38),
                                       probit_line.local_scatter(pairs, line, v, 3.0, exclude=i)["sd_points"], same_images=False)
                for i, (v, w) in enumerate(zip(x, pairs["top1_test2"].to_numpy(float)))]
    assert sum(lo > 0 or hi < 0 for lo, hi in too_wide) / len(x) < 0.03


def test_too_few_reference_models_is_an_error(tmp_path):
    from scripts.lib.featio.errors import FeatgapError

    with pytest.raises(FeatgapError, match="need 3"):
        rl.read_pairs(T1, T2, 99.9)
