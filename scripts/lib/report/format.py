"""Plain-text formatting of the report's values and figures (shared by its sections and tables):
nothing here is escaped, each template escapes for its own format (scripts.lib.report.render)."""
from __future__ import annotations

import base64
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any


# ------------------------------------------------------------------ values
def pct(value: Any, digits: int = 2) -> str:
    return f"{value * 100:.{digits}f}" if isinstance(value, (int, float)) and math.isfinite(value) else "–"


def ci_text(ci: Any, digits: int = 2) -> str:
    if isinstance(ci, (list, tuple)) and len(ci) == 2 and all(isinstance(v, (int, float)) for v in ci):
        return f"[{pct(ci[0], digits)}, {pct(ci[1], digits)}]"
    return ""


def share_text(e) -> str:
    """An evidence block's share of the gap as text: points with interval, or not estimable."""
    if e.points is None:
        return "not estimable"
    ci = e.ci95
    return f"{e.points:.1f} points" + (f" [{ci[0]:.1f}, {ci[1]:.1f}]" if None not in ci else "")


def fmt_value(value: Any) -> str:
    """A number from a summary as short text (lists truncated)."""
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if not math.isfinite(value):
            return "–"
        if value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e5):
            return f"{value:.3g}"
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        shown = ", ".join(fmt_value(v) for v in value[:8])
        return f"[{shown}{', …' if len(value) > 8 else ''}]" + (f" ({len(value)})" if len(value) > 8 else "")
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {fmt_value(v)}" for k, v in list(value.items())[:8]) + "}"
    return str(value)


# ------------------------------------------------------------------ figures
@dataclass
class Figure:
    path: str
    src: str | None  # data URI; None when the file is missing
    md_path: str  # relative to the Markdown file


def embed(path: str, md_dir: Path) -> Figure:
    file = Path(path)
    rel = os.path.relpath(file.resolve(), md_dir.resolve()) if file.exists() else path
    rel = Path(rel).as_posix()
    if not file.is_file():
        return Figure(path=path, src=None, md_path=rel)
    kind = {".png": "image/png", ".svg": "image/svg+xml", ".jpg": "image/jpeg", ".jpeg": "image/jpeg"}.get(
        file.suffix.lower(), "application/octet-stream")
    return Figure(path=path, src=f"data:{kind};base64,{base64.b64encode(file.read_bytes()).decode('ascii')}",
                  md_path=rel)
