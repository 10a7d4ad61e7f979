"""The report's pictures: thumbnails (small JPEG data URIs within a page budget, missing files as
counted placeholders) and the pictures step rendered into the report (side by side, escaped names,
no base64 in the Markdown, off when no step ran)."""
from __future__ import annotations

import base64
import io
import re
from pathlib import Path

import image_fixtures as images
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from scripts.lib.images.thumbnails import PAGE_LIMIT_BYTES, make_thumbnails
from scripts.report import report
from scripts.report.pictures import pictures

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE = ROOT / "scripts" / "report" / "templates" / "report.html"
DATA_URI = re.compile(r"^data:image/jpeg;base64,[A-Za-z0-9+/=]+$")
NAMES = ["tench <script>alert(1)</script>", 'goldfish & "carp"', "great white shark"]


@pytest.fixture(scope="module")
def image_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("images")
    images.make_val(root)
    images.make_v2(root, classes=3, per_class=8)
    return root


def _paths(root: Path, folder: str) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in (root / folder).rglob("*.*"))


def test_thumbnails_are_small_embedded_jpegs(image_root):
    paths = _paths(image_root, "val")
    thumbs = make_thumbnails(image_root, paths, max_side=32)
    assert [t.path for t in thumbs.items] == paths and thumbs.missing == thumbs.over_budget == 0
    for t in thumbs.items:
        assert t.status == "ok" and DATA_URI.match(t.uri)  # nothing an HTML template would escape
        img = Image.open(io.BytesIO(base64.b64decode(t.uri.split(",", 1)[1])))
        assert img.format == "JPEG" and max(img.size) == 32 and img.size == (t.width, t.height)
    assert thumbs.bytes == sum(len(t.uri) for t in thumbs.items) < PAGE_LIMIT_BYTES
    again = make_thumbnails(image_root, [paths[0]] * 3)  # repeated paths encoded once
    assert len(again.items) == 3 and again.bytes == len(again.items[0].uri)


def test_missing_and_corrupt_files_are_counted_placeholders(image_root, tmp_path):
    images.corrupt_jpeg(tmp_path / "val" / "x" / "bad.jpeg")
    good = _paths(image_root, "val")[0]
    (tmp_path / good).parent.mkdir(parents=True)
    (tmp_path / good).write_bytes((image_root / good).read_bytes())
    thumbs = make_thumbnails(tmp_path, [good, "val/x/nope.JPEG", "val/x/bad.jpeg"])
    assert [t.status for t in thumbs.items] == ["ok", "missing", "missing"] and thumbs.missing == 2
    assert thumbs.items[1].uri is None


def test_budget_bounds_the_page(image_root):
    paths = _paths(image_root, images.V2_FOLDER)
    one = make_thumbnails(image_root, paths[:1], max_side=64).bytes
    thumbs = make_thumbnails(image_root, paths, max_side=64, budget_bytes=int(one * 5.5))
    assert thumbs.bytes <= int(one * 5.5)
    assert thumbs.over_budget > 0 and thumbs.over_budget + sum(t.status == "ok" for t in thumbs.items) == len(paths)
    assert sum(t.status == "ok" for t in thumbs.items) > 5  # smaller re-encodings let more pictures in


def _predictions(root: Path, folder: str, out: Path, wrong_every: int) -> Path:
    paths = _paths(root, folder)
    label = np.array([int(images.SYNSETS.index(p.split("/")[1])) if p.startswith("val/") else int(p.split("/")[1])
                      for p in paths])
    pred = label.copy()
    pred[::wrong_every] = (pred[::wrong_every] + 1) % 3
    pd.DataFrame({"row": range(len(paths)), "path": paths, "label": label.astype("int16"),
                  "pred": pred.astype("int16")}).to_parquet(out)
    return out


def _step(image_root, tmp_path, roots):
    p1 = _predictions(image_root, "val", tmp_path / "p1.parquet", 2)
    p2 = _predictions(image_root, images.V2_FOLDER, tmp_path / "p2.parquet", 3)
    pd.DataFrame({"class": [1, 0, 2], "name": [NAMES[1], NAMES[0], NAMES[2]], "drop": [0.5, 0.2, 0.0]}).to_csv(
        tmp_path / "per_class.csv", index=False)
    v2 = pd.read_parquet(p2)
    suspects = pd.DataFrame({"path": [v2.path[1], f"{images.V2_FOLDER}/9/gone.jpeg"], "label": [v2.label[1], 2],
                             "pred": [v2.pred[1], 0], "confidence": [0.99, 0.95]})
    suspects.to_csv(tmp_path / "disagreements.csv", index=False)
    return pictures(predictions={"test1": p1, "test2": p2}, roots=roots, classes=tmp_path / "per_class.csv",
                    mislabelled=tmp_path / "disagreements.csv", options={"classes": 2, "per_class": 2},
                    head_name="linear", outputs={"pictures": tmp_path / "pictures.json"})


def _report(tmp_path, files):
    report.build_report(inputs=files, config={"seed": 0, "heads": {"linear": {}}}, template=TEMPLATE,
                        out_html=tmp_path / "index.html", out_md=tmp_path / "report.md")
    return (tmp_path / "index.html").read_text(), (tmp_path / "report.md").read_text()


def test_report_shows_both_test_sets_side_by_side_escaped_and_bounded(image_root, tmp_path):
    result = _step(image_root, tmp_path, {"test1": image_root, "test2": image_root})
    assert [p["label"] for p in result["panels"]] == [1, 0]  # the table's ranking
    panel = result["panels"][0]
    assert [len(panel["pictures"][t]) for t in ("test1", "test2")] == [2, 2]
    assert all(p["label"] == 1 and p["uri"] for t in ("test1", "test2") for p in panel["pictures"][t])
    wrong = [p for t in ("test1", "test2") for p in panel["pictures"][t] if not p["correct"]]
    assert wrong and all(p["pred_name"] == NAMES[p["pred"]] for p in wrong)
    assert len(result["mislabelled"]) == 2 and result["missing"] == 1  # gone.jpeg: a placeholder, counted
    page, md = _report(tmp_path, {"pictures": str(tmp_path / "pictures.json")})
    section = page.split('<section id="pictures">', 1)[1].split("</section>", 1)[0]
    assert "<script>" not in section and "&lt;script&gt;" in section and "&amp; &#34;carp&#34;" in section
    assert section.count('src="data:image/jpeg;base64,') == result["images"] == 9
    assert section.count("image not found") == 1 and "1 image files were not found" in section
    assert len(page.encode()) < PAGE_LIMIT_BYTES
    assert "Pictures of the most-dropped classes" in md and "base64" not in md and "9 thumbnails" in md


def test_without_a_root_the_pictures_are_placeholders_and_without_the_step_no_section(image_root, tmp_path):
    result = _step(image_root, tmp_path, {"test2": image_root})  # test set 1's paths do not resolve
    assert all(p["uri"] is None for panel in result["panels"] for p in panel["pictures"]["test1"])
    assert result["missing"] == 1 and result["no_root"] == ["test1"]
    page, _ = _report(tmp_path, {"pictures": str(tmp_path / "pictures.json")})
    assert page.count("no image root") == 4 and "The paths of test set 1 do not resolve: set images.root" in page
    page, md = _report(tmp_path, {})
    assert 'id="pictures"' not in page and "Pictures" not in md


def test_pictures_give_way_when_the_whole_page_would_pass_its_limit(image_root, tmp_path, monkeypatch):
    result = _step(image_root, tmp_path, {"test1": image_root, "test2": image_root})
    full, _ = _report(tmp_path, {"pictures": str(tmp_path / "pictures.json")})
    limit = len(full.encode()) - 2 * len(result["panels"][0]["pictures"]["test1"][0]["uri"])
    monkeypatch.setattr(report, "PAGE_LIMIT_BYTES", limit)
    page, _ = _report(tmp_path, {"pictures": str(tmp_path / "pictures.json")})
    assert len(page.encode()) <= limit
    shown = page.count('src="data:image/jpeg;base64,')
    assert 0 < shown < result["images"] and f"{result['images'] - shown} not shown to keep the page small" in page
