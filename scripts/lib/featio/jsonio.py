"""JSON files and arguments: sorted keys (equal content, equal bytes), NaN and ±inf as null.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from scripts.lib.featio.atomic import atomic_path
from scripts.lib.featio.errors import FeatgapError


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Atomically write pretty JSON (sorted keys, so equal content gives equal bytes).

    NaN and ±inf become null: bare `NaN` is not JSON, and browsers, jq and strict parsers refuse it.
    """
    text = json.dumps(_finite_or_null(obj), indent=2, sort_keys=True, default=_json_default, allow_nan=False)
    with atomic_path(path) as tmp:
        tmp.write_text(text + "\n")


def read_json(path: str | os.PathLike) -> Any:
    return json.loads(Path(path).read_text())


def _finite_or_null(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _finite_or_null(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_or_null(item) for item in value]
    if isinstance(value, (np.ndarray, np.generic)):
        return _finite_or_null(value.tolist())
    return value


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def parse_json_arg(text: str, name: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise FeatgapError(f"--{name}: not valid JSON ({err})") from None
