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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from scripts.lib.featio.atomic import atomic_path
from scripts.lib.featio.errors import FeatgapError
from scripts.lib.options import merge_options

HISTORY_COLUMNS = ["phase", "epoch", "candidate", "lr", "weight_decay", "train_loss", "train_acc",
                   "holdout_loss", "holdout_acc", "seconds"]


# The settings classes have no defaults of their own: parse_config fills every field from the
# config schema (scripts.lib.options), the one place defaults are written. SECTION names the schema node.
@dataclass
class TrainSettings:
    """The config's `train:` section: data, device and selection settings shared by all heads."""

    SECTION: ClassVar[str] = "train"
    device: str
    threads: int
    memory_budget_mb: float
    placement: str  # auto | device | host | stream (scripts.lib.training.data.choose_placement)
    cuda_graphs: bool  # replay each training step from a captured CUDA graph (scripts.lib.training.grid.StepRunner)
    precision: str  # auto | bf16 | float32: the training step's matmuls (scripts.lib.device.training_autocast)
    holdout_fraction: float
    eval_batch_size: int


@dataclass
class HeadConfig:
    """One entry of the config's `heads:` section (what each key means: the schema)."""

    SECTION: ClassVar[str] = "heads.*"
    type: str  # linear | mlp
    hidden: list  # mlp widths
    dropout: float
    optimizer: str  # adamw | sgd
    lr: list
    weight_decay: list
    momentum: float  # sgd only
    epochs: int
    warmup_epochs: float
    batch_size: int
    label_smoothing: float
    class_balanced: bool
    standardize: bool
    l2_normalize: bool
    patience: int | None  # early stopping: epochs without holdout improvement
    selection: str  # grid | halving (scripts.train.train_head.halving_rungs)
    halving_eta: int
    halving_min_epochs: int
    refit: bool
    calibrate: bool
    pca_whiten: int | None  # improve variants: PCA-whitening, feature noise, mixup, logit adjustment
    feature_noise: float
    mixup: float
    logit_adjustment: float


def parse_config(cls, values: Mapping[str, Any] | None, where: str):
    """A settings dataclass from a config dict over the schema's defaults; unknown keys and wrong
    kinds are errors naming the key (`where`, e.g. heads.linear)."""
    config = cls(**merge_options(dict(values or {}), cls.SECTION, where=where))
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
