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

Twins (`twins`, off by default): test set 2 rebuilt from the very same random draws with a subset
of its planted causes switched off, one CSV per subset of the planted causes, in `twins/` with
`twins/twins.json`. Each planted parameter belongs to one mechanism of the gap decomposition
(scripts/lib/decomposition): shift → mean_shift, test2_noise → difficulty, hard_classes and
drift_classes → class_concentrated, label_noise → label_noise. A head's top-1 on the twins gives
the true counterfactual share of each cause (the Shapley average of its removal over every subset
of the other causes: scripts.lib.decomposition.shapley.shares_of_removals).
"""
from __future__ import annotations

import argparse
import hashlib
import itertools
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
    twins: bool = False  # also write test set 2 with every subset of the planted causes removed
    seed: int = 0
    extra: dict = field(default_factory=dict)


# The decomposition's mechanisms, in its order (scripts/lib/decomposition/decompose.CAUSES).
MECHANISMS = ("mean_shift", "difficulty", "class_concentrated", "label_noise")


def planted_causes(spec: DemoSpec) -> tuple[str, ...]:
    """The mechanisms this spec plants in test set 2 (those its twins can take away)."""
    on = {"mean_shift": spec.shift_features > 0 and spec.shift_size != 0,
          "difficulty": spec.test2_noise != 1.0,
          "class_concentrated": (spec.hard_classes > 0 and spec.hard_noise != 1.0)
          or (spec.drift_classes > 0 and spec.drift != 0),
          "label_noise": spec.label_noise > 0}
    return tuple(c for c in MECHANISMS if on[c])


def twin_name(present: frozenset[str] | set[str] | tuple[str, ...]) -> str:
    """File stem of the twin with exactly these causes present (`none`: every cause removed)."""
    return "+".join(c for c in MECHANISMS if c in present) or "none"


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

    def sample(self, label: int, n: int, rng: np.random.Generator, split: str,
               present: tuple[str, ...] | frozenset[str] | None = None) -> np.ndarray:
        """`n` images of class `label`. For test set 2, `present` (default: every cause) names the
        causes that act: the random draws are the same whatever it is, so a twin differs from test
        set 2 only by the causes it leaves out."""
        s = self.spec
        on = set(MECHANISMS) if present is None else set(present)
        noise = self.class_noise[label]
        if split == "test2":
            extra = s.hard_noise if label in self.hard and "class_concentrated" in on else 1.0
            noise *= (s.test2_noise if "difficulty" in on else 1.0) * extra
        z = rng.standard_normal((n, s.dim)) + rng.standard_normal((n, s.rank)) @ self.basis
        x = self.means[label] + noise * z
        if split == "test2" and s.drift_classes > 0 and label in self.drifted and "class_concentrated" in on:
            target = self.drift_target[np.searchsorted(self.drifted, label)]
            x += s.drift * (self.means[target] - self.means[label])
        if split == "test2" and s.label_noise > 0:
            # Images of another class filed under this label: a wrong label, not a harder image.
            # Drawn in every twin (same stream); only a twin with label_noise present uses them.
            flip = np.flatnonzero(rng.random(n) < s.label_noise)
            others = (label + rng.integers(1, s.classes, len(flip))) % s.classes
            if "label_noise" in on:
                x[flip] = self.means[others] + noise * z[flip]
        shift = split == "test2" and s.shift_features > 0 and "mean_shift" in on
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


def draw_split(model: FeatureModel, split: str, counts: int | np.ndarray,
               present: tuple[str, ...] | frozenset[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """A split in memory (features, labels): `counts` images per class (one number: balanced), the
    same draws as `write_split` writes with these counts."""
    spec = model.spec
    counts = np.broadcast_to(np.asarray(counts, dtype=np.int64), (spec.classes,))
    rng = np.random.default_rng([spec.seed, {"train": 2, "test1": 3, "test2": 4}[split]])
    x = np.concatenate([model.sample(label, int(counts[label]), rng, split, present)
                        for label in range(spec.classes)])
    return x, np.repeat(np.arange(spec.classes), counts)


def demo_counts(spec: DemoSpec) -> dict[str, np.ndarray]:
    """Rows per class of each split, as `generate` draws them (the class names come first)."""
    rng = np.random.default_rng([spec.seed, 0])
    wnids(spec.classes, rng)
    return {"train": train_counts(spec, rng), "test1": np.full(spec.classes, spec.test1_per_class),
            "test2": np.full(spec.classes, spec.test2_per_class)}


def write_split(path: Path, split: str, counts: np.ndarray, model: FeatureModel, names: list[str],
                present: tuple[str, ...] | frozenset[str] | None = None) -> int:
    spec = model.spec
    rng = np.random.default_rng([spec.seed, {"train": 2, "test1": 3, "test2": 4}[split]])
    header = ",path,label," + ",".join(str(i) for i in range(spec.dim)) + "\n"
    counter, row = [0], 0
    with atomic_path(path) as tmp, tmp.open("wb") as handle:
        handle.write(header.encode())
        for label in tqdm(range(spec.classes), desc=f"generate {split}", unit="class", leave=False):
            n = int(counts[label])
            feats = model.sample(label, n, rng, split, present)
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
    model = FeatureModel(spec)
    names = wnids(spec.classes, np.random.default_rng([spec.seed, 0]))
    counts = demo_counts(spec)
    rows = {split: write_split(out / f"{split}.csv", split, counts[split], model, names) for split in counts}
    described = asdict(spec)
    if not spec.twins:
        described.pop("twins")  # truth.json stays as it was when no twins are asked for
    truth = {
        "spec": described,
        "rows": rows,
        "train_counts": counts["train"].tolist(),
        "wnids": names,
        "shifted_features": model.shifted.tolist(),
        "hard_classes": model.hard.tolist(),
    }
    if spec.twins:
        truth["twins"] = write_twins(out / "twins", counts["test2"], model, names)
    write_json(out / "truth.json", truth)
    return truth


def write_twins(folder: Path, counts: np.ndarray, model: FeatureModel, names: list[str]) -> dict:
    """Test set 2 once per subset of its planted causes (the same draws, the others removed) and
    twins/twins.json: {causes, files: {twin name: file}}; the full subset is test set 2 itself."""
    folder.mkdir(parents=True, exist_ok=True)
    planted = planted_causes(model.spec)
    files = {}
    for k in range(len(planted) + 1):
        for present in itertools.combinations(planted, k):
            name = twin_name(present)
            write_split(folder / f"test2.{name}.csv", "test2", counts, model, names, present)
            files[name] = f"test2.{name}.csv"
    index = {"causes": list(planted), "files": files}
    write_json(folder / "twins.json", index)
    return index


def _boolean(text: str) -> bool:
    if text not in ("True", "False", "true", "false"):
        raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")
    return text in ("True", "true")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", required=True)
    defaults = DemoSpec()
    for name, value in asdict(defaults).items():
        if name == "extra":
            continue
        if isinstance(value, bool):
            parser.add_argument(f"--{name.replace('_', '-')}", type=_boolean, default=value)
            continue
        kind = int if name == "train_rows" else type(value)
        parser.add_argument(f"--{name.replace('_', '-')}", type=kind, default=value)
    args = vars(parser.parse_args(argv))
    out_dir = args.pop("out_dir")
    truth = generate(out_dir, DemoSpec(**args))
    print(f"wrote {truth['rows']} rows to {out_dir}")


if __name__ == "__main__":
    run_cli(main)
