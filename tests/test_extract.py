"""The extract stage's libraries and step on generated images (ImageNet train / val and ImageNetV2
layouts, 64 px) with a random-weights timm model (test_vit at 64 px): no network."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

torch = pytest.importorskip("torch")
from scripts.lib.images.tv_compat import import_timm  # noqa: E402  (not importorskip: see tv_compat)

try:
    import_timm()
except ImportError:
    pytest.skip("timm is not installed", allow_module_level=True)

import image_fixtures as images  # noqa: E402

from scripts.lib.featio.errors import FeatgapError  # noqa: E402
from scripts.lib.images.extraction import extract_part  # noqa: E402
from scripts.lib.images.folders import class_index_map, list_images, part_bounds, write_class_map  # noqa: E402
from scripts.lib.images.model import ModelSpec, build_model, check_dim  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SPEC = ModelSpec("test_vit", pretrained=False, img_size=64)  # random weights, 64 px: small and fast


@pytest.fixture(scope="module")
def image_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("images")
    images.make_train(root)
    images.make_val(root)
    images.make_v2(root)
    return root


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def _read(path):
    t = pq.read_table(path)
    return (t.column("row").to_pylist(), t.column("path").to_pylist(), t.column("label").to_pylist(),
            np.asarray(t.column("features").combine_chunks().flatten()).reshape(t.num_rows, -1))


# ---------------------------------------------------------------- folders and labels
def test_numeric_folders_are_their_numbers_in_natural_order(image_root):
    listing = list_images(image_root / images.V2_FOLDER)
    folders = [p.split("/")[1] for p in listing.paths]
    assert list(dict.fromkeys(folders)) == [str(i) for i in range(12)]  # 10, 11 after 9, never after 1
    assert listing.labels == [int(f) for f in folders]
    assert all(p.startswith(images.V2_FOLDER + "/") for p in listing.paths)
    ds = import_timm().data.ImageDataset(str(image_root / images.V2_FOLDER))  # timm's own reader agrees
    assert [ds.filename(i) for i in range(len(ds))] == [p.split("/", 1)[1] for p in listing.paths]
    assert [t for _, t in ds.reader.samples] == listing.labels


def test_missing_numeric_folder_keeps_class_ids_and_files_sort_naturally(image_root, tmp_path):
    shutil.copytree(image_root / images.V2_FOLDER, tmp_path / "v2")
    shutil.rmtree(tmp_path / "v2" / "3")
    assert sorted(set(list_images(tmp_path / "v2").labels)) == [0, 1, 2, *range(4, 12)]  # timm would renumber
    for name in ["n01440764_100.JPEG", "n01440764_99.JPEG", "n01440764_9.JPEG"]:
        images.save(images.image(1, 0, 32), tmp_path / "train" / "n01440764" / name)
    assert [p.rsplit("/", 1)[1] for p in list_images(tmp_path / "train").paths] == [
        "n01440764_9.JPEG", "n01440764_99.JPEG", "n01440764_100.JPEG"]


def test_class_map_aligns_a_test_set_with_train(image_root, tmp_path):
    train_map = class_index_map(image_root / "train")
    assert train_map == {s: i for i, s in enumerate(images.SYNSETS[:3])}
    shutil.copytree(image_root / "val", tmp_path / "val")
    shutil.rmtree(tmp_path / "val" / images.SYNSETS[0])  # lacks class 0: its own order would start at 0
    assert set(list_images(tmp_path / "val").labels) == {0, 1}
    assert set(list_images(tmp_path / "val", class_map=train_map).labels) == {1, 2}
    write_class_map(train_map, tmp_path / "classes.txt")  # timm's class-map file format
    assert set(list_images(tmp_path / "val", class_map=tmp_path / "classes.txt").labels) == {1, 2}
    with pytest.raises(FeatgapError, match=r"class folder 'n01484850' is not in the class map") as err:
        list_images(image_root / "val", class_map={images.SYNSETS[0]: 0, images.SYNSETS[1]: 1})
    assert "\n" not in str(err.value)


def test_empty_folder_loose_image_and_parts(tmp_path):
    (tmp_path / "empty" / "a").mkdir(parents=True)
    with pytest.raises(FeatgapError, match="no image files"):
        list_images(tmp_path / "empty")
    images.save(images.image(1, 0, 32), tmp_path / "loose" / "x.jpg")
    with pytest.raises(FeatgapError, match="directly in the split folder"):
        list_images(tmp_path / "loose")
    assert part_bounds(10, 3) == [(0, 4), (4, 7), (7, 10)]
    assert part_bounds(2, 3) == [(0, 1), (1, 2), (2, 2)]  # as many parts as configured jobs


# ---------------------------------------------------------------- extraction
def test_shard_follows_the_contract(image_root, tmp_path):
    listing = list_images(image_root / images.V2_FOLDER)
    result = extract_part(listing.path_root, *listing.part(0, len(listing)), tmp_path / "part-00000.parquet",
                          spec=SPEC, batch_size=5, progress=False)
    schema = pq.ParquetFile(tmp_path / "part-00000.parquet", page_checksum_verification=True).schema_arrow
    assert schema.names == ["row", "path", "label", "features"]
    assert [str(schema.field(n).type) for n in schema.names[:3]] == ["int64", "string", "int16"]
    assert schema.field("features").type == pa.list_(pa.float32(), 64)
    rows, paths, labels, feats = _read(tmp_path / "part-00000.parquet")
    assert (rows, paths, labels) == (list(range(len(listing))), listing.paths, listing.labels)
    assert feats.shape == (24, 64) == (result.rows, result.dim)
    assert not list(tmp_path.glob(".*tmp-*"))


def test_equals_a_plain_timm_loop_across_parts(image_root, tmp_path):
    folder = image_root / images.V2_FOLDER
    listing = list_images(folder)
    model, config = build_model(SPEC)
    names, targets, want = images.plain_timm_features(folder, model, config, batch_size=7)
    got = []
    for k, (start, stop) in enumerate(part_bounds(len(listing), 3)):
        extract_part(listing.path_root, *listing.part(start, stop), tmp_path / f"part-{k:05d}.parquet",
                     spec=SPEC, batch_size=4, workers=1 if k == 0 else 0, progress=False)
        got.append(_read(tmp_path / f"part-{k:05d}.parquet"))
    assert [r for g in got for r in g[0]] == list(range(len(listing)))
    assert [p.split("/", 1)[1] for g in got for p in g[1]] == names
    assert [lab for g in got for lab in g[2]] == targets  # complete 0..11: timm's index = folder number
    np.testing.assert_allclose(np.concatenate([g[3] for g in got]), want, rtol=1e-5, atol=1e-5)


def test_checkpoint_file_gives_its_weights(image_root, tmp_path):
    trained, config = build_model(SPEC, seed=7)
    torch.save(trained.state_dict(), tmp_path / "weights.pth")
    listing = list_images(image_root / "val")
    spec = ModelSpec("test_vit", checkpoint=str(tmp_path / "weights.pth"), img_size=64)
    extract_part(listing.path_root, *listing.part(0, len(listing)), tmp_path / "p.parquet", spec=spec, progress=False)
    _, _, want = images.plain_timm_features(image_root / "val", trained, config)
    np.testing.assert_allclose(_read(tmp_path / "p.parquet")[3], want, rtol=1e-5, atol=1e-5)


@pytest.fixture
def with_corrupt(image_root, tmp_path):
    folder = tmp_path / images.V2_FOLDER
    shutil.copytree(image_root / images.V2_FOLDER, folder)
    bad = images.corrupt_jpeg(folder / "5" / "0000bad.jpeg")
    return folder, Path(bad).relative_to(tmp_path).as_posix()


def test_corrupt_jpeg_stops_with_one_line_or_is_skipped_and_counted(with_corrupt, tmp_path):
    folder, bad = with_corrupt
    listing = list_images(folder)
    out = tmp_path / "out" / "part-00000.parquet"
    with pytest.raises(FeatgapError) as err:
        extract_part(listing.path_root, *listing.part(0, len(listing)), out, spec=SPEC, progress=False)
    assert "\n" not in str(err.value) and str(err.value).startswith(str(tmp_path / bad) + ": unreadable image")
    assert not list(out.parent.iterdir())  # nothing that looks finished
    result = extract_part(listing.path_root, *listing.part(0, len(listing)), out, spec=SPEC,
                          on_bad_image="skip", batch_size=4, workers=1, progress=False)
    rows, paths, _, _ = _read(out)
    assert result.skipped == [bad] and result.rows == len(listing) - 1
    assert bad not in paths and listing.paths.index(bad) not in rows  # its row id is the visible gap


def test_dim_is_the_pre_logits_width():
    assert check_dim(ModelSpec("test_vit"), 64) == 64
    with pytest.raises(FeatgapError, match=r"^config key dim: 65, but extract.model test_vit gives 64 features"):
        check_dim(ModelSpec("test_vit"), 65)
    # a hidden head layer: pre-logits are head_hidden_size wide (1280), not num_features (960)
    assert check_dim(ModelSpec("mobilenetv3_large_100"), 1280) == 1280


# ---------------------------------------------------------------- the step: plan, parts, manifest, CSV
def test_step_writes_a_split_every_reader_takes_and_a_seed_csv(with_corrupt, tmp_path):
    from scripts.data import convert, extract
    from scripts.lib.featio.reader import read_split
    from scripts.lib.featio.shards import verify_split

    folder, bad = with_corrupt
    opts = {"model": "test_vit", "pretrained": False, "img_size": 64, "on_bad_image": "skip", "batch_size": 8}
    out = tmp_path / "results"
    plan = extract.plan(str(folder), str(out / "v2.plan.json"), parts=2, options=opts, dim=64, num_classes=12)
    shards = [out / "v2" / f"part-{k:05d}.parquet" for k in range(2)]
    for k, shard in enumerate(shards):
        extract.part(str(out / "v2.plan.json"), k, str(shard), options=opts, progress=False)
    manifest = extract.manifest(str(out / "v2.plan.json"), [str(s) for s in shards], str(out / "v2.manifest.json"),
                                options=opts)
    assert manifest["rows"] == 24 and manifest["images_listed"] == 25 and manifest["images_skipped"] == 1
    assert manifest["images_skipped_paths"] == [bad] and manifest["folder"] == "v2"
    verify_split(out / "v2.manifest.json")  # whole-file CRCs, as QC checks them
    split = read_split(out / "v2.manifest.json")
    assert split.features.shape == (24, 64) and list(split.path) == [p for p in plan["paths"] if p != bad]
    # the seed schema, read back exactly by featgap's own CSV converter
    from scripts.lib.images.seed_csv import split_to_csv

    assert split_to_csv(out / "v2.manifest.json", tmp_path / "v2.csv") == 24
    assert (tmp_path / "v2.csv").read_text().startswith(",path,label,0,1,")
    convert.convert_file(tmp_path / "v2.csv", tmp_path / "back", tmp_path / "back.manifest.json", num_classes=12,
                         dim=64)
    back = read_split(tmp_path / "back.manifest.json")
    assert list(back.row) == list(split.row) and list(back.path) == list(split.path)
    np.testing.assert_array_equal(back.features, split.features)
    # a test split labelled by the train split's {folder: label}
    from scripts.lib.images.folders import class_map_of_split

    assert class_map_of_split(out / "v2.manifest.json") == {str(k): k for k in range(12)}


def test_cli_errors_are_one_line(with_corrupt, tmp_path):
    folder, bad = with_corrupt
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    step = [sys.executable, "-m", "scripts.data.extract"]
    plan = tmp_path / "plan.json"
    opts = '{"model": "test_vit", "pretrained": false, "img_size": 64}'
    subprocess.run([*step, "plan", "--folder", str(folder), "--out", str(plan), "--options", opts], env=env,
                   check=True, capture_output=True)
    runs = {
        "corrupt": [*step, "part", "--plan", str(plan), "--part", "0", "--out", str(tmp_path / "p.parquet"),
                    "--options", opts, "--threads", "1"],
        "hub": [*step, "part", "--plan", str(plan), "--part", "0", "--out", str(tmp_path / "p.parquet"),
                "--options", '{"model": "test_vit.r160_in1k"}'],
        "name": [*step, "check", "--dim", "64", "--options", '{"model": "no_such_model"}'],
        "dim": [*step, "check", "--dim", "65", "--options", opts],
    }
    for case, args in runs.items():
        proc = subprocess.run(args, capture_output=True, text=True, env=env, check=False)
        lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("featgap error:")]
        assert proc.returncode == 1 and len(lines) == 1, (case, proc.stderr[-2000:])
        assert "Traceback" not in proc.stderr
        if case == "corrupt":
            assert bad in lines[0]
        if case == "hub":
            assert re.search(r"cannot load timm's pretrained weights .*extract\.checkpoint", lines[0])
    assert not (tmp_path / "p.parquet").exists()
