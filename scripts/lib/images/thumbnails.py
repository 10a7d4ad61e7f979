"""Thumbnails for the report: small JPEGs embedded as base64 data URIs, within a size budget.

The report is one self-contained HTML file, so pictures travel inside it. Each thumbnail is
reduced to fit a `max_side` box (aspect kept) and saved as JPEG; the data URIs of one page together
stay within `budget_bytes` (default 4 MB of image text, leaving room for the rest of a ≤ 5 MB
page). When the budget would be exceeded, later thumbnails are re-encoded at lower quality and
then smaller, and those that still do not fit become placeholders counted under `over_budget`.
A missing or unreadable image file becomes a placeholder counted under `missing`: the report
never fails for a picture.

A data URI is only [A-Za-z0-9+/=:;,], so it passes an autoescaping template unchanged and needs
no `|safe`; captions (class names, paths) stay ordinary escaped text in the template.
"""

from __future__ import annotations

import base64
import io
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, ImageOps

PAGE_LIMIT_BYTES = 5_000_000
DEFAULT_BUDGET_BYTES = 4_000_000


@dataclass(frozen=True)
class Thumbnail:
    path: str  # as given (relative to the image root): the report shows it as the caption
    uri: str | None  # data:image/jpeg;base64,… or None for a placeholder
    status: str  # "ok" | "missing" (file absent or unreadable) | "over_budget"
    width: int = 0
    height: int = 0


@dataclass
class ThumbnailSet:
    items: list[Thumbnail] = field(default_factory=list)
    missing: int = 0
    over_budget: int = 0
    bytes: int = 0  # total length of the data URIs

    def by_path(self) -> dict[str, Thumbnail]:
        return {t.path: t for t in self.items}


def _encode(img: Image.Image, max_side: int, quality: int) -> tuple[str, int, int]:
    small = img.copy()
    small.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    small.save(buf, format="JPEG", quality=quality, optimize=True)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii"), *small.size


def _load(path: Path) -> Image.Image | None:
    try:
        with Image.open(path) as opened:
            # As a viewer shows it; convert() loads the pixels, so a truncated file fails here.
            return ImageOps.exif_transpose(opened).convert("RGB")
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        return None


def make_thumbnails(
    image_root: str | os.PathLike,
    paths: Sequence[str],
    *,
    max_side: int = 128,
    quality: int = 75,
    budget_bytes: int = DEFAULT_BUDGET_BYTES,
) -> ThumbnailSet:
    """Thumbnails of `paths` (relative to `image_root`), in order, within `budget_bytes` in all.

    Repeated paths are encoded once. Each entry fits the remaining budget: first at `quality`,
    then at quality 40, then at half the size; otherwise it is a placeholder ("over_budget").
    """
    root = Path(image_root)
    out = ThumbnailSet()
    done: dict[str, Thumbnail] = {}
    for rel in paths:
        if rel in done:
            out.items.append(done[rel])
            continue
        img = _load(root / rel)
        if img is None:
            thumb = Thumbnail(rel, None, "missing")
            out.missing += 1
        else:
            thumb = Thumbnail(rel, None, "over_budget")
            for side, q in ((max_side, quality), (max_side, 40), (max(16, max_side // 2), 40)):
                uri, w, h = _encode(img, side, q)
                if out.bytes + len(uri) <= budget_bytes:
                    thumb = Thumbnail(rel, uri, "ok", w, h)
                    out.bytes += len(uri)
                    break
            else:
                out.over_budget += 1
        done[rel] = thumb
        out.items.append(thumb)
    return out
