"""Shard writers for the training tests and benchmark: class-sorted data straight to Parquet.

Uses the demo generator's feature model without the CSV round trip (fast at 100k × 1024).
A helper module, not a test module (its round trip is checked in tests/test_featio.py).
"""
from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np

from scripts.data.generate_demo import DemoSpec, FeatureModel
from scripts.lib.featio.jsonio import write_json
from scripts.lib.featio.shards import write_shard


def write_split_shards(folder: Path, labels: np.ndarray, features: np.ndarray, *, shards: int = 2,
                       row_group_rows: int = 1024) -> Path:
    """Write rows in the given order into `shards` part files + a minimal manifest; return it."""
    folder = Path(folder)
    bounds = np.linspace(0, len(labels), shards + 1).astype(int)
    for i, (lo, hi) in enumerate(itertools.pairwise(bounds)):
        write_shard(folder / f"part-{i:05d}.parquet", row=np.arange(lo, hi), path_col=None,
                    label=labels[lo:hi], features=features[lo:hi], row_group_rows=row_group_rows)
    manifest = folder.with_name(f"{folder.name}.manifest.json")
    write_json(manifest, {"folder": folder.name, "rows": len(labels), "dim": int(features.shape[1]), "shards": int(shards)})
    return manifest


def make_dataset(root: Path, spec: DemoSpec, train_per_class: int, test_per_class: int, *,
                 shards: int = 2, row_group_rows: int = 1024) -> dict:
    """Class-sorted train shards (as the real file) + in-memory test rows from the same model."""
    model = FeatureModel(spec)
    rng = np.random.default_rng([spec.seed, 7])
    parts = {}
    for split, per in (("train", train_per_class), ("test1", test_per_class)):
        labels = np.repeat(np.arange(spec.classes), per).astype(np.int16)
        feats = np.concatenate([model.sample(c, per, rng, "train") for c in range(spec.classes)])
        parts[split] = (labels, feats)
    manifest = write_split_shards(Path(root) / "train", *parts["train"], shards=shards,
                                  row_group_rows=row_group_rows)
    return {"manifest": manifest, "test_labels": parts["test1"][0].astype(np.int64),
            "test_features": parts["test1"][1], "train_labels": parts["train"][0].astype(np.int64),
            "train_features": parts["train"][1]}
