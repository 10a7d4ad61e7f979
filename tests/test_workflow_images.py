"""The image route end to end through Snakemake, on generated images (ImageNet train / val and
ImageNetV2 layouts, 64 px) and a random-weights timm model: train and test set 1 from CSVs in the
seed schema (extracted beforehand, paths relative to images.root), test set 2 from its image
folder; the report shows the pictures, names escaped, within the page budget."""
from __future__ import annotations

import json
import re

import pytest
from workflow_helpers import TINY_CONFIG, snakemake, write_config

torch = pytest.importorskip("torch")
from scripts.lib.images.tv_compat import import_timm  # noqa: E402

try:
    import_timm()
except ImportError:
    pytest.skip("timm is not installed", allow_module_level=True)

import image_fixtures as images  # noqa: E402

MODEL = {"model": "test_vit", "pretrained": False, "img_size": 64, "threads": 1}  # 64 features
OFF = ("shift", "mean_shift", "imbalance", "overfit", "misclass", "misclass_compare", "difficulty", "embedding")


def _csv_split(root, folder, out):
    """A split extracted by the library and written as a seed-schema CSV (what a user brings)."""
    from scripts.data import extract
    from scripts.lib.images.seed_csv import split_to_csv

    work = out.parent / f"{out.stem}-work"
    extract.plan(str(root / folder), str(work / "plan.json"), options=MODEL, parts=1)
    extract.part(str(work / "plan.json"), 0, str(work / "s" / "part-00000.parquet"), options=MODEL, progress=False)
    extract.manifest(str(work / "plan.json"), [str(work / "s" / "part-00000.parquet")], str(work / "m.manifest.json"),
                     options=MODEL)
    split_to_csv(work / "m.manifest.json", out)


def test_test2_from_images_beside_csv_splits_with_pictures_in_the_report(tmp_path):
    root = tmp_path / "images"
    images.make_train(root, classes=12, per_class=12)
    images.make_val(root, classes=12, per_class=6)
    images.make_v2(root, classes=12, per_class=4)
    # Two test-2 images whose picture is another class's: mislabelled, for the label-noise panel.
    for k, (shown, folder) in enumerate([(5, "2"), (9, "7")]):
        images.save(images.image(777 + k, shown, 64), root / images.V2_FOLDER / folder / f"ffff{k}.jpeg")
    data = tmp_path / "data"
    data.mkdir()
    _csv_split(root, "train", data / "train.csv")
    _csv_split(root, "val", data / "test1.csv")
    names = tmp_path / "names.txt"  # names that are markup: the report must show them as text
    names.write_text("".join(f'<b>class {k}</b> & "{k}"\n' for k in range(12)))
    config = {
        **TINY_CONFIG,
        "demo": {"enabled": False},
        "data": {"train": str(data / "train.csv"), "test1": str(data / "test1.csv"),
                 "test2": {"images": str(root / images.V2_FOLDER)}},
        "dim": 64,
        "convert": {"parts": {"train": 1, "test1": 1, "test2": 1}},
        "extract": {**MODEL, "parts": {"test2": 2}, "csv": True},
        "images": {"root": str(root), "classes": 3, "per_class": 2},
        "validate": {"expected": {"test1": {"rows": 72, "per_class_min": 6, "per_class_max": 6},
                                 "test2": {"rows": 50, "per_class_min": 4, "per_class_max": 5}}},
        "evaluate": {"bootstrap": 50, "class_names": str(names)},
        # Only what the pictures read (gap's ranking, label_noise's suspects), with few resamples.
        "analysis": {**{name: {"enabled": False} for name in OFF},
                     "gap": {"permutations": 99, "bootstrap": 100, "null_reps": 50, "share_reps": 20},
                     "label_noise": {"bootstrap": 20}},
        "heads": {"linear": TINY_CONFIG["heads"]["linear"], "mlp": None},  # null drops a default head
        "baselines": {"sgd": None, "logreg": None},
        "improve": {"enabled": False},
    }
    write_config(tmp_path, config)
    snakemake(tmp_path)
    manifest = json.loads((tmp_path / "results/parquet/test2.manifest.json").read_text())
    assert manifest["rows"] == 50 and manifest["dim"] == 64 and len(manifest["shards"]) == 2
    assert (tmp_path / "logs/extract/test2.00001.log").is_file()
    assert (tmp_path / "results/extract/test2.csv").read_text().startswith(",path,label,0,1,")
    pictures = json.loads((tmp_path / "results/report/pictures.json").read_text())
    assert len(pictures["panels"]) == 3 and pictures["missing"] == 0
    assert all(len(p["pictures"][t]) == 2 for p in pictures["panels"] for t in ("test1", "test2"))
    page = (tmp_path / "results/report/index.html").read_text()
    assert len(page.encode()) < 5_000_000
    assert page.count('src="data:image/jpeg;base64,') == pictures["images"] >= 12
    assert "<b>class" not in page and "&lt;b&gt;class" in page  # escaped, never markup
    assert re.search(r"(✓ correct|✗ )", page)
    md = (tmp_path / "results/report/report.md").read_text()
    assert "Pictures of the most-dropped classes" in md and "base64" not in md
    # A corrupt JPEG: the part job stops with one line naming it; with on_bad_image: skip it is counted.
    bad = images.corrupt_jpeg(root / images.V2_FOLDER / "5" / "0000bad.jpeg")
    result = snakemake(tmp_path, "results/parquet/test2.manifest.json", check=False)
    log = (tmp_path / "logs/extract/test2.00000.log").read_text()
    assert result.returncode != 0 and f"featgap error: {bad}: unreadable image" in log and "Traceback" not in log
    write_config(tmp_path, {**config, "extract": {**config["extract"], "on_bad_image": "skip"}})
    snakemake(tmp_path, "results/parquet/test2.manifest.json")
    manifest = json.loads((tmp_path / "results/parquet/test2.manifest.json").read_text())
    assert manifest["rows"] == 50 and manifest["images_skipped"] == 1
    assert manifest["images_skipped_paths"] == [f"{images.V2_FOLDER}/5/0000bad.jpeg"]
    # The dim check comes before any job, in one line.
    write_config(tmp_path, {**config, "dim": 65})
    result = snakemake(tmp_path, "-n", check=False)
    assert result.returncode != 0
    assert "config key dim: 65, but extract.model test_vit gives 64 features" in result.stdout + result.stderr


def test_class_map_train_plans_a_test_split_after_train_and_demo_with_images_is_refused(tmp_path):
    images.make_v2(tmp_path, classes=2, per_class=1)
    for split in ("train", "test1"):
        (tmp_path / f"{split}.csv").write_text(",path,label,0\n")  # only has to exist for a dry run
    config = {**TINY_CONFIG, "demo": {"enabled": False}, "dim": 64,
              "data": {"train": str(tmp_path / "train.csv"), "test1": str(tmp_path / "test1.csv"),
                       "test2": {"images": str(tmp_path / images.V2_FOLDER)}},
              "extract": {**MODEL, "class_map": "train"}}
    write_config(tmp_path, config)
    result = snakemake(tmp_path, "-n", "-p", "results/parquet/test2.plan.json")
    out = result.stdout + result.stderr
    assert "plan_convert" in out and "python -m scripts.data.extract plan" in out
    assert "--class-map-split results/parquet/train.manifest.json" in out
    write_config(tmp_path, {**config, "demo": {**TINY_CONFIG["demo"], "enabled": True}})
    result = snakemake(tmp_path, "-n", check=False)
    assert result.returncode != 0 and "data.test2 is an image folder" in result.stdout + result.stderr
