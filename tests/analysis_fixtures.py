"""Shared test data for evaluate and the analyses (imported by tests/test_evaluate*.py and
tests/test_analysis*.py): splits sampled in memory from the demo generator's FeatureModel,
written straight to the Parquet contract with featio.write_shard (no CSV round trip), plus a
nearest-class-mean linear head saved in the scripts.lib.heads checkpoint format.

Planted truth: `shifted_features` (test2 mean shift) and `hard_classes` (extra noise in test2).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from step_layout import outputs_in

from scripts.data.generate_demo import DemoSpec, FeatureModel, train_counts
from scripts.lib import heads
from scripts.lib.featio.jsonio import write_json
from scripts.lib.featio.shards import write_shard

SPEC = {"classes": 20, "dim": 48, "rank": 8, "test1_per_class": 60, "test2_per_class": 40, "train_scale": 0.05,
        "shift_features": 5, "shift_size": 0.5, "shift_stage": "post_layernorm", "hard_classes": 4, "hard_noise": 2.0,
        "separation": 0.6, "seed": 3}


def sample_split(model: FeatureModel, counts: np.ndarray, split: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng([seed, {"train": 2, "test1": 3, "test2": 4}[split]])
    feats = [model.sample(c, int(n), rng, split) for c, n in enumerate(counts)]
    labels = np.repeat(np.arange(len(counts)), counts)
    return np.concatenate(feats), labels


def write_split(root: Path, split: str, feats: np.ndarray, labels: np.ndarray, parts: int = 1) -> Path:
    """Shards under root/{split}/ and a (minimal) manifest root/{split}.manifest.json."""
    folder = root / split
    bounds = np.linspace(0, len(labels), parts + 1).astype(int)
    for i in range(parts):
        lo, hi = bounds[i], bounds[i + 1]
        write_shard(folder / f"part-{i:05d}.parquet", row=np.arange(lo, hi), label=labels[lo:hi],
                    path_col=[f"{split}/c{lab}/{r}.JPEG" for lab, r in zip(labels[lo:hi], range(lo, hi))],
                    features=feats[lo:hi], row_group_rows=500)
    manifest = root / f"{split}.manifest.json"
    write_json(manifest, {"folder": split, "rows": len(labels), "dim": int(feats.shape[1]), "split": split})
    return manifest


def class_mean_head(path: Path, feats: np.ndarray, labels: np.ndarray, num_classes: int, name: str = "linear") -> Path:
    """A linear head: nearest class mean on standardised features (closed form, deterministic)."""
    mean, std = feats.mean(0), feats.std(0) + 1e-6
    z = (feats - mean) / std
    mu = np.stack([z[labels == c].mean(0) for c in range(num_classes)])
    weight = mu
    bias = -0.5 * (mu**2).sum(1)
    import torch

    ckpt = heads.make_checkpoint(
        name=name, kind="linear", arch={"in_dim": feats.shape[1], "num_classes": num_classes, "hidden": []},
        state_dict={"0.weight": torch.tensor(weight, dtype=torch.float32), "0.bias": torch.tensor(bias, dtype=torch.float32)},
        mean=mean, std=std, l2_normalize=False, hparams={"method": "class_mean"},
    )
    heads.save_head(path, ckpt)
    return path


def build_dataset(root: Path, **overrides) -> dict:
    spec = DemoSpec(**{**SPEC, **overrides})
    model = FeatureModel(spec)
    rng = np.random.default_rng([spec.seed, 0])
    counts = {
        "train": train_counts(spec, rng),
        "test1": np.full(spec.classes, spec.test1_per_class),
        "test2": np.full(spec.classes, spec.test2_per_class),
    }
    data = {"root": root, "spec": spec, "counts": counts, "shifted_features": model.shifted.tolist(),
            "hard_classes": model.hard.tolist()}
    arrays = {}
    for split in ("train", "test1", "test2"):
        feats, labels = sample_split(model, counts[split], split, spec.seed)
        arrays[split] = (feats, labels)
        data[split] = write_split(root, split, feats, labels, parts=2 if split == "train" else 1)
    data["arrays"] = arrays
    data["head"] = class_mean_head(root / "heads" / "linear" / "model.pt", *arrays["train"], spec.classes)
    return data


@pytest.fixture(scope="session")
def planted(tmp_path_factory) -> dict:
    """Dataset with planted shift + hard classes, its manifests and a trained linear head."""
    return build_dataset(tmp_path_factory.mktemp("planted"))


@pytest.fixture(scope="session")
def planted_eval(planted, tmp_path_factory) -> dict:
    """`planted` evaluated on both test sets: {test: metrics.json path}."""
    from scripts.evaluate.evaluate import evaluate

    out = tmp_path_factory.mktemp("eval")
    paths = {}
    for test in ("test1", "test2"):
        evaluate(head_name="linear",
                 head_path=planted["head"], manifest=planted[test], outputs=outputs_in(out / test, "evaluate"),
                 num_classes=planted["spec"].classes, options={"bootstrap": 100}, seed=0)
        paths[test] = out / test
    return paths
