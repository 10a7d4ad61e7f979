"""The `meta` block every JSON artifact carries (docs/data-contract.md: JSON).
"""
from __future__ import annotations

import os
import platform
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from scripts.lib.fingerprint import fingerprint

FEATGAP_VERSION = "0.1.0"


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in ("numpy", "pyarrow", "polars", "pandas", "scipy", "sklearn", "torch", "matplotlib"):
        module = sys.modules.get(name)
        if module is not None:
            versions[name] = getattr(module, "__version__", "?")
    return versions


def meta_block(
    *,
    seed: int | None = None,
    device: str = "cpu",
    started: float | None = None,
    inputs: Sequence[str | os.PathLike] = (),
    input_fingerprints: Sequence[dict[str, Any]] = (),
) -> dict[str, Any]:
    """The `meta` block every JSON artifact carries (docs/data-contract.md: JSON)."""
    prints = list(input_fingerprints) + [fingerprint(p) for p in inputs if Path(p).is_file()]
    return {
        "featgap_version": FEATGAP_VERSION,
        "libraries": library_versions(),
        "device": device,
        "seed": seed,
        "wall_time_s": None if started is None else round(time.perf_counter() - started, 3),
        "inputs": prints,
    }
