"""The report's pictures: test-1 and test-2 images of the most-dropped classes side by side, and
the test-2 images most likely mislabelled, as plain data (JSON) that the report's templates render.

Which classes: the first rows of the gap analysis's per-class table (ranked by the shrunk drop).
Which images: per class and test set, the first `per_class` rows in path order, a fixed and
reproducible choice that does not pick by outcome (so the share marked wrong follows the class's
accuracy only loosely: the panel states the accuracy). Mislabelled: the rows of one table of
ranked suspects (today label_noise's most confident disagreements), with the predicted class as
the suggested one. Each picture carries its path, its thumbnail (scripts.lib.images.thumbnails:
one budget for the whole page), whether the prediction was correct and the predicted class's
name; everything textual stays data, escaped by the report's templates.

A missing or unreadable file gives a placeholder and a count; a test set whose paths do not
resolve (a CSV split without images.root) placeholders and a note; never an error.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from scripts.lib.featio.errors import FeatgapError
from scripts.lib.images.thumbnails import DEFAULT_BUDGET_BYTES, make_thumbnails

TEST_TITLES = {"test1": "test set 1", "test2": "test set 2"}


def _predictions(path: str | os.PathLike) -> pd.DataFrame:
    frame = pd.read_parquet(path, columns=["path", "label", "pred"])
    if frame.empty:
        raise FeatgapError(f"{path}: no predictions")
    return frame


def _suspects(path: str | os.PathLike) -> pd.DataFrame:
    """Ranked suspects: path, label and the class suggested instead (`suggested`, the decomposition's
    label_issues.csv, or `pred`, label_noise's table)."""
    frame = pd.read_csv(path)
    if "pred" not in frame.columns and "suggested" in frame.columns:
        frame = frame.rename(columns={"suggested": "pred"})
    missing = {"path", "label", "pred"} - set(frame.columns)
    if missing:
        raise FeatgapError(f"{path}: no column {sorted(missing)[0]!r} (expected a table of ranked suspects with "
                           "path, label and pred)")
    return frame


def build_pictures(
    *,
    predictions: Mapping[str, str | os.PathLike],
    roots: Mapping[str, str | os.PathLike | None],
    classes_table: str | os.PathLike,
    mislabelled: str | os.PathLike | None = None,
    mislabelled_test: str = "test2",
    classes: int = 6,
    per_class: int = 4,
    mislabelled_count: int = 12,
    max_side: int = 112,
    budget_bytes: int = DEFAULT_BUDGET_BYTES,
) -> dict[str, Any]:
    """The pictures section as JSON-able data: panels for the top `classes` of `classes_table`
    (gap's per-class table: class, name, ranked) over the test sets of `predictions`
    ({test: predictions.parquet}), and the first `mislabelled_count` rows of `mislabelled`."""
    ranked = pd.read_csv(classes_table)
    if not {"class", "name"} <= set(ranked.columns):
        raise FeatgapError(f"{classes_table}: expected the gap analysis's per-class table (class, name, …)")
    names = {int(k): str(v) for k, v in zip(ranked["class"], ranked["name"])}
    tests = list(predictions)
    frames = {t: _predictions(p) for t, p in predictions.items()}
    top = [int(k) for k in ranked["class"].head(classes)]

    wanted: list[tuple[str, str]] = []  # (test, path) in page order: one thumbnail budget for the page
    chosen: dict[tuple[int, str], pd.DataFrame] = {}
    accuracy: dict[int, dict[str, float | None]] = {}
    for k in top:
        accuracy[k] = {}
        for t in tests:
            rows = frames[t][frames[t]["label"] == k]
            accuracy[k][t] = float((rows["pred"] == k).mean()) if len(rows) else None
            chosen[k, t] = rows.sort_values("path", kind="stable").head(per_class)
            wanted += [(t, p) for p in chosen[k, t]["path"]]
    suspects = pd.DataFrame(columns=["path", "label", "pred"])
    if mislabelled is not None:
        suspects = _suspects(mislabelled).head(mislabelled_count)
        wanted += [(mislabelled_test, p) for p in suspects["path"]]

    # Thumbnails per test set (each has its own root); the budget is shared in page order.
    thumbs, missing, over_budget, used = {}, 0, 0, 0
    for t in tests:
        paths = [p for tt, p in wanted if tt == t]
        root = roots.get(t)
        # Not resolvable (a CSV split without images.root, or one without a path column: empty
        # paths): placeholders with a note, not counted as missing files.
        for p in paths:
            if root is None or not p:
                thumbs[t, p] = {"uri": None, "status": "no_root"}
        paths = [p for p in paths if (t, p) not in thumbs]
        if root is None or not paths:
            continue
        made = make_thumbnails(Path(root), paths, max_side=max_side, budget_bytes=max(0, budget_bytes - used))
        used += made.bytes
        missing += made.missing
        over_budget += made.over_budget
        for th in made.items:
            thumbs[t, th.path] = {"uri": th.uri, "status": th.status}

    def picture(t: str, row, note: str = "") -> dict[str, Any]:
        label, pred = int(row.label), int(row.pred)
        return {"path": str(row.path), **thumbs[t, row.path], "label": label, "pred": pred,
                "correct": label == pred, "pred_name": names.get(pred, str(pred)), "note": note}

    panels = [{"label": k, "name": names.get(k, str(k)), "accuracy": accuracy[k],
               "pictures": {t: [picture(t, r) for r in chosen[k, t].itertuples()] for t in tests}} for k in top]
    noisy = [picture(mislabelled_test, r, f"labelled {names.get(int(r.label), r.label)}; "
                                          f"suggested {names.get(int(r.pred), r.pred)}")
             for r in suspects.itertuples()]
    shown = [p for panel in panels for t in tests for p in panel["pictures"][t]] + noisy
    return {"tests": tests, "titles": {t: TEST_TITLES.get(t, t) for t in tests}, "panels": panels,
            "mislabelled": noisy, "missing": int(missing), "over_budget": int(over_budget), "bytes": int(used),
            "per_class": per_class, "images": sum(1 for p in shown if p["uri"]),
            "no_root": [t for t in tests if any(v["status"] == "no_root" for (tt, _), v in thumbs.items() if tt == t)]}


def drop_thumbnails(pictures: dict[str, Any], nbytes: int) -> int:
    """Free at least `nbytes` of the page by turning thumbnails into placeholders, the last shown
    first (mislabelled, then the panels of the least-dropped classes shown); returns the bytes
    freed. The report calls it when the whole page (figures included) would exceed its limit."""
    shown = [p for panel in pictures["panels"] for t in pictures["tests"] for p in panel["pictures"][t]]
    freed = 0
    for p in reversed(shown + pictures["mislabelled"]):
        if freed >= nbytes:
            break
        if p["uri"]:
            freed += len(p["uri"])
            p.update(uri=None, status="over_budget")
            pictures["over_budget"] += 1
            pictures["images"] -= 1
    return freed
