"""Library shared by evaluate and the gap analyses: class names, tables, figures, summaries, and
the per-class row counts that the class_counts step (scripts/analysis/class_counts.py) writes. No CLI.

Every analysis writes `summary.json` through `write_summary`, so the report can rely on:
    verdict  one sentence
    figures  PNG paths (as given on the command line, i.e. relative to the workflow directory)
    table    path of the main table (CSV)
    numbers  the values behind the verdict
    meta     featio.meta_block (versions, seed, wall time, input fingerprints)
"""
from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from scripts.lib.featio.atomic import atomic_path
from scripts.lib.featio.errors import FeatgapError
from scripts.lib.featio.jsonio import read_json, write_json
from scripts.lib.featio.provenance import meta_block
from scripts.lib.featio.reader import read_split

SPLITS = ("train", "test1", "test2")


# ---------------------------------------------------------------- class names
def generic_names(num_classes: int) -> list[str]:
    width = len(str(num_classes - 1))
    return [f"class_{i:0{width}d}" for i in range(num_classes)]


def load_class_names(path: str | os.PathLike | None, num_classes: int) -> list[str]:
    """Class names in label order: a text file (one per line), a JSON list, or a JSON dict
    {"0": name} / {"0": [wnid, name]} (Keras imagenet_class_index.json). None: generic names."""
    if path is None or str(path) == "":
        return generic_names(num_classes)
    path = Path(path)
    if not path.is_file():
        raise FeatgapError(f"{path}: class-names file not found (config key evaluate.class_names)")
    if path.suffix == ".json":
        data = json.loads(path.read_text())
        if isinstance(data, dict):
            try:
                data = [data[str(i)] for i in range(len(data))]
            except KeyError as err:
                raise FeatgapError(f"{path}: keys must be 0..{len(data) - 1}; missing {err}") from None
            data = [v[-1] if isinstance(v, list) else v for v in data]
        names = [str(v) for v in data]
    else:
        names = [line.rstrip("\r\n") for line in path.read_text(encoding="utf-8").splitlines()]
        while names and names[-1] == "":
            names.pop()
    if len(names) != num_classes:
        raise FeatgapError(f"{path}: {len(names)} class names, expected {num_classes} (config num_classes)")
    for i, name in enumerate(names):
        if not name.strip():
            raise FeatgapError(f"{path}: line {i + 1}: empty class name")
    return names


# ---------------------------------------------------------------- outputs
def pyplot():
    """matplotlib.pyplot on the Agg backend (no display, same pixels everywhere)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    plt.rcParams.update({"figure.dpi": 100, "savefig.dpi": 110, "font.size": 9, "axes.grid": True,
                         "grid.alpha": 0.3})
    return plt


def mpl_text(text: object) -> str:
    """Text from data or config (class and head names) made safe for matplotlib: a `$` starts
    mathtext, so `$\\foo{$` crashed the figure and `price $5 - $10` rendered as math. An
    escaped `\\$` is a literal dollar; nothing else is special outside mathtext."""
    return str(text).replace("$", r"\$")


def save_figure(fig, path: str | os.PathLike) -> str:
    """Atomically save a figure as PNG (no timestamp metadata) and close it."""
    plt = pyplot()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)
    return str(path)


def write_table(frame: pd.DataFrame, path: str | os.PathLike) -> str:
    """Atomically write a table: CSV (floats at full precision) or Parquet by suffix."""
    with atomic_path(path) as tmp:
        if str(path).endswith(".parquet"):
            frame.to_parquet(tmp, index=False)
        else:
            frame.to_csv(tmp, index=False, float_format="%.10g")
    return str(path)


def write_summary(
    path: str | os.PathLike,
    *,
    verdict: str,
    figures: Sequence[str | os.PathLike],
    table: str | os.PathLike | None,
    numbers: dict[str, Any],
    started: float,
    seed: int | None = None,
    inputs: Sequence[str | os.PathLike] = (),
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    summary = {
        "verdict": verdict,
        "figures": [str(f) for f in figures],
        "table": None if table is None else str(table),
        "numbers": _clean(numbers),
        **(extra or {}),
        "meta": meta_block(seed=seed, started=started, inputs=inputs),
    }
    write_json(path, summary)
    return summary


def _clean(value: Any) -> Any:
    """JSON-safe numbers: numpy scalars to Python, NaN/inf to None (JSON has no NaN)."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, np.ndarray):
        return [_clean(v) for v in value.tolist()]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


def fmt_p(p: float | None) -> str:
    if p is None or not np.isfinite(p):
        return "p=n/a"
    return f"p={p:.2g}" if p >= 1e-300 else "p<1e-300"


# ---------------------------------------------------------------- inputs
def load_per_class(metrics_path: str | os.PathLike) -> pd.DataFrame:
    """The per-class table of an evaluate metrics.json (class, name, n, accuracy, ...)."""
    metrics = read_json(metrics_path)
    try:
        return pd.DataFrame(metrics["per_class"])
    except KeyError:
        raise FeatgapError(f"{metrics_path}: no per_class block (was it written by scripts.evaluate.evaluate?)") from None


def label_counts(manifest: str | os.PathLike, num_classes: int) -> np.ndarray:
    """Rows per class of a split, reading the label column only."""
    labels = read_split(manifest, features=False, columns=("label",)).label
    labels = labels.astype(np.int64)
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise FeatgapError(f"{manifest}: labels outside 0..{num_classes - 1} (config num_classes)")
    return np.bincount(labels, minlength=num_classes)


def class_counts(
    manifests: dict[str, str | os.PathLike], num_classes: int, names_path: str | None, out: str | os.PathLike
) -> pd.DataFrame:
    started = time.perf_counter()
    names = load_class_names(names_path, num_classes)
    frame = pd.DataFrame({"class": np.arange(num_classes), "name": names})
    for split in SPLITS:
        frame[f"{split}_rows"] = label_counts(manifests[split], num_classes)
    write_table(frame, out)
    del started
    return frame


def read_class_counts(path: str | os.PathLike) -> pd.DataFrame:
    frame = pd.read_csv(path, keep_default_na=False)
    need = {"class", "name", "train_rows", "test1_rows", "test2_rows"}
    if not need <= set(frame.columns):
        raise FeatgapError(f"{path}: expected columns {sorted(need)}, found {list(frame.columns)}")
    return frame
