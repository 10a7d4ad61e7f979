"""Shared pytest fixtures: tiny generated datasets in the real schema, as CSV and as Parquet."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from scripts.data.generate_demo import DemoSpec, generate  # noqa: E402

TINY = {"classes": 12, "dim": 32, "train_scale": 0.05, "test1_per_class": 20, "test2_per_class": 10, "rank": 8,
            "shift_features": 4, "hard_classes": 3, "separation": 0.8}


@pytest.fixture(scope="session")
def tiny_csv(tmp_path_factory) -> dict:
    """Three tiny CSVs (12 classes, 32 features) + truth.json; returns paths and the truth."""
    out = tmp_path_factory.mktemp("tiny_csv")
    truth = generate(out, DemoSpec(**TINY))
    return {"dir": out, "truth": truth, **{s: out / f"{s}.csv" for s in ("train", "test1", "test2")}}


@pytest.fixture(scope="session")
def tiny_parquet(tiny_csv, tmp_path_factory) -> dict:
    """The tiny CSVs converted to the Parquet contract: {split: manifest}, plus `truth`."""
    from scripts.data.convert import convert_file

    out = tmp_path_factory.mktemp("tiny_parquet")
    manifests = {}
    for split in ("train", "test1", "test2"):
        manifests[split] = out / f"{split}.manifest.json"
        convert_file(tiny_csv[split], out / split, manifests[split],
                     num_classes=TINY["classes"], dim=TINY["dim"], parts=2 if split == "train" else 1)
    return {"truth": tiny_csv["truth"], **manifests}
