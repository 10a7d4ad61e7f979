"""ImageNet "ReaL" labels, the library half (no CLI): read real.json, match a test set to it by
file name, flag each image and re-score (the metrics.json `real` block).

Shared by two steps, scripts.evaluate.evaluate (`rescore`) and scripts.analysis.real_labels (the ReaL check), which
import libraries only (docs/architecture.md). ReaL (Beyer et al. 2020; resources/real-labels/)
gives, for each of the 50,000 val images, the set of classes raters judged correct (entry i of
real.json <-> `ILSVRC2012_val_{i+1:08d}.JPEG`; an empty set: no valid label). Images are matched
by **file name**, never by row order.
"""
from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from scripts.lib.featio.errors import FeatgapError
from scripts.lib.stats import inference

CATEGORIES = ("in_real", "no_label", "genuine")
# An ImageNet val file name anywhere at the end of a path (any folder, any image extension).
# ASCII digits only: `\d` would map Unicode digits (e.g. Arabic-Indic) onto images too.
VAL_NAME = re.compile(r"(?:^|[/\\])(ILSVRC2012_val_([0-9]{8}))\.(?:JPEG|jpeg|JPG|jpg|PNG|png)$")
# Below this share of images whose original label is in their ReaL set, the paths or the class
# order cannot be those of ImageNet val (real.json: 87 % of the images with a ReaL set; a wrong
# mapping: about 0.1 %). At 75 %, a mapping wrong for more than ~14 % of the images is refused
# (0.87 (1 − f) + 0.001 f < 0.75), while a true subset stays far above it (any 500 val images:
# 87 % ± 1.5 points); 50 % let a mapping wrong for 40 % of the images through.
MIN_AGREEMENT = 0.75
FIRST_DATA_LINE = 2  # the CSV's header is line 1; shards and predictions keep the CSV's row order


@dataclass
class RealLabels:
    """The ReaL sets, entry i ↔ ILSVRC2012_val_{i+1:08d}, as CSR arrays."""

    path: str
    offsets: np.ndarray  # (n + 1,) int64
    classes: np.ndarray  # (sum of set sizes,) int64

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def set_of(self, i: int) -> list[int]:
        return self.classes[self.offsets[i]:self.offsets[i + 1]].tolist()


def _position(text: str, index: int) -> tuple[int, int]:
    line = text.count("\n", 0, index) + 1
    return line, index - (text.rfind("\n", 0, index) + 1) + 1


def load_real(path: str | Path, num_classes: int, *, entries: int) -> RealLabels:
    """Read and check real.json: a JSON list of `entries` lists of distinct class indices in 0..C-1
    (`entries`: config evaluate.real_labels.entries, 50,000 for ImageNet val). The length is checked
    because one inserted or deleted entry shifts every later set onto the wrong image.

    Every problem is one line naming the file, the line and column and what was expected."""
    path = Path(path)
    if not path.is_file():
        raise FeatgapError(f"{path}: ReaL labels file not found (config key evaluate.real_labels.file)")
    try:
        text = path.read_text(encoding="utf-8-sig")  # a UTF-8 BOM is accepted, as on the CSV side
    except UnicodeDecodeError as err:
        raise FeatgapError(f"{path}: byte {err.start}: not UTF-8; expected the ReaL real.json (JSON)") from None
    where = f"{path}: "
    decoder = json.JSONDecoder()
    ws = re.compile(r"\s*")
    i = ws.match(text, 0).end()
    if i == len(text) or text[i] != "[":
        line, col = _position(text, i)
        raise FeatgapError(f"{where}line {line}, column {col}: expected '[' opening a JSON list of label lists "
                           "(ReaL real.json)")
    i = ws.match(text, i + 1).end()
    offsets, flat = [0], []
    while i < len(text) and text[i] != "]":
        entry = len(offsets) - 1
        name = f"ILSVRC2012_val_{entry + 1:08d}.JPEG"
        try:
            value, end = decoder.raw_decode(text, i)
        except json.JSONDecodeError as err:
            raise FeatgapError(f"{where}line {err.lineno}, column {err.colno}: {err.msg}; expected entry {entry} "
                               f"({name}) as a list of class indices") from None
        except (ValueError, RecursionError) as err:
            # json's own limits: an integer of more than 4,300 digits, lists nested past the
            # recursion limit. Neither names a position: the entry's start stands for it.
            line, col = _position(text, i)
            what = ("lists nested too deeply" if isinstance(err, RecursionError) else
                    f"an integer of {_digits(err)} digits")
            raise FeatgapError(f"{where}line {line}, column {col}: {what}; expected entry {entry} ({name}) as a "
                               "list of class indices") from None
        if not isinstance(value, list):
            line, col = _position(text, i)
            raise FeatgapError(f"{where}line {line}, column {col}: entry {entry} ({name}) is {type(value).__name__}; "
                               "expected a list of class indices")
        for item in value:
            if isinstance(item, bool) or not isinstance(item, int) or not 0 <= item < num_classes:
                line, col = _position(text, i)
                raise FeatgapError(f"{where}line {line}, column {col}: entry {entry} ({name}) holds {item!r}; "
                                   f"expected class indices in 0..{num_classes - 1} (config num_classes)")
        if len(set(value)) != len(value):
            line, col = _position(text, i)
            raise FeatgapError(f"{where}line {line}, column {col}: entry {entry} ({name}) repeats a class; "
                               "expected distinct class indices")
        flat += value
        offsets.append(len(flat))
        i = ws.match(text, end).end()
        if i < len(text) and text[i] == ",":
            i = ws.match(text, i + 1).end()
            if i < len(text) and text[i] == "]":
                line, col = _position(text, i)
                raise FeatgapError(f"{where}line {line}, column {col}: trailing comma; expected another entry")
        elif i < len(text) and text[i] != "]":
            line, col = _position(text, i)
            raise FeatgapError(f"{where}line {line}, column {col}: expected ',' or ']' after entry {entry}")
    if i >= len(text):
        line, col = _position(text, len(text))
        raise FeatgapError(f"{where}line {line}, column {col}: the JSON list does not close; expected ']'")
    rest = ws.match(text, i + 1).end()
    if rest != len(text):
        line, col = _position(text, rest)
        raise FeatgapError(f"{where}line {line}, column {col}: text after the JSON list; expected the end of the file")
    if len(offsets) == 1:
        raise FeatgapError(f"{where}line 1, column 1: an empty list; expected one label list per val image")
    if len(offsets) - 1 != entries:
        raise FeatgapError(f"{where}{len(offsets) - 1} entries; expected {entries} (one per ImageNet val image, "
                           "config evaluate.real_labels.entries)")
    return RealLabels(path=str(path), offsets=np.asarray(offsets, np.int64), classes=np.asarray(flat, np.int64))


def _digits(err: ValueError) -> str:
    found = re.search(r"value has (\d+) digits", str(err))
    return found.group(1) if found else "too many"


def match_paths(paths: Sequence[str], real: RealLabels, *, source: str) -> np.ndarray:
    """Entry of real.json for each path, by file name. `source` is the CSV the paths came from
    (the message names its line: the header is line 1 and rows keep the CSV's order)."""
    series = pd.Series(np.asarray(paths, dtype=object), dtype=object)
    found = series.str.extract(VAL_NAME)
    bad = np.flatnonzero(found[1].isna().to_numpy())
    if len(bad):
        i = int(bad[0])
        raise FeatgapError(f"{source}: line {i + FIRST_DATA_LINE}, column 'path': {str(series[i])!r} is not an "
                           f"ImageNet val file name; expected …/ILSVRC2012_val_NNNNNNNN.JPEG to match the ReaL labels "
                           f"{real.path} (or evaluate.real_labels.file: null)")
    number = found[1].astype(np.int64).to_numpy()
    outside = np.flatnonzero((number < 1) | (number > len(real)))
    if len(outside):
        i = int(outside[0])
        raise FeatgapError(f"{source}: line {i + FIRST_DATA_LINE}, column 'path': {found[0][i]} is image "
                           f"{number[i]}; expected 1..{len(real)}, the images of {real.path}")
    order = np.argsort(number, kind="stable")
    repeated = np.flatnonzero(np.diff(number[order]) == 0)
    if len(repeated):
        a, b = sorted((int(order[repeated[0]]), int(order[repeated[0] + 1])))
        raise FeatgapError(f"{source}: line {b + FIRST_DATA_LINE}, column 'path': {found[0][b]} appears again "
                           f"(first on line {a + FIRST_DATA_LINE}); expected each val image once")
    return number - 1


@dataclass
class Scored:
    """Per image of the test set: its ReaL set size and whether prediction / label are in it."""

    entry: np.ndarray
    n_real: np.ndarray
    pred_in_real: np.ndarray
    label_in_real: np.ndarray

    @property
    def has_real(self) -> np.ndarray:
        return self.n_real > 0


def _member(values: np.ndarray, entry: np.ndarray, real: RealLabels) -> np.ndarray:
    start, stop = real.offsets[entry], real.offsets[entry + 1]
    sizes = stop - start
    owner = np.repeat(np.arange(len(entry)), sizes)
    within = np.arange(sizes.sum()) - np.repeat(np.cumsum(sizes) - sizes, sizes)
    hit = real.classes[np.repeat(start, sizes) + within] == np.repeat(values, sizes)
    return np.bincount(owner, weights=hit, minlength=len(entry)) > 0


def score(paths: Sequence[str], label: np.ndarray, pred: np.ndarray, real: RealLabels, *, source: str) -> Scored:
    """Match the test set to ReaL by file name and flag each image; refuse a mapping that cannot be
    ImageNet val (original labels in their ReaL sets for fewer than MIN_AGREEMENT of the images)."""
    entry = match_paths(paths, real, source=source)
    label, pred = np.asarray(label, np.int64), np.asarray(pred, np.int64)
    scored = Scored(entry=entry, n_real=real.offsets[entry + 1] - real.offsets[entry],
                    pred_in_real=_member(pred, entry, real), label_in_real=_member(label, entry, real))
    has = scored.has_real
    if has.any():
        agreement = float(scored.label_in_real[has].mean())
        if agreement < MIN_AGREEMENT:
            raise FeatgapError(f"{source}: the original label is in the ReaL set of only {agreement:.1%} of the "
                               f"{int(has.sum())} images with one; expected ≥ {MIN_AGREEMENT:.0%}: these paths or "
                               f"labels do not map onto {real.path} (file names or class order differ)")
    return scored


def error_split(label: np.ndarray, pred: np.ndarray, scored: Scored) -> dict[str, Any]:
    """Counts of the errors (prediction ≠ original label) by category, and of the images the
    original labels call correct but ReaL does not."""
    wrong = np.asarray(label) != np.asarray(pred)
    cats = categories(label, pred, scored)
    counts = {c: int(np.sum(cats == c)) for c in CATEGORIES}
    return {"errors": int(wrong.sum()), **counts,
            "correct_but_label_not_in_real": int(np.sum(~wrong & scored.has_real & ~scored.label_in_real)),
            "correct_no_label": int(np.sum(~wrong & ~scored.has_real))}


def categories(label: np.ndarray, pred: np.ndarray, scored: Scored) -> np.ndarray:
    """'correct', or the error category of each image."""
    wrong = np.asarray(label) != np.asarray(pred)
    out = np.full(len(wrong), "correct", dtype=object)
    out[wrong & scored.has_real & scored.pred_in_real] = "in_real"
    out[wrong & ~scored.has_real] = "no_label"
    out[wrong & scored.has_real & ~scored.pred_in_real] = "genuine"
    return out


def rescore(*, paths: Sequence[str], label: np.ndarray, pred: np.ndarray, real: RealLabels, source: str,
            test: str, n_resamples: int, seed: int) -> dict[str, Any]:
    """The metrics.json `real` block: ReaL top-1 over the images with a ReaL label, with a 95 %
    bias-corrected interval (images resampled within each original-label class), the original
    top-1 on the same images and the paired difference, and the error split."""
    label, pred = np.asarray(label, np.int64), np.asarray(pred, np.int64)
    scored = score(paths, label, pred, real, source=source)
    keep = np.flatnonzero(scored.has_real)
    hit_real = scored.pred_in_real[keep].astype(np.float64)
    hit_orig = (label[keep] == pred[keep]).astype(np.float64)

    def stat(idx: np.ndarray) -> dict[str, float]:
        a, b = hit_real[idx].mean(), hit_orig[idx].mean()
        return {"top1": a, "top1_original": b, "difference": a - b}

    point = stat(np.arange(len(keep))) if len(keep) else {"top1": None, "top1_original": None, "difference": None}
    ci = (inference.bootstrap_ci(stat, len(keep), n_resamples=n_resamples, seed=seed, strata=label[keep], point=point)
          if len(keep) and n_resamples else {})
    return {"file": real.path, "test": test, "n_images": len(label), "n_with_real": len(keep),
            "n_no_label": int(len(label) - len(keep)), **point,
            "ci95": {k: ci.get(k) for k in ("top1", "top1_original", "difference")},
            "errors": error_split(label, pred, scored),
            "method": ("ReaL top-1: the prediction is in the image's ReaL set, over the images that have one; "
                       "matched by file name; top1_original: the original labels on the same images"),
            "unit": "images, resampled within each original-label class"}
