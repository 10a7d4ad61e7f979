"""Library: the settings of a training job and its history table, shared by the train_head and
baselines steps (and improve_train, which runs train_head).

TrainSettings is the config's `train:` section, HeadConfig one entry of `heads:`; parse_config
builds either from a config dict, naming the key of any unknown or invalid value. write_history
writes history.csv (HISTORY_COLUMNS) for heads and baselines alike.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from scripts.featio import FeatgapError, atomic_path

HISTORY_COLUMNS = ["phase", "epoch", "candidate", "lr", "weight_decay", "train_loss", "train_acc",
                   "holdout_loss", "holdout_acc", "seconds"]


@dataclass
class TrainSettings:
    """The config's `train:` section: data, device and selection settings shared by all heads."""

    device: str = "auto"
    threads: int = 2
    memory_budget_mb: float = 12000
    placement: str = "auto"  # auto | device | host | stream (scripts.train_data.choose_placement)
    cuda_graphs: bool = True  # replay each training step from a captured CUDA graph (scripts.train_grid.StepRunner)
    holdout_fraction: float = 0.02
    eval_batch_size: int = 8192


@dataclass
class HeadConfig:
    """One entry of the config's `heads:` section."""

    type: str = "linear"  # linear | mlp
    hidden: list = field(default_factory=list)  # mlp widths, e.g. [1024]
    dropout: float = 0.0
    optimizer: str = "adamw"  # adamw | sgd
    lr: list = field(default_factory=lambda: [1e-3])
    weight_decay: list = field(default_factory=lambda: [0.0])
    momentum: float = 0.9  # sgd only
    epochs: int = 10
    warmup_epochs: float = 1.0
    batch_size: int = 1024
    label_smoothing: float = 0.0
    class_balanced: bool = False
    standardize: bool = True
    l2_normalize: bool = False
    patience: int | None = None  # early stopping: epochs without holdout improvement
    # grid: every candidate trains for all epochs. halving: successive halving, i.e. after epochs
    # min_epochs·eta^i only the best 1/eta of the candidates (by holdout top-1) train on. eta 2:
    # on the demo and the 100k-row benchmark it kept the grid's winner at 3.5× less work, where
    # eta 3 once dropped it after the first epoch (tests/benchmarks/bench_selection.py).
    selection: str = "grid"
    halving_eta: int = 2
    halving_min_epochs: int = 1
    refit: bool = True
    calibrate: bool = True
    # Variants (see the improve stage): PCA-whitening to this many dimensions (folded into the saved
    # head's first layer), Gaussian feature noise (SD, standardised units), mixup (Beta α), and the
    # logit-adjusted loss (τ · log class prior; 0 = off). All off by default.
    pca_whiten: int | None = None
    feature_noise: float = 0.0
    mixup: float = 0.0
    logit_adjustment: float = 0.0  # fit a softmax temperature on the holdout (NLL/ECE; top-1 unchanged)


def parse_config(cls, values: Mapping[str, Any] | None, where: str):
    """A dataclass from a config dict; unknown keys and wrong kinds are errors naming the key."""
    values = dict(values or {})
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise FeatgapError(f"{where}: unknown key(s) {unknown}; allowed: {sorted(known)}")
    config = cls(**values)
    if isinstance(config, HeadConfig):
        _check_head(config, where)
    return config


def _check_head(cfg: HeadConfig, where: str) -> None:
    if cfg.type not in ("linear", "mlp"):
        raise FeatgapError(f"{where}.type must be linear or mlp, got {cfg.type!r}")
    if cfg.type == "linear" and cfg.hidden:
        raise FeatgapError(f"{where}: a linear head has no hidden layers (got hidden={cfg.hidden})")
    if cfg.type == "mlp" and not cfg.hidden:
        raise FeatgapError(f"{where}: an mlp head needs hidden widths, e.g. hidden: [1024]")
    for name in ("lr", "weight_decay"):
        value = getattr(cfg, name)
        if isinstance(value, (int, float)):
            setattr(cfg, name, [float(value)])
        if not getattr(cfg, name) or any(float(v) < 0 for v in getattr(cfg, name)):
            raise FeatgapError(f"{where}.{name} must be a non-empty list of numbers >= 0")
    if min(cfg.feature_noise, cfg.mixup, cfg.logit_adjustment) < 0:
        raise FeatgapError(f"{where}: feature_noise, mixup and logit_adjustment must be >= 0")
    if cfg.pca_whiten is not None and cfg.pca_whiten < 1:
        raise FeatgapError(f"{where}.pca_whiten must be a number of dimensions >= 1, got {cfg.pca_whiten}")
    if cfg.selection not in ("grid", "halving"):
        raise FeatgapError(f"{where}.selection must be grid or halving, got {cfg.selection!r}")
    if cfg.halving_eta < 2 or cfg.halving_min_epochs < 1:
        raise FeatgapError(f"{where}: halving_eta must be >= 2 and halving_min_epochs >= 1")
    if cfg.optimizer not in ("adamw", "sgd"):
        raise FeatgapError(f"{where}.optimizer must be adamw or sgd, got {cfg.optimizer!r}")
    if cfg.epochs < 1 or cfg.batch_size < 1:
        raise FeatgapError(f"{where}: epochs and batch_size must be >= 1")
    if not 0 <= cfg.dropout < 1 or not 0 <= cfg.label_smoothing < 1:
        raise FeatgapError(f"{where}: dropout and label_smoothing must be in [0, 1)")


def write_history(path: Path, rows: list[dict]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=HISTORY_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({key: _fmt(row[key]) for key in HISTORY_COLUMNS})
    with atomic_path(path) as tmp:
        tmp.write_text(buffer.getvalue())


def _fmt(value: Any) -> Any:
    if isinstance(value, (float, np.floating)):
        return "" if not np.isfinite(value) else f"{float(value):.6g}"
    return value
