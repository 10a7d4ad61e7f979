"""The step interface: a step writes exactly the output paths the rule gives it (`--output NAME=PATH`)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from scripts.analysis.imbalance import imbalance
from scripts.analysis.imbalance import main as imbalance_main
from scripts.lib.featio.cli import run_cli
from scripts.lib.featio.errors import FeatgapError
from scripts.lib.step_outputs import output_paths, parse_outputs

DECLARED = {"table": ".csv", "summary": ".json", "figure": ".png"}


def _imbalance_inputs(root):
    """class_counts.csv and two metrics.json with 40 classes (the shapes evaluate and class_counts write)."""
    root.mkdir()
    rng = np.random.default_rng(1)
    c = 40
    pd.DataFrame({"class": np.arange(c), "name": [f"c{i}" for i in range(c)], "train_rows": rng.integers(50, 500, c),
                  "test1_rows": 50, "test2_rows": 10}).to_csv(root / "counts.csv", index=False)
    for split, n in (("test1", 50), ("test2", 10)):
        k = rng.binomial(n, 0.8, c)
        (root / f"{split}.json").write_text(json.dumps({"per_class": {
            "class": list(range(c)), "n": [n] * c, "correct": k.tolist(), "accuracy": (k / n).tolist(),
            "mean_p_label": (k / n).tolist()}}))
    return {"class_counts": root / "counts.csv", "metrics1": root / "test1.json", "metrics2": root / "test2.json"}


def _files(root):
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


def test_step_writes_exactly_the_paths_it_is_given(tmp_path):
    inputs = _imbalance_inputs(tmp_path / "in")
    out = tmp_path / "out"
    # Unusual names and folders that no step could guess: one folder per output, odd file names.
    outputs = {"table": out / "t" / "drop by count.csv", "summary": out / "deep" / "er" / "s=1.json",
               "figure": out / "f" / "fig.v2.png"}
    summary = imbalance(**inputs, outputs=outputs, head_name="linear", options={"permutations": 99})
    assert _files(out) == {"t/drop by count.csv", "deep/er/s=1.json", "f/fig.v2.png"}  # nothing else, no temporaries
    assert summary["table"] == str(outputs["table"]) and summary["figures"] == [str(outputs["figure"])]
    assert json.loads(outputs["summary"].read_text())["verdict"] == summary["verdict"]
    assert _files(tmp_path / "in") == {"counts.csv", "test1.json", "test2.json"}  # nothing beside the inputs


def test_cli_outputs_reach_the_step(tmp_path, capsys):
    inputs = _imbalance_inputs(tmp_path / "in")
    argv = [f"--{key.replace('_', '-')}={path}" for key, path in inputs.items()] + ["--head-name=linear"]
    argv += ["--output", f"table={tmp_path}/a/x.csv", "--output", f"summary={tmp_path}/b/y.json",
             "--output", f"figure={tmp_path}/c/z.png", "--options", '{"permutations": 99}']
    run_cli(imbalance_main, argv)
    assert _files(tmp_path) == {"in/counts.csv", "in/test1.json", "in/test2.json", "a/x.csv", "b/y.json", "c/z.png"}
    # A missing output is one line naming it, before any work (nothing written).
    with pytest.raises(SystemExit) as exit_:
        run_cli(imbalance_main, [*argv[:4], "--output", f"table={tmp_path}/d/x.csv"])
    err = capsys.readouterr().err.strip()
    assert exit_.value.code == 1 and "\n" not in err and "missing summary, figure" in err
    assert not (tmp_path / "d").exists()


def test_parse_outputs():
    assert parse_outputs(["a=x/y.csv", "b=p=q.json"]) == {"a": Path("x/y.csv"), "b": Path("p=q.json")}
    for bad in (["a"], ["=x.csv"], ["a="]):
        with pytest.raises(FeatgapError, match="expected NAME=PATH"):
            parse_outputs(bad)
    with pytest.raises(FeatgapError, match="given twice"):
        parse_outputs(["a=x.csv", "a=y.csv"])


def test_output_paths_checks_names_and_formats():
    ok = {"table": "t.csv", "summary": "s.json", "figure": "f.png"}
    assert list(output_paths(ok, DECLARED, "step")) == ["table", "summary", "figure"]
    with pytest.raises(FeatgapError, match=r"step: .*missing figure; unknown extra"):
        output_paths({"table": "t.csv", "summary": "s.json", "extra": "e.png"}, DECLARED, "step")
    with pytest.raises(FeatgapError, match=r"--output figure=f\.svg: expected a \.png file"):
        output_paths({**ok, "figure": "f.svg"}, DECLARED, "step")
