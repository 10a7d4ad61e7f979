"""Write train / test1 / test2 CSVs in the exact schema of the real EVA-02 feature files.

What is mimicked (docs/data-contract.md, Input CSV): header `,path,label,0,…,D-1` with a pandas index column;
rows sorted by class; ImageNet-like 732–1300 train rows per class (scaled); balanced test sets;
real-looking paths; float32 values printed as shortest repr; features that come out of a
LayerNorm with per-feature affine offset and scale. Test set 2 is harder in three known, planted
ways, written to `truth.json` so that tests can check the analyses find them:
  * more noise everywhere (`test2_noise`),
  * a set of features shifted by about `shift_size` feature-stds (`shift_features`), before the
    LayerNorm by default (`shift_stage`),
  * a set of classes with extra noise (`hard_classes`).
Generation is streamed class block by class block: memory stays small at any size.
"""
from __future__ import annotations

import argparse
import hashlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import polars as pl
from tqdm import tqdm

from scripts.lib.featio.atomic import atomic_path
from scripts.lib.featio.cli import run_cli
from scripts.lib.featio.jsonio import write_json

# ImageNet-1k: most classes have 1300 train images, the rest between 732 and 1299.
FULL_CLASS_ROWS, MIN_CLASS_ROWS, FULL_CLASS_SHARE = 1300, 732, 0.89


@dataclass
class DemoSpec:
    classes: int = 100
    dim: int = 256
    train_scale: float = 0.1  # train rows per class = scale × (732..1300)
    train_rows: int | None = None  # exact total train rows (e.g. 1_281_167); overrides the sum
    test1_per_class: int = 50
    test2_per_class: int = 10
    separation: float = 0.325 # distance of class means in noise units: sets the accuracy level
    rank: int = 64  # shared low-rank noise, as real features are correlated
    test2_noise: float = 1.12
    shift_features: int = 16
    shift_size: float = 0.35
    shift_stage: str = "pre_layernorm"  # or post_layernorm: exactly shift_features move (tests)
    hard_classes: int = 10
    hard_noise: float = 1.6
    # Planted causes for the answer's scenario tests (all off by default: output unchanged).
    label_noise: float = 0.0  # share of test-2 images drawn from another class than their label
    drift_classes: int = 0  # classes whose test-2 mean moves towards another class's mean
    drift: float = 0.0  # fraction of the way to that class's mean
    seed: int = 0
    extra: dict = field(default_factory=dict)


def train_counts(spec: DemoSpec, rng: np.random.Generator) -> np.ndarray:
    full = rng.random(spec.classes) < FULL_CLASS_SHARE
    counts = np.where(full, FULL_CLASS_ROWS, rng.integers(MIN_CLASS_ROWS, FULL_CLASS_ROWS, spec.classes))
    counts = np.maximum(1, np.round(counts * spec.train_scale)).astype(np.int64)
    if spec.train_rows is not None:
        counts = _reach_total(counts, spec.train_rows, spec.train_scale)
    return counts


def _reach_total(counts: np.ndarray, total: int, scale: float) -> np.ndarray:
    """Add or remove rows one class at a time, staying inside the scaled 732..1300 range."""
    low = max(1, round(MIN_CLASS_ROWS * scale))
    high = max(low, round(FULL_CLASS_ROWS * scale))
    if not low * len(counts) <= total <= high * len(counts):
        raise ValueError(f"train_rows={total} cannot be spread over {len(counts)} classes of {low}..{high} rows")
    counts = counts.copy()
    while (diff := total - int(counts.sum())) != 0:
        room = (high - counts) if diff > 0 else (counts - low)
        eligible = np.flatnonzero(room > 0)
        share = np.minimum(room[eligible], max(1, abs(diff) // len(eligible)))
        share[np.cumsum(share) > abs(diff)] = 0
        if share.sum() == 0:
            share[0] = 1
        counts[eligible] += np.sign(diff) * share
    return counts


def wnids(classes: int, rng: np.random.Generator) -> list[str]:
    """Sorted unique WordNet-style ids, so that label order = sorted folder order, as in ImageNet."""
    ids = rng.choice(np.arange(1_000_000, 15_000_000), size=classes, replace=False)
    return [f"n{i:08d}" for i in np.sort(ids)]


class FeatureModel:
    """Class means + shared low-rank noise + isotropic noise, then LayerNorm with affine."""

    def __init__(self, spec: DemoSpec):
        rng = np.random.default_rng([spec.seed, 1])
        d = spec.dim
        self.spec = spec
        self.means = rng.standard_normal((spec.classes, d)) * spec.separation
        self.basis = rng.standard_normal((spec.rank, d)) / np.sqrt(spec.rank)
        self.class_noise = rng.uniform(0.85, 1.15, spec.classes)
        self.gamma = rng.uniform(0.5, 2.0, d)
        self.beta = rng.normal(0.0, 0.5, d)
        self.shifted = np.sort(rng.choice(d, size=min(spec.shift_features, d), replace=False))
        self.hard = np.sort(rng.choice(spec.classes, size=min(spec.hard_classes, spec.classes), replace=False))
        if spec.drift_classes > 0:  # own stream, so the default draws above stay as they were
            drift_rng = np.random.default_rng([spec.seed, 5])
            self.drifted = np.sort(drift_rng.choice(spec.classes, size=min(spec.drift_classes, spec.classes),
                                                    replace=False))
            self.drift_target = (self.drifted + drift_rng.integers(1, spec.classes, len(self.drifted))) % spec.classes

    def sample(self, label: int, n: int, rng: np.random.Generator, split: str) -> np.ndarray:
        s = self.spec
        noise = self.class_noise[label]
        if split == "test2":
            noise *= s.test2_noise * (s.hard_noise if label in self.hard else 1.0)
        z = rng.standard_normal((n, s.dim)) + rng.standard_normal((n, s.rank)) @ self.basis
        x = self.means[label] + noise * z
        if split == "test2" and s.drift_classes > 0 and label in self.drifted:
            target = self.drift_target[np.searchsorted(self.drifted, label)]
            x += s.drift * (self.means[target] - self.means[label])
        if split == "test2" and s.label_noise > 0:
            # Images of another class filed under this label: a wrong label, not a harder image.
            flip = np.flatnonzero(rng.random(n) < s.label_noise)
            others = (label + rng.integers(1, s.classes, len(flip))) % s.classes
            x[flip] = self.means[others] + noise * z[flip]
        shift = split == "test2" and s.shift_features > 0
        if shift and s.shift_stage == "pre_layernorm":
            # As a real input shift would act. The LayerNorm then moves every feature a little.
            x[:, self.shifted] += s.shift_size * np.sqrt(s.separation**2 + 2.0)
        x = (x - x.mean(axis=1, keepdims=True)) / x.std(axis=1, keepdims=True)  # LayerNorm
        x = x * self.gamma + self.beta
        if shift and s.shift_stage == "post_layernorm":
            # Exactly these features move (for tests), but rows leave the LayerNorm's exact
            # per-row constraint, so a domain classifier separates the sets perfectly.
            x[:, self.shifted] += s.shift_size * self.gamma[self.shifted]
        return x.astype(np.float32)


def split_paths(split: str, wnid: str, label: int, n: int, counter: list[int], seed: int) -> list[str]:
    if split == "train":
        return [f"train/{wnid}/{wnid}_{i + 1}.JPEG" for i in range(n)]
    if split == "test1":
        start = counter[0]
        counter[0] += n
        return [f"val/{wnid}/ILSVRC2012_val_{start + i + 1:08d}.JPEG" for i in range(n)]
    return [
        "imagenetv2-matched-frequency-format-val/"
        f"{label}/{hashlib.sha1(f'{seed}-{label}-{i}'.encode()).hexdigest()}.jpeg"
        for i in range(n)
    ]


def write_split(path: Path, split: str, counts: np.ndarray, model: FeatureModel, names: list[str]) -> int:
    spec = model.spec
    rng = np.random.default_rng([spec.seed, {"train": 2, "test1": 3, "test2": 4}[split]])
    header = ",path,label," + ",".join(str(i) for i in range(spec.dim)) + "\n"
    counter, row = [0], 0
    with atomic_path(path) as tmp, tmp.open("wb") as handle:
        handle.write(header.encode())
        for label in tqdm(range(spec.classes), desc=f"generate {split}", unit="class", leave=False):
            n = int(counts[label])
            feats = model.sample(label, n, rng, split)
            frame = pl.DataFrame({"": np.arange(row, row + n, dtype=np.int64)})
            frame = frame.with_columns(
                pl.Series("path", split_paths(split, names[label], label, n, counter, spec.seed)),
                pl.lit(label, dtype=pl.Int64).alias("label"),
                *[pl.Series(str(j), feats[:, j]) for j in range(spec.dim)],
            )
            frame.write_csv(handle, include_header=False)
            row += n
    return row


def generate(out_dir: str | Path, spec: DemoSpec) -> dict:
    """Write train.csv, test1.csv, test2.csv and truth.json into `out_dir`; return the truth."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([spec.seed, 0])
    model = FeatureModel(spec)
    names = wnids(spec.classes, rng)
    counts = {
        "train": train_counts(spec, rng),
        "test1": np.full(spec.classes, spec.test1_per_class),
        "test2": np.full(spec.classes, spec.test2_per_class),
    }
    rows = {split: write_split(out / f"{split}.csv", split, counts[split], model, names) for split in counts}
    truth = {
        "spec": asdict(spec),
        "rows": rows,
        "train_counts": counts["train"].tolist(),
        "wnids": names,
        "shifted_features": model.shifted.tolist(),
        "hard_classes": model.hard.tolist(),
    }
    write_json(out / "truth.json", truth)
    return truth


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", required=True)
    defaults = DemoSpec()
    for name, value in asdict(defaults).items():
        if name == "extra":
            continue
        kind = int if name == "train_rows" else type(value)
        parser.add_argument(f"--{name.replace('_', '-')}", type=kind, default=value)
    args = vars(parser.parse_args(argv))
    out_dir = args.pop("out_dir")
    truth = generate(out_dir, DemoSpec(**args))
    print(f"wrote {truth['rows']} rows to {out_dir}")


if __name__ == "__main__":
    run_cli(main)
