"""Accuracy on the line: the probit fit over timm's published results reproduces the published
figures, and a head's effective robustness comes with an interval that covers a head on the line."""
from __future__ import annotations

from pathlib import Path

import pytest
from step_layout import outputs_in

from scripts.analysis import reference_line as rl
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


def test_too_few_reference_models_is_an_error(tmp_path):
    from scripts.lib.featio.errors import FeatgapError

    with pytest.raises(FeatgapError, match="need 3"):
        rl.read_pairs(T1, T2, 99.9)
