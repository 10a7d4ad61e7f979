"""Train one classification head (linear or MLP) on the train split, hyperparameters chosen on a
stratified holdout of it; write the model, history and selection outputs (docs/architecture.md).

A grid of learning rate × weight decay candidates is trained at once on the same batches
(scripts.lib.training.grid); the winner has the best holdout top-1 (ties: lower holdout loss, then
grid order) at its best epoch, and is optionally refit on train + holdout for that many epochs.
With `inherit_from` (a variant of the improve stage) there is no new selection: the head trains
once with the lr, weight decay and epochs that another head's holdout selection chose, on the rows
that head's final fit used, so that the variant differs from it in its own keys only.
The saved format and the way to apply a head are in scripts.lib.heads (load_head, predict_logits).
Test splits are never read here.
"""
from __future__ import annotations

import argparse
import contextlib
import itertools
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from scripts.lib.device import configure_determinism, resolve_device, training_autocast
from scripts.lib.featio.cli import run_cli
from scripts.lib.featio.errors import FeatgapError
from scripts.lib.featio.jsonio import parse_json_arg, read_json, write_json
from scripts.lib.featio.provenance import meta_block
from scripts.lib.heads import build_net, make_checkpoint, save_head
from scripts.lib.step_outputs import add_output_args, output_paths, parse_outputs
from scripts.lib.training.config import HeadConfig, TrainSettings, parse_config, write_history
from scripts.lib.training.data import TrainSet, load_train, whitening_map
from scripts.lib.training.grid import (
    CandidateGrid,
    GridOptimizer,
    Regularisers,
    StepRunner,
    cosine_scale,
    evaluate_grid,
)

# Named outputs, at the paths the rule passes (--output NAME=PATH); baselines writes the same three.
OUTPUTS = {"model": ".pt", "history": ".csv", "selection": ".json"}


def class_weights(counts: np.ndarray, device: torch.device) -> torch.Tensor:
    """Inverse-frequency weights with mean 1 over the training rows (so the loss scale is kept)."""
    seen = counts > 0
    weight = np.zeros(len(counts), dtype=np.float64)
    weight[seen] = counts.sum() / (seen.sum() * counts[seen])
    return torch.as_tensor(weight, dtype=torch.float32, device=device)


def run_grid(data: TrainSet, cfg: HeadConfig, candidates: list[dict], rows: np.ndarray, *,
             epochs: int, seed: int, phase: str, select: bool, desc: str,
             autocast: torch.dtype | None, eval_batch_size: int = 8192, cuda_graphs: bool = True,
             input_map: torch.Tensor | None = None) -> dict:
    """Train all candidates on `rows` for `epochs` (of a cfg.epochs-long schedule), the step's
    matmuls autocast to `autocast` (None: float32; scripts.lib.device.training_autocast chooses).

    With `select`, evaluates the holdout every epoch, keeps each candidate's best weights, and
    stops early after cfg.patience epochs without any candidate improving. With
    cfg.selection == "halving" it also drops all but the best 1/eta of the candidates at each rung
    (`halving_rungs`); the result's "alive" lists the candidates still trained at the end, in the
    order of the returned grid."""
    device = data.device
    k = len(candidates)
    grid = CandidateGrid(data.dim, data.num_classes, cfg.hidden, k, cfg.dropout, seed, device, input_map)
    opt = GridOptimizer(grid.params, cfg.optimizer, np.array([c["lr"] for c in candidates]),
                        np.array([c["weight_decay"] for c in candidates]), momentum=cfg.momentum)
    weight = class_weights(data.class_counts(rows), device) if cfg.class_balanced else None
    reg = regularisers(cfg, data.class_counts(rows), device, seed)
    runner = StepRunner(grid, opt, smoothing=cfg.label_smoothing, class_weight=weight, device=device,
                        graphs=cuda_graphs, regularisers=reg, autocast=autocast)
    runners = [runner]  # halving adds one per rung
    steps_per_epoch = math.ceil(len(rows) / cfg.batch_size)
    total, warmup = cfg.epochs * steps_per_epoch, round(cfg.warmup_epochs * steps_per_epoch)
    rng = np.random.default_rng([seed, 1 if phase == "grid" else 2])
    best = grid.snapshot() if select else None
    best_acc = np.full(k, -np.inf)
    best_loss = np.full(k, np.inf)
    best_epoch = np.full(k, -1)
    history, stale, step = [], 0, 0
    alive = np.arange(k)  # positions in `candidates` of the grid's candidates, in grid order
    rungs = halving_rungs(cfg, epochs) if select and cfg.selection == "halving" else []
    candidate_epochs = 0
    bar = tqdm(range(epochs), desc=desc, unit="epoch")
    for epoch in bar:
        t0 = time.perf_counter()
        loss_sum, correct, step = train_epoch(data, runner, rows, rng, cfg.batch_size, step, total, warmup)
        candidate_epochs += len(alive)
        train_loss = (loss_sum / len(rows)).cpu().numpy()
        train_acc = (correct.double() / len(rows)).cpu().numpy()
        if select:
            # float32, never autocast: selection scores the function the saved float32 head computes
            h_loss, h_acc = evaluate_grid(grid, data.holdout_batches(eval_batch_size), contextlib.nullcontext)
            improved = (h_acc > best_acc[alive]) | ((h_acc == best_acc[alive]) & (h_loss < best_loss[alive]))
            best_acc[alive] = np.where(improved, h_acc, best_acc[alive])
            best_loss[alive] = np.where(improved, h_loss, best_loss[alive])
            best_epoch[alive] = np.where(improved, epoch, best_epoch[alive])
            grid.keep_best(best, torch.as_tensor(improved, device=device))
            stale = 0 if improved.any() else stale + 1
        else:
            h_loss = h_acc = np.full(len(alive), np.nan)
        seconds = time.perf_counter() - t0
        for i, pos in enumerate(alive):
            cand = candidates[pos]
            history.append({"phase": phase, "epoch": epoch + 1, "candidate": cand["candidate"],
                            "lr": cand["lr"], "weight_decay": cand["weight_decay"],
                            "train_loss": train_loss[i], "train_acc": train_acc[i],
                            "holdout_loss": h_loss[i], "holdout_acc": h_acc[i], "seconds": seconds})
        bar.set_postfix(loss=f"{train_loss.min():.4f}",
                        holdout=f"{np.nanmax(h_acc):.4f}" if select else "-")
        if select and cfg.patience is not None and stale >= cfg.patience:
            break
        if epoch + 1 in rungs and len(alive) > 1:
            # Rank by the best holdout top-1 so far (then loss, then grid order), as the final choice.
            ranked = sorted(range(len(alive)), key=lambda i: (-best_acc[alive[i]], best_loss[alive[i]], alive[i]))
            keep = sorted(ranked[: math.ceil(len(alive) / cfg.halving_eta)])
            positions = torch.as_tensor(keep, dtype=torch.int64)
            grid.keep(positions)
            opt.keep(positions)
            best = [saved.index_select(p.axis, positions.to(saved.device)) for p, saved in zip(grid.params, best)]
            alive = alive[keep]
            # The captured step has the old shapes: a new runner captures the smaller grid.
            runner = StepRunner(grid, opt, smoothing=cfg.label_smoothing, class_weight=weight, device=device,
                                graphs=cuda_graphs, regularisers=reg, autocast=autocast)
            runners.append(runner)
    if select:
        grid.restore(best)
    used = [r for r in runners if r.steps]
    return {"grid": grid, "history": history, "best_acc": best_acc, "best_loss": best_loss,
            "best_epoch": best_epoch, "epochs_run": epoch + 1, "alive": [int(a) for a in alive],
            "candidate_epochs": candidate_epochs, "rungs": [r for r in rungs if r <= epoch + 1],
            # Every runner that trained replayed a captured graph (False on the CPU, with
            # train.cuda_graphs: false, or after a failed capture: graph_capture_error says why).
            "graphed": bool(used) and all(r.graphed for r in used),
            "graph_capture_error": next((r.capture_error for r in used if r.capture_error), None)}


def regularisers(cfg: HeadConfig, counts: np.ndarray, device: torch.device, seed: int) -> Regularisers:
    """The head's training-time regularisers; the class prior of the logit-adjusted loss is that of
    the rows being trained on (an unseen class counts as one row, so its log prior stays finite)."""
    offset = None
    if cfg.logit_adjustment:
        prior = np.maximum(counts, 1) / counts.sum()
        offset = torch.as_tensor(cfg.logit_adjustment * np.log(prior), dtype=torch.float32, device=device)
    return Regularisers(feature_noise=cfg.feature_noise, mixup=cfg.mixup, logit_offset=offset, seed=seed)


def halving_rungs(cfg: HeadConfig, epochs: int) -> list[int]:
    """Epochs after which successive halving keeps the best 1/eta: min_epochs·eta^i, before the last."""
    rungs, rung = [], cfg.halving_min_epochs
    while rung < epochs:
        rungs.append(rung)
        rung *= cfg.halving_eta
    return rungs


def train_epoch(data: TrainSet, runner: StepRunner, rows: np.ndarray, rng: np.random.Generator,
                batch_size: int, step: int, total: int, warmup: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """One pass over `rows`: (per-candidate summed loss, correct count, next step), on the device.

    Nothing here waits for the GPU once the step is captured (tested under
    torch.cuda.set_sync_debug_mode("error")): the sums are read once per epoch by the caller."""
    runner.reset_sums()
    for x, y in data.batches(rows, batch_size, rng):
        runner(x, y, cosine_scale(step, total, warmup))
        step += 1
    return runner.loss_sum.clone(), runner.correct.clone(), step


@torch.no_grad()
def fit_temperature(state: dict[str, torch.Tensor], arch: dict, data: TrainSet, batch_size: int) -> dict:
    """Temperature T minimising the holdout NLL of softmax(logits / T) for the selected candidate.

    Selection by top-1 often picks strongly regularised, under-confident heads; one scalar fixes
    their probabilities without touching the ranking. It is fitted before any refit on train +
    holdout (the holdout must stay unseen) and kept for the refit head, whose logit scale matches."""
    # The selected candidate alone, as the saved head's network (float32): not all K candidates.
    net = build_net(arch)
    net.load_state_dict(state)
    net.to(data.device).eval()
    logits, labels = [], []
    for x, y in data.holdout_batches(batch_size):
        logits.append(net(x).float().cpu())
        labels.append(y.cpu())
    z, y = torch.cat(logits).double(), torch.cat(labels)

    def nll(log_t: float) -> float:
        return float(F.cross_entropy(z / math.exp(log_t), y))

    from scipy.optimize import minimize_scalar  # here: ~0.4 s of import a job without a holdout skips

    best = minimize_scalar(nll, bounds=(math.log(0.05), math.log(20.0)), method="bounded",
                           options={"xatol": 1e-4})
    return {"temperature": round(math.exp(best.x), 6), "holdout_nll_before": nll(0.0),
            "holdout_nll_after": nll(float(best.x)), "holdout_rows": len(y)}


def inherited_choice(path: str | Path, name: str) -> dict:
    """lr, weight decay, epochs and rows (all or fit) of another head's final fit, from its selection.json."""
    selection = read_json(path)
    win = selection.get("winner") if isinstance(selection, dict) else None
    if not isinstance(win, dict) or not all(k in win for k in ("lr", "weight_decay", "epochs")):
        raise FeatgapError(f"{path}: no winner with lr, weight_decay and epochs (written by scripts.train.train_head?); "
                           f"needed to train {name} with its hyperparameters")
    return {"from": str(path), "head": selection.get("head"), "lr": float(win["lr"]),
            "weight_decay": float(win["weight_decay"]), "epochs": int(win["epochs"]),
            "rows": "all" if selection.get("refit") else "fit"}


def train_head(manifest: str | Path, outputs: Mapping[str, str | Path], *, name: str, head: Mapping[str, Any],
               train: Mapping[str, Any], num_classes: int, seed: int = 0,
               threads: int | None = None, inherit_from: str | Path | None = None) -> dict:
    """Train head `name` on the split of `manifest`; write the model, history and selection outputs.
    `inherit_from`: another head's selection.json whose chosen hyperparameters it trains with."""
    started = time.perf_counter()
    files = output_paths(outputs, OUTPUTS, "train_head")
    cfg = parse_config(HeadConfig, head, f"heads.{name}")
    inherited = inherited_choice(inherit_from, name) if inherit_from is not None else None
    if inherited is not None:
        cfg = replace(cfg, lr=[inherited["lr"]], weight_decay=[inherited["weight_decay"]], epochs=inherited["epochs"])
    settings = parse_config(TrainSettings, train, "train")
    device = resolve_device(settings.device)
    configure_determinism(device, threads or settings.threads, seed)
    autocast = training_autocast(device, settings.precision)
    data = load_train(manifest, num_classes=num_classes,
                      holdout_fraction=settings.holdout_fraction, seed=seed,
                      l2_normalize=cfg.l2_normalize, standardize=cfg.standardize,
                      memory_budget_mb=settings.memory_budget_mb, device=device,
                      batch_size=cfg.batch_size, placement=settings.placement)
    candidates = [{"candidate": i, "lr": float(lr), "weight_decay": float(wd)}
                  for i, (lr, wd) in enumerate(itertools.product(cfg.lr, cfg.weight_decay))]
    has_holdout = len(data.holdout_rows) > 0
    if len(candidates) > 1 and not has_holdout:
        raise FeatgapError(f"heads.{name}: {len(candidates)} candidates but the holdout is empty "
                           f"(train.holdout_fraction={settings.holdout_fraction}); raise it or use one lr/wd")
    all_rows = np.sort(np.concatenate([data.fit_rows, data.holdout_rows]))
    # PCA whitening is fitted on the rows the grid trains on (never the holdout), once for both phases.
    input_map = whitening_map(data, data.fit_rows, cfg.pca_whiten) if cfg.pca_whiten else None
    arch = {"in_dim": data.dim, "num_classes": num_classes, "hidden": cfg.hidden, "dropout": cfg.dropout}
    t_grid = time.perf_counter()
    if inherited is not None:
        # One fit, as the other head's final one: nothing is selected, so the holdout stays unused
        # and there is no temperature to fit (1.0: top-1 and the paired comparison need none).
        rows = all_rows if inherited["rows"] == "all" else data.fit_rows
        result = run_grid(data, cfg, candidates, rows, epochs=cfg.epochs, seed=seed, phase="inherited",
                          select=False, desc=f"{name} (hyperparameters of {inherited['head']})",
                          cuda_graphs=settings.cuda_graphs, autocast=autocast, input_map=input_map)
        win, win_epochs, calibration = 0, cfg.epochs, None
        state = result["grid"].extract(0)
        refit = {"rows": len(rows), "epochs": win_epochs, "seconds": round(time.perf_counter() - t_grid, 3)}
        n_fit = len(rows)
    else:
        result = run_grid(data, cfg, candidates, data.fit_rows, epochs=cfg.epochs, seed=seed,
                          phase="grid", select=has_holdout, desc=f"{name} grid×{len(candidates)}",
                          eval_batch_size=settings.eval_batch_size, cuda_graphs=settings.cuda_graphs,
                          autocast=autocast, input_map=input_map)
        # Winner among the candidates trained to the end (all, unless halving dropped some): best
        # holdout top-1, then lower holdout loss, then grid order.
        alive = result["alive"]
        order = sorted(alive, key=lambda i: (-result["best_acc"][i], result["best_loss"][i], i))
        win = order[0] if has_holdout else 0
        win_epochs = int(result["best_epoch"][win]) + 1 if has_holdout else cfg.epochs
        state = result["grid"].extract(alive.index(win))
        calibration = fit_temperature(state, arch, data, settings.eval_batch_size) \
            if cfg.calibrate and has_holdout else None
        refit, n_fit = None, len(data.fit_rows)
    grid_s = time.perf_counter() - t_grid
    history = result["history"]
    graphed, capture_error = result["graphed"], result["graph_capture_error"]
    if inherited is None and cfg.refit and has_holdout:
        t_refit = time.perf_counter()
        again = run_grid(data, cfg, [candidates[win]], all_rows, epochs=win_epochs, seed=seed,
                         phase="refit", select=False, desc=f"{name} refit", cuda_graphs=settings.cuda_graphs,
                         autocast=autocast, input_map=input_map)
        state = again["grid"].extract(0)
        history += again["history"]
        graphed, capture_error = graphed and again["graphed"], capture_error or again["graph_capture_error"]
        refit = {"rows": len(all_rows), "epochs": win_epochs, "seconds": round(time.perf_counter() - t_refit, 3)}
    hparams = {**{k: v for k, v in asdict(cfg).items() if k not in ("lr", "weight_decay")},
               "lr": candidates[win]["lr"], "weight_decay": candidates[win]["weight_decay"],
               "epochs_trained": win_epochs, "refit": refit is not None, "seed": seed,
               "inherited_from": inherited["head"] if inherited else None}
    counts = np.bincount(data.labels, minlength=num_classes)
    checkpoint = make_checkpoint(name=name, kind=cfg.type, state_dict=state,
                                 arch=arch,
                                 mean=data.prep.mean, std=data.prep.std,
                                 l2_normalize=cfg.l2_normalize, hparams=hparams,
                                 classes_seen=(counts > 0).astype(np.int64),
                                 temperature=calibration["temperature"] if calibration else 1.0)
    save_head(files["model"], checkpoint)
    write_history(files["history"], history)
    scored = inherited is None
    selection = {
        "head": name,
        "config": asdict(cfg),
        "train": asdict(settings),
        "grid": candidates,
        "inherited": inherited,
        "scores": [{"candidate": c["candidate"], "lr": c["lr"], "weight_decay": c["weight_decay"],
                    "holdout_acc": _num(result["best_acc"][i]), "holdout_loss": _num(result["best_loss"][i]),
                    "best_epoch": int(result["best_epoch"][i]) + 1} for i, c in enumerate(candidates)] if scored else [],
        "winner": {**candidates[win], "holdout_acc": _num(result["best_acc"][win]) if scored else None,
                   "holdout_loss": _num(result["best_loss"][win]) if scored else None, "epochs": win_epochs},
        "refit": refit,
        "calibration": calibration,
        "data": data.stats,
        "precision": "float32" if autocast is None else str(autocast).removeprefix("torch."),
        # Training steps replayed from captured CUDA graphs (train.cuda_graphs); a failed capture
        # trains eagerly, same model, and says why here.
        "graphed": graphed,
        "graph_capture_error": capture_error,
        "halving": {"rungs": result["rungs"], "survivors": [candidates[i]["candidate"] for i in result["alive"]]}
        if cfg.selection == "halving" and scored else None,
        "timing": {"grid_s": round(grid_s, 3), "grid_epochs": result["epochs_run"],
                   "candidate_epochs": result["candidate_epochs"],
                   "rows_per_s": round(n_fit * result["epochs_run"] / max(grid_s, 1e-9), 1),
                   "candidate_rows_per_s": round(n_fit * result["candidate_epochs"] / max(grid_s, 1e-9), 1)},
        "meta": meta_block(seed=seed, device=str(device), started=started,
                           inputs=[manifest, *([inherit_from] if inherit_from is not None else [])]),
    }
    write_json(files["selection"], selection)
    return selection


def _num(value: float) -> float | None:
    return None if not np.isfinite(value) else float(value)





def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--manifest", required=True, help="results/parquet/train.manifest.json")
    add_output_args(parser, OUTPUTS)
    parser.add_argument("--name", required=True, help="the head's name in the config")
    # --options and --train-options, as every step: JSON config sections (--head, --train elsewhere are paths)
    parser.add_argument("--options", required=True, help="JSON: the heads.{name} config section")
    parser.add_argument("--train-options", default="{}", help="JSON: the train config section")
    parser.add_argument("--num-classes", type=int, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--inherit-from", default=None, metavar="SELECTION",
                        help="another head's selection.json: train once with its chosen lr, weight decay, epochs")
    args = parser.parse_args(argv)
    selection = train_head(args.manifest, parse_outputs(args.output), name=args.name,
                           head=parse_json_arg(args.options, "options"),
                           train=parse_json_arg(args.train_options, "train-options"),
                           num_classes=args.num_classes, seed=args.seed, threads=args.threads,
                           inherit_from=args.inherit_from)
    win = selection["winner"]
    print(f"{args.name}: winner lr={win['lr']} wd={win['weight_decay']} holdout top-1={win['holdout_acc']}")


if __name__ == "__main__":
    run_cli(main)
