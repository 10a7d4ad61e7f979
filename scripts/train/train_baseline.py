"""Seed-style sklearn baselines with the heads' output contract (model.pt, history.csv, selection.json).

  sgd     SGDClassifier(loss="log_loss") by partial_fit over globally shuffled chunks, `epochs`
          passes, one run per `alpha` in the grid.
  logreg  LogisticRegression(lbfgs, multinomial) on a stratified subsample of the fit rows,
          one fit per `C` in the grid.

Both see the same preprocessing (standardisation with the train split's mean/std) and the same
stratified holdout as the PyTorch heads (same seed → same rows); the grid value with the best
holdout top-1 wins (ties: lower holdout loss, then grid order). There is no refit: these are the
seeds' methods as they were.

Both are linear models, so model.pt is a scripts.lib.heads checkpoint of kind "linear" (hidden = []):
state_dict "0.weight" = coef_ (C, D), "0.bias" = intercept_ (C,), with mean/std stored, so
`evaluate` applies them with scripts.lib.heads.predict_logits like any head. For logreg the softmax
of these logits is exactly predict_proba. SGD is one-vs-rest: the argmax is its prediction, but
softmax(logits) is not sklearn's normalised-sigmoid predict_proba (its NLL/ECE are those of the
softmax). A class absent from a fit gets weight 0 and bias -1e4 (never predicted).
In history.csv, `weight_decay` is the L2 strength per sample (alpha for SGD, 1/(C·n) for
logreg: the same λ as the heads' SGD weight decay), and `lr` is empty.
"""
from __future__ import annotations

import argparse
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from threadpoolctl import threadpool_limits
from tqdm import tqdm

from scripts.lib.featio.cli import run_cli
from scripts.lib.featio.errors import FeatgapError
from scripts.lib.featio.jsonio import parse_json_arg, write_json
from scripts.lib.featio.provenance import meta_block
from scripts.lib.heads import make_checkpoint, save_head
from scripts.lib.step_outputs import add_output_args, output_paths, parse_outputs
from scripts.lib.training.config import TrainSettings, parse_config, write_history
from scripts.lib.training.data import TrainSet, load_train, stratified_holdout

# The heads' output contract (scripts/train/train_head.py): the rule chooses the paths.
OUTPUTS = {"model": ".pt", "history": ".csv", "selection": ".json"}
MISSING_BIAS = -1e4


@dataclass
class BaselineConfig:
    """One entry of the config's `baselines:` section (defaults and meanings: the schema; filled by
    train_config.parse_config)."""

    SECTION: ClassVar[str] = "baselines.*"
    type: str  # sgd | logreg
    standardize: bool
    l2_normalize: bool
    alpha: list  # sgd
    epochs: int
    chunk_rows: int
    C: list  # logreg
    max_iter: int
    tol: float
    subsample: int | None  # fit rows used by logreg; null = all


def check_baseline(cfg: BaselineConfig, where: str) -> None:
    if cfg.type not in ("sgd", "logreg"):
        raise FeatgapError(f"{where}.type must be sgd or logreg, got {cfg.type!r}")
    grid = cfg.alpha if cfg.type == "sgd" else cfg.C
    key = "alpha" if cfg.type == "sgd" else "C"
    if isinstance(grid, (int, float)):
        grid = [float(grid)]
        setattr(cfg, key, grid)
    if not grid or any(float(v) <= 0 for v in grid):
        raise FeatgapError(f"{where}.{key} must be a non-empty list of numbers > 0")
    if cfg.epochs < 1 or cfg.chunk_rows < 1 or cfg.max_iter < 1:
        raise FeatgapError(f"{where}: epochs, chunk_rows and max_iter must be >= 1")
    if cfg.subsample is not None and cfg.subsample < 1:
        raise FeatgapError(f"{where}.subsample must be >= 1 or null")


def linear_state(model, num_classes: int, dim: int) -> dict[str, torch.Tensor]:
    """An sklearn linear classifier as the state_dict of a one-Linear head (all C classes)."""
    coef, intercept, classes = model.coef_, model.intercept_, model.classes_.astype(np.int64)
    if coef.shape[0] == 1 and len(classes) == 2:  # binary: sklearn keeps only the positive class
        coef, intercept = np.vstack([np.zeros_like(coef), coef]), np.r_[0.0, intercept]
    weight = np.zeros((num_classes, dim), dtype=np.float32)
    bias = np.full(num_classes, MISSING_BIAS, dtype=np.float32)
    weight[classes], bias[classes] = coef, intercept
    return {"0.weight": torch.from_numpy(weight), "0.bias": torch.from_numpy(bias)}


def holdout_scores(state: dict[str, torch.Tensor], x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(mean NLL of softmax(logits), top-1) on preprocessed holdout rows."""
    if len(y) == 0:
        return float("nan"), float("nan")
    logits = torch.from_numpy(x) @ state["0.weight"].T + state["0.bias"]
    logp = logits.log_softmax(1)
    nll = -logp[torch.arange(len(y)), torch.from_numpy(y)].mean().item()
    return nll, float((logits.argmax(1).numpy() == y).mean())


def fit_sgd(data: TrainSet, cfg: BaselineConfig, hold_x, hold_y, seed: int, threads: int = 1) -> list[dict]:
    from sklearn.linear_model import SGDClassifier

    runs, classes = [], np.arange(data.num_classes)
    for i, alpha in enumerate(cfg.alpha):
        # n_jobs: the one-vs-rest binary problems run in parallel threads.
        model = SGDClassifier(loss="log_loss", alpha=float(alpha), random_state=seed, n_jobs=threads)
        rng = np.random.default_rng([seed, 3, i])
        history = []
        for epoch in tqdm(range(cfg.epochs), desc=f"sgd alpha={alpha}", unit="epoch"):
            t0 = time.perf_counter()
            for x, y in data.batches(data.fit_rows, cfg.chunk_rows, rng):
                model.partial_fit(x.cpu().numpy(), y.cpu().numpy(), classes=classes)
            state = linear_state(model, data.num_classes, data.dim)
            loss, acc = holdout_scores(state, hold_x, hold_y)
            history.append({"phase": "grid", "epoch": epoch + 1, "candidate": i, "lr": float("nan"),
                            "weight_decay": float(alpha), "train_loss": float("nan"), "train_acc": float("nan"),
                            "holdout_loss": loss, "holdout_acc": acc, "seconds": time.perf_counter() - t0})
        runs.append({"candidate": i, "alpha": float(alpha), "state": state, "history": history,
                     "holdout_loss": loss, "holdout_acc": acc, "rows": len(data.fit_rows)})
    return runs


def fit_logreg(data: TrainSet, cfg: BaselineConfig, hold_x, hold_y, seed: int, threads: int = 1) -> list[dict]:
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    rows = data.fit_rows
    if cfg.subsample is not None and cfg.subsample < len(rows):
        # Stratified subsample: keep the class proportions of the fit rows.
        frac = 1.0 - cfg.subsample / len(rows)
        rows, _ = stratified_holdout(data.labels[rows], frac, np.random.default_rng([seed, 4]))
        rows = data.fit_rows[rows]
    x, y = data.features(rows), data.labels[rows]
    runs = []
    for i, c in enumerate(cfg.C):
        t0 = time.perf_counter()
        model = LogisticRegression(C=float(c), max_iter=cfg.max_iter, tol=cfg.tol)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ConvergenceWarning)
            model.fit(x, y)
        converged = not any(issubclass(w.category, ConvergenceWarning) for w in caught)
        state = linear_state(model, data.num_classes, data.dim)
        loss, acc = holdout_scores(state, hold_x, hold_y)
        seconds = time.perf_counter() - t0
        print(f"logreg C={c}: holdout top-1 {acc:.4f}, {int(model.n_iter_.max())} iterations, {seconds:.1f}s"
              + ("" if converged else " (not converged: raise max_iter)"))
        lam = 1.0 / (float(c) * len(rows))
        history = [{"phase": "grid", "epoch": int(model.n_iter_.max()), "candidate": i, "lr": float("nan"),
                    "weight_decay": lam, "train_loss": float("nan"), "train_acc": float("nan"),
                    "holdout_loss": loss, "holdout_acc": acc, "seconds": seconds}]
        runs.append({"candidate": i, "C": float(c), "state": state, "history": history, "holdout_loss": loss,
                     "holdout_acc": acc, "rows": len(rows), "converged": converged,
                     "iterations": int(model.n_iter_.max())})
    return runs


def train_baseline(manifest: str | Path, outputs: Mapping[str, str | Path], *, name: str, baseline: Mapping[str, Any],
                   train: Mapping[str, Any], num_classes: int, seed: int = 0, threads: int | None = None) -> dict:
    """Fit baseline `name` on the split of `manifest`; write the model, history and selection outputs."""
    started = time.perf_counter()
    files = output_paths(outputs, OUTPUTS, "baselines")
    cfg = parse_config(BaselineConfig, baseline, f"baselines.{name}")
    check_baseline(cfg, f"baselines.{name}")
    settings = parse_config(TrainSettings, train, "train")
    threads = threads or settings.threads
    torch.set_num_threads(max(1, threads))
    # logreg reads only its subsample: stream (one stats pass) instead of loading the matrix.
    budget = 0 if cfg.type == "logreg" else settings.memory_budget_mb
    data = load_train(manifest, num_classes=num_classes, holdout_fraction=settings.holdout_fraction,
                      seed=seed, l2_normalize=cfg.l2_normalize, standardize=cfg.standardize,
                      memory_budget_mb=budget, device="cpu", batch_size=cfg.chunk_rows)
    grid = cfg.alpha if cfg.type == "sgd" else cfg.C
    if len(grid) > 1 and len(data.holdout_rows) == 0:
        raise FeatgapError(f"baselines.{name}: {len(grid)} grid values but the holdout is empty "
                           f"(train.holdout_fraction={settings.holdout_fraction})")
    hold_x = data.features(data.holdout_rows) if len(data.holdout_rows) else np.empty((0, data.dim), np.float32)
    hold_y = data.labels[data.holdout_rows]
    t_fit = time.perf_counter()
    with threadpool_limits(limits=threads):
        runs = (fit_sgd if cfg.type == "sgd" else fit_logreg)(data, cfg, hold_x, hold_y, seed, threads)
    fit_s = time.perf_counter() - t_fit
    key = lambda r: (-np.nan_to_num(r["holdout_acc"], nan=-1.0), np.nan_to_num(r["holdout_loss"], nan=np.inf),
                     r["candidate"])
    win = min(runs, key=key)
    grid_key = "alpha" if cfg.type == "sgd" else "C"
    hparams = {**asdict(cfg), grid_key: win[grid_key], "method": cfg.type, "seed": seed}
    counts = np.bincount(data.labels, minlength=num_classes)
    checkpoint = make_checkpoint(name=name, kind="linear", state_dict=win["state"],
                                 arch={"in_dim": data.dim, "num_classes": num_classes, "hidden": []},
                                 mean=data.prep.mean, std=data.prep.std, l2_normalize=cfg.l2_normalize,
                                 hparams=hparams, classes_seen=(counts > 0).astype(np.int64))
    save_head(files["model"], checkpoint)
    write_history(files["history"], [row for run in runs for row in run["history"]])
    strip = lambda r: {k: v for k, v in r.items() if k not in ("state", "history")}
    rows_fit = runs[0]["rows"] * (cfg.epochs if cfg.type == "sgd" else 1) * len(runs)
    selection = {
        "head": name,
        "config": asdict(cfg),
        "train": asdict(settings),
        "grid": [{"candidate": i, grid_key: float(v)} for i, v in enumerate(grid)],
        "scores": [strip(r) for r in runs],
        "winner": strip(win),
        "refit": None,
        "data": {**data.stats, "fit_rows_used": runs[0]["rows"]},
        "timing": {"fit_s": round(fit_s, 3), "rows_per_s": round(rows_fit / max(fit_s, 1e-9), 1)},
        "meta": meta_block(seed=seed, device="cpu", started=started, inputs=[manifest]),
    }
    write_json(files["selection"], selection)
    return selection


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--manifest", required=True, help="results/parquet/train.manifest.json")
    add_output_args(parser, OUTPUTS)
    parser.add_argument("--name", required=True, help="the baseline's name in the config")
    parser.add_argument("--options", required=True, help="JSON: the baselines.{name} config section")
    parser.add_argument("--train-options", default="{}", help="JSON: the train config section")
    parser.add_argument("--num-classes", type=int, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    selection = train_baseline(args.manifest, parse_outputs(args.output), name=args.name,
                               baseline=parse_json_arg(args.options, "options"),
                               train=parse_json_arg(args.train_options, "train-options"), num_classes=args.num_classes,
                               seed=args.seed, threads=args.threads)
    print(f"{args.name}: winner {selection['winner']} ")


if __name__ == "__main__":
    run_cli(main)
