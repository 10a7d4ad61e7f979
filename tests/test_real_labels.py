"""ImageNet ReaL labels (scripts/analysis/real_labels.py, evaluate's `real` block, label_noise's ReaL bound).

A 12-image val split with real-style file names, numbered out of row order (matching must go by
file name), and a ReaL file written for it; every count below is computed by hand in the table.

 row  file   label pred conf   ReaL   category
  0   val 7    0    0   .95   [0]     correct
  1   val 3    0    1   .90   [1]     in_real   (confident)
  2   val 11   0    2   .85   [0]     genuine   (confident)
  3   val 1    0    1   .50   []      no_label
  4   val 12   1    1   .99   [1,3]   correct
  5   val 5    1    3   .92   [1,3]   in_real   (confident; the label is in the set too)
  6   val 2    1    1   .60   [3]     correct by the original label, not by ReaL
  7   val 9    1    0   .40   [1]     genuine
  8   val 4    2    2   .97   [2]     correct
  9   val 10   2    0   .30   [0,2]   in_real
 10   val 6    2    2   .70   []      correct, no valid label
 11   val 8    2    3   .45   [2]     genuine
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from step_layout import output_argv, outputs_in

from scripts.analysis.label_noise import label_noise
from scripts.analysis.real_labels import load_real, main, match_paths, real_check, rescore, score
from scripts.evaluate.evaluate import evaluate
from scripts.lib.featio.cli import run_cli
from scripts.lib.featio.errors import FeatgapError
from scripts.lib.featio.jsonio import write_json
from scripts.lib.featio.shards import write_shard

NUMBERS = [7, 3, 11, 1, 12, 5, 2, 9, 4, 10, 6, 8]
LABEL = [0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2]
PRED = [0, 1, 2, 1, 1, 3, 1, 0, 2, 0, 2, 3]
CONF = [.95, .90, .85, .50, .99, .92, .60, .40, .97, .30, .70, .45]
REAL_BY_ROW = [[0], [1], [0], [], [1, 3], [1, 3], [3], [1], [2], [0, 2], [], [2]]
NAMES = ["tench", "goldfish", "great white shark", "tiger shark"]
PATHS = [f"val/n0{LABEL[i]}/ILSVRC2012_val_{n:08d}.JPEG" for i, n in enumerate(NUMBERS)]


def _real_json(path: Path) -> Path:
    entries = [None] * len(NUMBERS)
    for number, labels in zip(NUMBERS, REAL_BY_ROW):
        entries[number - 1] = labels
    path.write_text(json.dumps(entries))
    return path


@pytest.fixture
def val(tmp_path) -> dict:
    real = _real_json(tmp_path / "real.json")
    pred = tmp_path / "eval" / "linear" / "test1" / "predictions.parquet"
    pred.parent.mkdir(parents=True)
    pd.DataFrame({"row": np.arange(12), "path": PATHS, "label": np.int16(LABEL), "pred": np.int16(PRED),
                  "confidence": np.float32(CONF), "correct": np.equal(LABEL, PRED)}).to_parquet(pred)
    names = tmp_path / "names.txt"
    names.write_text("\n".join(NAMES) + "\n")
    return {"real": real, "pred": pred, "names": names, "root": tmp_path}


def test_matching_by_file_name_not_row_order(val):
    real = load_real(val["real"], 4, entries=12)
    assert len(real) == 12 and real.set_of(4) == [1, 3] and real.set_of(0) == []
    np.testing.assert_array_equal(match_paths(PATHS, real, source="val.csv"), np.subtract(NUMBERS, 1))
    s = score(PATHS, np.array(LABEL), np.array(PRED), real, source="val.csv")
    assert s.n_real.tolist() == [len(r) for r in REAL_BY_ROW]
    assert s.pred_in_real.tolist() == [p in r for p, r in zip(PRED, REAL_BY_ROW)]
    # The real file's own loader agrees with the copied file's documented counts.
    shipped = load_real(Path(__file__).resolve().parents[1] / "resources/real-labels/real.json", 1000,
                        entries=50000)
    sizes = np.diff(shipped.offsets)
    assert (len(shipped), int((sizes > 1).sum()), int((sizes == 0).sum())) == (50000, 7443, 3163)


def test_rescore_counts_by_hand(val):
    real = load_real(val["real"], 4, entries=12)
    block = rescore(paths=PATHS, label=np.array(LABEL), pred=np.array(PRED), real=real, source="val.csv",
                    test="test1", n_resamples=200, seed=0)
    assert (block["n_images"], block["n_with_real"], block["n_no_label"]) == (12, 10, 2)
    assert block["top1"] == pytest.approx(6 / 10) and block["top1_original"] == pytest.approx(4 / 10)
    assert block["difference"] == pytest.approx(0.2)
    assert block["errors"] == {"errors": 7, "in_real": 3, "no_label": 1, "genuine": 3,
                               "correct_but_label_not_in_real": 1, "correct_no_label": 1}
    for key in ("top1", "top1_original", "difference"):
        lo, hi = block["ci95"][key]
        assert lo <= block[key] <= hi and hi > lo
    assert block["unit"].startswith("images, resampled within")


def test_real_check_split_enrichment_and_calibration(val):
    out = val["root"] / "check"
    summary = real_check(predictions=val["pred"], real_file=val["real"], outputs=outputs_in(out, "real_labels"),
                         num_classes=4, threshold=0.8, source="data/val.csv", class_names=str(val["names"]),
                         options={"bootstrap": 100}, head_name="linear", real_entries=12)
    split = summary["error_split"]
    assert (split["errors"], split["in_real"], split["no_label"], split["genuine"]) == (7, 3, 1, 3)
    e = summary["enrichment"]
    # Confident disagreements: rows 1, 2, 5 (2 in ReaL); other errors: rows 3, 7, 9, 11 (1 in ReaL).
    assert (e["confident_errors"], e["other_errors"]) == (3, 4)
    assert e["share_in_real_confident"] == pytest.approx(2 / 3) and e["share_in_real_other"] == pytest.approx(1 / 4)
    assert e["ratio"] == pytest.approx(8 / 3) and e["difference_points"] == pytest.approx(100 * (2 / 3 - 1 / 4))
    c = summary["calibration"]
    assert c["confident_disagreements"] == 3 and c["confident_disagreement_points"] == pytest.approx(25.0)
    # Calibration predicts Σ(1 − conf) over the confident rows 0, 1, 2, 4, 5, 8 = 0.42 disagreements.
    assert c["calibration_excess_points"] == pytest.approx(100 * (3 - 0.42) / 12)
    assert c["label_noise_points"] == pytest.approx(100 * 2 / 12)
    assert c["label_noise_share_of_confident_disagreements"] == pytest.approx(2 / 3)
    errors = pd.read_csv(out / "errors.csv", keep_default_na=False)
    assert errors["category"].tolist() == ["in_real"] * 3 + ["no_label"] + ["genuine"] * 3
    first = errors.iloc[0]  # in_real, most confident: row 5
    assert (first["row"], first["path"], first["label_name"], first["pred_name"], first["real"],
            first["real_names"]) == (5, PATHS[5], "goldfish", "tiger shark", "1 3", "goldfish; tiger shark")
    rows = pd.read_parquet(out / "rows.parquet")
    assert rows["category"].tolist()[:4] == ["correct", "in_real", "genuine", "no_label"]
    assert (out / "real_errors.png").stat().st_size > 1000
    assert "enrichment ×2.67" in summary["verdict"] and "67% of the confident disagreements" in summary["verdict"]
    assert summary["numbers"]["examples_genuine"][0]["row"] == 2


def test_label_noise_is_bounded_by_real(val, tmp_path):
    real_check(head_name="linear",
               predictions=val["pred"], real_file=val["real"], outputs=outputs_in(tmp_path / "check", "real_labels"),
               num_classes=4, threshold=0.8, options={"bootstrap": 50}, real_entries=12)
    p2 = tmp_path / "eval" / "linear" / "test2" / "predictions.parquet"
    p2.parent.mkdir(parents=True)
    label2, pred2 = [0, 0, 1, 1, 2, 2], [1, 0, 2, 1, 0, 2]
    pd.DataFrame({"row": np.arange(6), "path": [f"v2/{i}.jpeg" for i in range(6)], "label": label2, "pred": pred2,
                  "confidence": [.9, .95, .99, .5, .85, .3], "correct": np.equal(label2, pred2)}).to_parquet(p2)
    plain = label_noise(predictions1=val["pred"], predictions2=p2, outputs=outputs_in(tmp_path / "plain", "label_noise"),
                        options={"bootstrap": 50}, head_name="linear")
    bounded = label_noise(predictions1=val["pred"], predictions2=p2, outputs=outputs_in(tmp_path / "bounded", "label_noise"),
                          options={"bootstrap": 50}, head_name="linear", real_rows=tmp_path / "check" / "rows.parquet")
    # Calibration share: test-2 excess 100·(3 − 0.31)/6 minus test-1 excess 100·(3 − 0.42)/12.
    share = 100 * (3 - 0.31) / 6 - 100 * (3 - 0.42) / 12
    assert plain["reading"]["points"] == pytest.approx(share)
    # ReaL: 2/3 of test 1's confident disagreements are label noise; D2 − D1 = 50 − 25 points.
    bound = 2 / 3 * (50 - 25)
    n = bounded["numbers"]
    assert n["real_bound_points"] == pytest.approx(bound) and n["real_calibration_share_points"] == pytest.approx(share)
    block = bounded["reading"]
    assert block["points"] == pytest.approx(min(share, bound)) and block["real_labels"] is True
    lo, hi = block["ci95"]
    assert lo <= bound <= hi and "ReaL" in block["sentence"]


def test_evaluate_writes_the_real_block(val, tmp_path):
    """evaluate on shards with val file names: metrics.json's `real` block, by file name."""
    folder = tmp_path / "shards" / "test1"
    features = np.eye(4, dtype=np.float32)[PRED] * 5
    write_shard(folder / "part-00000.parquet", row=np.arange(12), path_col=PATHS, label=np.array(LABEL),
                features=features)
    manifest = tmp_path / "shards" / "test1.manifest.json"
    write_json(manifest, {"folder": "test1", "rows": 12, "dim": 4, "split": "test1", "source": "data/val.csv"})
    metrics = evaluate(head_name="linear",
                       head_path="unused", manifest=manifest, outputs=outputs_in(tmp_path / "out", "evaluate"), num_classes=4,
                       options={"bootstrap": 50}, logits_fn=lambda x: x.astype(np.float64), real_labels=val["real"],
                       real_entries=12, test_name="test1")
    real = metrics["real"]
    assert real["top1"] == pytest.approx(0.6) and real["errors"]["in_real"] == 3 and real["n_with_real"] == 10
    assert json.loads((tmp_path / "out" / "metrics.json").read_text())["real"]["top1"] == pytest.approx(0.6)
    # A CSV whose paths do not map: one line naming the CSV (from the manifest), line and column.
    bad = PATHS[:5] + ["val/n01/photo.jpg"] + PATHS[6:]
    write_shard(folder / "part-00000.parquet", row=np.arange(12), path_col=bad, label=np.array(LABEL),
                features=features)
    with pytest.raises(FeatgapError, match=r"^data/val\.csv: line 7, column 'path': 'val/n01/photo\.jpg' is not an "
                                           r"ImageNet val file name"):
        evaluate(head_name="linear",
                 head_path="unused", manifest=manifest, outputs=outputs_in(tmp_path / "out2", "evaluate"), num_classes=4,
                 options={"bootstrap": 0}, logits_fn=lambda x: x.astype(np.float64), real_labels=val["real"],
                 real_entries=12)


@pytest.mark.parametrize("text, message", [
    ("", r"line 1, column 1: expected '\['"),
    ('[[0], [1,]]', r"line 1, column 10: Expecting value; expected entry 1 \(ILSVRC2012_val_00000002\.JPEG\)"),
    ('[\n  [0],\n  "x"\n]', r"line 3, column 3: entry 1 \(ILSVRC2012_val_00000002\.JPEG\) is str"),
    ("[[0], [9]]", r"line 1, column 7: entry 1 .* holds 9; expected class indices in 0\.\.3"),
    ("[[0], [true]]", r"holds True"),
    ("[[0, 0]]", r"repeats a class"),
    ("[[0]] x", r"line 1, column 7: text after the JSON list"),
    ("[[0], [1]", r"does not close"),
    ("[[0],]", r"trailing comma"),
    ("[]", r"an empty list"),
])
def test_malformed_real_file_is_one_line(tmp_path, text, message):
    path = tmp_path / "real.json"
    path.write_text(text)
    with pytest.raises(FeatgapError, match=message) as err:
        load_real(path, 4, entries=2)
    assert str(err.value).startswith(f"{path}: ") and "\n" not in str(err.value)


def test_paths_that_do_not_map_are_one_line(val):
    real = load_real(val["real"], 4, entries=12)
    with pytest.raises(FeatgapError, match=r"^val\.csv: line 3, column 'path': ILSVRC2012_val_00000013 is image 13; "
                                           r"expected 1\.\.12"):
        match_paths(PATHS[:1] + ["val/x/ILSVRC2012_val_00000013.JPEG"] + PATHS[2:], real, source="val.csv")
    with pytest.raises(FeatgapError, match=r"line 4, column 'path': ILSVRC2012_val_00000007 appears again "
                                           r"\(first on line 2\)"):
        match_paths(PATHS[:2] + [PATHS[0]] + PATHS[3:], real, source="val.csv")
    # Labels in another class order: the original labels almost never fall in their ReaL sets.
    with pytest.raises(FeatgapError, match=r"original label is in the ReaL set of only 10\.0%.*do not map onto"):
        score(PATHS, (np.array(LABEL) + 1) % 4, np.array(PRED), real, source="val.csv")
    with pytest.raises(FeatgapError, match="not found"):
        load_real(val["root"] / "nope.json", 4, entries=12)


def test_cli(val, capsys):
    main(["--predictions", str(val["pred"]), "--real", str(val["real"]), *output_argv(val["root"] / "cli", "real_labels"),
          "--num-classes", "4", "--threshold", "0.8", "--options", '{"bootstrap": 30}', "--class-names", "",
          "--real-entries", "12", "--head-name", "linear"])
    assert "prediction in the ReaL set" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_:
        run_cli(main, ["--predictions", str(val["pred"]), "--real", str(val["root"] / "nope.json"),
                       *output_argv(val["root"] / "cli2", "real_labels"), "--num-classes", "4", "--threshold", "0.8",
                       "--head-name", "linear"])
    assert exit_.value.code == 1 and "nope.json: ReaL labels file not found" in capsys.readouterr().err


def _tiny_real(path: Path, classes: int = 12, per_class: int = 20) -> Path:
    """A ReaL file for the tiny demo's test set 1 (val numbers 1.. in class order): mostly the
    label, some with a second class, some with none, some with another class only."""
    entries = []
    for n in range(1, classes * per_class + 1):
        label = (n - 1) // per_class
        entries.append([] if n % 11 == 0 else [(label + 1) % classes] if n % 13 == 0 else
                       [label, (label + 1) % classes] if n % 7 == 0 else [label])
    path.write_text(json.dumps(entries))
    return path


def test_workflow_wires_real_labels(tmp_path):
    """Through Snakemake: evaluate re-scores test set 1 only, real_labels runs, label_noise is bounded;
    a missing file stops before any job, naming the config key."""
    from workflow_helpers import TINY_CONFIG, snakemake, write_config

    config = {**TINY_CONFIG, "heads": {"linear": TINY_CONFIG["heads"]["linear"]}, "baselines": {},
              "improve": {"enabled": False},
              "evaluate": {**TINY_CONFIG["evaluate"], "real_labels": {"file": str(tmp_path / "missing.json")}}}
    write_config(tmp_path, config)
    result = snakemake(tmp_path, "-n", check=False)
    assert result.returncode != 0 and "evaluate.real_labels.file: file not found" in result.stdout + result.stderr
    config["evaluate"]["real_labels"].update(file=str(_tiny_real(tmp_path / "real.json")), entries=240)
    write_config(tmp_path, config)
    snakemake(tmp_path, "results/analysis/label_noise/linear/summary.json")
    m1 = json.loads((tmp_path / "results/eval/linear/test1/metrics.json").read_text())
    m2 = json.loads((tmp_path / "results/eval/linear/test2/metrics.json").read_text())
    assert "real" not in m2 and m1["real"]["n_with_real"] == 240 - 240 // 11
    pred = pd.read_parquet(tmp_path / "results/eval/linear/test1/predictions.parquet")
    numbers = pred["path"].str.extract(r"ILSVRC2012_val_(\d{8})")[0].astype(int).to_numpy()
    entries = json.loads((tmp_path / "real.json").read_text())
    hits = [p in entries[n - 1] for n, p in zip(numbers, pred["pred"]) if entries[n - 1]]
    assert m1["real"]["top1"] == pytest.approx(np.mean(hits))
    noise = json.loads((tmp_path / "results/analysis/label_noise/linear/summary.json").read_text())
    assert noise["reading"]["real_labels"] is True and "ReaL" in noise["reading"]["sentence"]
    check = json.loads((tmp_path / "results/analysis/real_labels/linear/summary.json").read_text())
    assert check["error_split"]["errors"] == int((pred["label"] != pred["pred"]).sum())


def test_enrichment_without_other_errors_in_real_reports_the_difference():
    from scripts.analysis.real_labels import _sentence, enrichment

    e = enrichment(np.array([1, 1, 0, 0], bool), np.array([1, 0, 0, 0], bool), np.ones(4, bool),
                   np.array([0, 1, 0, 1]), n_boot=50, seed=0)
    assert e["ratio"] is None and e["difference_points"] == pytest.approx(50.0)
    split = {"errors": 4, "in_real": 1, "no_label": 0, "genuine": 3}
    calibration = {"threshold": 0.8, "label_noise_share_of_confident_disagreements": 0.5, "label_noise_points": 25.0,
                   "calibration_excess_points": 10.0}
    text = _sentence(split, 4, e, calibration, "test1")
    assert "50% of the time against 0% for the other errors: +50.0 points (95% interval" in text


def test_real_file_of_another_length_is_refused(val, tmp_path):
    """One inserted (or deleted) entry shifts every later set: refused by its length, not accepted."""
    entries = json.loads(val["real"].read_text())
    assert len(load_real(val["real"], 4, entries=12)) == 12
    for name, changed in (("inserted", entries[:5] + [[]] + entries[5:]), ("deleted", entries[:5] + entries[6:])):
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(changed))
        with pytest.raises(FeatgapError, match=rf"^{path}: {len(changed)} entries; expected 12 "
                                               r"\(one per ImageNet val image, config evaluate\.real_labels\.entries\)"):
            load_real(path, 4, entries=12)


def test_agreement_floor_refuses_a_partly_wrong_mapping(val):
    """60 % of the original labels in their ReaL sets (real.json: ~87 %) is a mapping wrong for a third
    of the images: refused (the old floor, 50 %, let it through)."""
    real = load_real(val["real"], 4, entries=12)
    label = np.array(LABEL)
    label[[0, 2]] = 1  # rows 0 and 2: ReaL set [0]; 8 → 6 of the 10 images with a set agree
    with pytest.raises(FeatgapError, match=r"only 60\.0% of the 10 images with one; expected ≥ 75%"):
        score(PATHS, label, np.array(PRED), real, source="val.csv")


@pytest.mark.parametrize("text, message", [
    ("[[" + "1" * 5000 + "]]", (r"line 1, column 2: an integer of 5000 digits; expected entry 0 \(ILSVRC2012_val_"
                                r"00000001\.JPEG\) as a list of class indices")),
    ("[" + "[" * 100_000 + "]" * 100_001, r"line 1, column 2: lists nested too deeply; expected entry 0 "),
])
def test_huge_integer_and_deep_nesting_are_one_line(tmp_path, text, message):
    path = tmp_path / "real.json"
    path.write_text(text)
    with pytest.raises(FeatgapError, match=message) as err:
        load_real(path, 4, entries=1)
    assert str(err.value).startswith(f"{path}: ") and "\n" not in str(err.value) and err.value.__cause__ is None


def test_unicode_digits_are_not_a_val_file_name(val):
    real = load_real(val["real"], 4, entries=12)
    arabic = "ILSVRC2012_val_" + "".join(chr(0x660 + int(d)) for d in "00000007") + ".JPEG"
    with pytest.raises(FeatgapError, match=r"line 2, column 'path': .* is not an ImageNet val file name"):
        match_paths([f"val/n00/{arabic}"] + PATHS[1:], real, source="val.csv")


def test_a_utf8_bom_is_accepted(val, tmp_path):
    path = tmp_path / "bom.json"
    path.write_bytes(b"\xef\xbb\xbf" + val["real"].read_bytes())
    assert load_real(path, 4, entries=12).set_of(4) == [1, 3]
