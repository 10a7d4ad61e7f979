"""Train vs holdout vs test 1 vs test 2 accuracy, and the holdout score across the lr × wd grid.

Reads what train_head wrote (history.csv: per epoch and candidate lr, weight_decay, train loss /
accuracy, holdout loss / accuracy; selection.json: holdout scores of the grid and the winner) and
the two metrics.json of evaluate. Never reads a feature.

Caveats written into the summary: `train` accuracy is the running accuracy over the winner's
training epoch (dropout on, weights changing), not a clean re-evaluation; with `refit` the final
head was retrained on train + holdout, so its holdout score comes from the grid phase.

`backbone_saw_train` (config key): the feature extractor itself was trained on the training
split (EVA-02 …ft_in22k_in1k was fine-tuned on ImageNet-1k train), so train and holdout images
are ones the backbone has seen and the test images are not. Train vs holdout still measures the
head's own overfitting (both seen), but neither can be set against the test sets as if they
were exchangeable: the verdict then makes no holdout-vs-test or train-gap-vs-test-gap reading,
and states the flag next to the numbers.
Writes accuracy.csv, grid.csv, summary.json, accuracy.png, grid.png, curves.png.
"""
from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from scripts.lib.analysis import evidence
from scripts.lib.analysis.common import mpl_text, pyplot, save_figure, write_summary, write_table
from scripts.lib.analysis.step import analysis_cli, begin
from scripts.lib.featio.errors import FeatgapError
from scripts.lib.featio.jsonio import read_json

OUTPUTS = {"table": ".csv", "grid_table": ".csv", "summary": ".json",
           "accuracy_figure": ".png", "grid_figure": ".png", "curves_figure": ".png"}


def read_history(path: str | Path) -> pd.DataFrame:
    frame = pd.read_csv(path)
    need = {"epoch", "candidate", "lr", "weight_decay", "train_acc", "holdout_acc"}
    if not need <= set(frame.columns):
        raise FeatgapError(f"{path}: expected columns {sorted(need)}, found {list(frame.columns)}")
    if "phase" not in frame.columns:
        frame["phase"] = "grid"
    return frame


def grid_table(selection: dict, history: pd.DataFrame) -> pd.DataFrame:
    """One row per grid candidate: its hyperparameters and holdout score (selection.json, with
    lr / weight_decay filled in from history.csv where selection.json names them differently,
    as the sklearn baselines do: C or alpha there, the equivalent L2 strength in the history)."""
    grid_rows = history[history["phase"] == "grid"]
    if selection.get("scores"):
        frame = pd.DataFrame(selection["scores"])
    else:  # fall back to the history: best holdout epoch per candidate
        scored = grid_rows.dropna(subset=["holdout_acc"])
        idx = scored.groupby("candidate")["holdout_acc"].idxmax()
        frame = scored.loc[idx, ["candidate", "lr", "weight_decay", "holdout_acc", "holdout_loss", "epoch"]]
        frame = frame.rename(columns={"epoch": "best_epoch"})
    first = grid_rows.groupby("candidate")[["lr", "weight_decay"]].first()
    for col in ("lr", "weight_decay"):
        if col not in frame or frame[col].isna().all():
            frame[col] = frame["candidate"].map(first[col]) if col in first else np.nan
    win = selection.get("winner", {}).get("candidate")
    frame["winner"] = frame["candidate"] == win
    return frame.reset_index(drop=True)


def _num(value) -> float | None:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if np.isfinite(value) else None


def accuracies(selection: dict, history: pd.DataFrame, m1: dict, m2: dict) -> tuple[pd.DataFrame, dict]:
    win = selection.get("winner", {})
    cand = win.get("candidate", 0)
    grid = history[(history["phase"] == "grid") & (history["candidate"] == cand)]
    if grid.empty:
        raise FeatgapError("history.csv has no grid-phase rows for the winning candidate")
    best_epoch = int(win.get("epochs", grid["epoch"].max()))
    at = grid[grid["epoch"] == best_epoch]
    at = grid.iloc[[-1]] if at.empty else at
    train_acc = _num(at["train_acc"].iloc[0])  # None for baselines that do not report it
    holdout = _num(win.get("holdout_acc"))
    holdout = _num(at["holdout_acc"].iloc[0]) if holdout is None else holdout
    rows = [
        {"split": "train", "accuracy": train_acc, "source": f"history.csv: running train accuracy, epoch {best_epoch}"},
        {"split": "holdout", "accuracy": holdout, "source": "selection.json: winner's best holdout top-1"},
        {"split": "test1", "accuracy": m1["metrics"]["top1"], "source": "evaluate metrics.json",
         "ci_low": m1.get("ci95", {}).get("top1", [None, None])[0], "ci_high": m1.get("ci95", {}).get("top1", [None, None])[1]},
        {"split": "test2", "accuracy": m2["metrics"]["top1"], "source": "evaluate metrics.json",
         "ci_low": m2.get("ci95", {}).get("top1", [None, None])[0], "ci_high": m2.get("ci95", {}).get("top1", [None, None])[1]},
    ]
    return pd.DataFrame(rows), {"candidate": cand, "epoch": best_epoch}


def plot_accuracy(acc: pd.DataFrame, head: str, path: Path) -> str:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    colors = ["#9bbb59", "#8064a2", "#4f81bd", "#c0504d"]
    values = acc["accuracy"].astype(float).to_numpy()  # NaN: not recorded (no bar)
    bars = ax.bar(acc["split"], values, color=colors[: len(acc)])
    if "ci_low" in acc:
        for i, row in acc.iterrows():
            if pd.notna(row.get("ci_low")):
                ax.errorbar(i, row["accuracy"], yerr=[[row["accuracy"] - row["ci_low"]], [row["ci_high"] - row["accuracy"]]],
                            color="k", capsize=4)
    for bar, v in zip(bars, values):
        if np.isfinite(v):
            ax.text(bar.get_x() + bar.get_width() / 2, v, f"{v:.1%}", ha="center", va="bottom", fontsize=8)
        else:
            ax.text(bar.get_x() + bar.get_width() / 2, 0, "n/a", ha="center", va="bottom", fontsize=8)
    ax.set_ylim(max(0.0, np.nanmin(values) - 0.15), min(1.0, np.nanmax(values) + 0.08))
    ax.set_ylabel("top-1 accuracy")
    ax.set_title(mpl_text(f"{head}: train / holdout / test1 / test2"))
    return save_figure(fig, path)


def plot_grid(grid: pd.DataFrame, head: str, path: Path) -> str:
    plt = pyplot()
    lrs = sorted(grid["lr"].dropna().unique())
    wds = sorted(grid["weight_decay"].dropna().unique())
    fig, ax = plt.subplots(figsize=(max(4.0, 1.1 * len(wds) + 2), max(3.0, 0.6 * len(lrs) + 1.5)))
    if len(lrs) > 1 and len(wds) > 1:
        mat = np.full((len(lrs), len(wds)), np.nan)
        for row in grid.itertuples():
            mat[lrs.index(row.lr), wds.index(row.weight_decay)] = row.holdout_acc
        im = ax.imshow(mat, cmap="viridis", aspect="auto", origin="lower")
        for (i, j), v in np.ndenumerate(mat):
            if np.isfinite(v):
                win = grid[(grid["lr"] == lrs[i]) & (grid["weight_decay"] == wds[j])]["winner"].any()
                ax.text(j, i, f"{v:.3f}{' ★' if win else ''}", ha="center", va="center", fontsize=7,
                        color="w" if v < np.nanmean(mat) else "k")
        ax.set_xticks(range(len(wds)), [f"{w:g}" for w in wds])
        ax.set_yticks(range(len(lrs)), [f"{lr:g}" for lr in lrs])
        ax.set_xlabel("weight decay")
        ax.set_ylabel("learning rate")
        ax.grid(False)
        fig.colorbar(im, ax=ax, label="holdout top-1")
    else:
        if len(lrs) > 1:
            axis, values = "lr", lrs
        elif len(wds) > 1:
            axis, values = "weight_decay", wds
        else:
            axis, values = "candidate", sorted(grid["candidate"].unique())
        sub = grid.sort_values(axis)
        ax.plot(sub[axis], sub["holdout_acc"], marker="o")
        ax.plot(sub.loc[sub["winner"], axis], sub.loc[sub["winner"], "holdout_acc"], marker="*", ms=14, ls="",
                color="#c0504d", label="chosen")
        if axis != "candidate" and len(values) > 1 and min(values) > 0:
            ax.set_xscale("log")
        ax.set_xlabel(axis.replace("_", " ") + (" (L2 strength)" if axis == "weight_decay" else ""))
        ax.set_ylabel("holdout top-1")
        ax.legend(fontsize=7)
    ax.set_title(mpl_text(f"{head}: holdout score across the grid"))
    return save_figure(fig, path)


def plot_curves(history: pd.DataFrame, win: int, head: str, path: Path) -> str:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.8))
    grid = history[history["phase"] == "grid"]
    for cand, sub in grid.groupby("candidate"):
        chosen = cand == win
        kw = {"lw": 1.8 if chosen else 0.6, "alpha": 1.0 if chosen else 0.35}
        ax.plot(sub["epoch"], sub["train_acc"], color="#9bbb59", **kw, label="train (winner)" if chosen else None)
        ax.plot(sub["epoch"], sub["holdout_acc"], color="#8064a2", **kw, label="holdout (winner)" if chosen else None)
    ax.set_xlabel("epoch")
    ax.set_ylabel("top-1 accuracy")
    ax.set_title(mpl_text(f"{head}: learning curves (faint: other grid candidates)"))
    ax.legend(fontsize=7)
    return save_figure(fig, path)


def overfit(*, selection: str | Path, history: str | Path, metrics1: str | Path, metrics2: str | Path,
            outputs: Mapping[str, str | Path], options: dict | None = None, head_name: str,
            seed: int = 0, backbone_saw_train: bool = False) -> dict[str, Any]:
    started, opts, files = begin("overfit", options, outputs, OUTPUTS)
    head = head_name
    selection_path, history_path = selection, history
    selection = read_json(selection_path)
    history = read_history(history_path)
    m1, m2 = read_json(metrics1), read_json(metrics2)
    acc, at = accuracies(selection, history, m1, m2)
    grid = grid_table(selection, history)
    write_table(acc, files["table"])
    write_table(grid, files["grid_table"])
    figures = [plot_accuracy(acc, head, files["accuracy_figure"]), plot_grid(grid, head, files["grid_figure"]),
               plot_curves(history, at["candidate"], head, files["curves_figure"])]
    a = dict(zip(acc["split"], acc["accuracy"]))
    a = {k: _num(v) for k, v in a.items()}
    train_gap = a["train"] - a["holdout"] if a["train"] is not None and a["holdout"] is not None else None
    holdout_test1 = a["holdout"] - a["test1"] if a["holdout"] is not None else None
    test_gap = a["test1"] - a["test2"]
    win = grid[grid["winner"]]
    edge = {}
    for axis in ("lr", "weight_decay"):
        values = sorted(grid[axis].dropna().unique())
        if len(values) > 1 and len(win):
            v = win[axis].iloc[0]
            edge[axis] = "low" if v == values[0] else "high" if v == values[-1] else "inside"
    spread = float(grid["holdout_acc"].max() - grid["holdout_acc"].min()) if len(grid) else None
    numbers = {
        "train_acc": a["train"], "holdout_acc": a["holdout"], "test1_acc": a["test1"], "test2_acc": a["test2"],
        "train_minus_holdout": train_gap, "holdout_minus_test1": holdout_test1, "test1_minus_test2": test_gap,
        "winner": selection.get("winner"), "grid_size": len(grid), "grid_holdout_spread": spread,
        "winner_on_grid_edge": edge, "refit": selection.get("refit"), "epoch": at["epoch"],
        "thresholds": opts, "backbone_saw_train": bool(backbone_saw_train),
    }
    thr, shift_thr = float(opts["overfit_threshold"]), float(opts["shift_threshold"])
    parts = []
    if train_gap is not None:
        parts.append(
            f"{'overfitting is material' if train_gap > thr else 'overfitting is small'} "
            f"(train {a['train']:.1%} vs holdout {a['holdout']:.1%}, {train_gap:+.1%})")
    else:
        parts.append("no training accuracy was recorded (overfitting not measurable)")
    if backbone_saw_train:
        parts[-1] += " — both are images the backbone was trained on"
        if holdout_test1 is not None:
            parts.append(f"holdout {a['holdout']:.1%} vs test set 1 {a['test1']:.1%} is not a like-for-like comparison "
                         "(the backbone saw the holdout images, not the test images)")
        parts.append(f"test set 2 is {test_gap:+.1%} below test set 1")
    else:
        if holdout_test1 is not None:
            parts.append(
                f"the holdout {'predicts' if abs(holdout_test1) <= shift_thr else 'does not predict'} test set 1 "
                f"({a['holdout']:.1%} vs {a['test1']:.1%})")
        parts.append(
            f"test set 2 is {test_gap:+.1%} below test set 1"
            + (", a gap larger than the train–holdout gap, so it is a property of test set 2, not of overfitting"
               if train_gap is not None and test_gap > max(train_gap, 0) + shift_thr else "")
        )
    edges = [f"{k.replace('_', ' ')} at the {v} edge" for k, v in edge.items() if v != "inside"]
    verdict = (f"For {head}, " + "; ".join(parts)
               + (f". The chosen {' and '.join(edges)} of the grid: the grid may be too narrow." if edges else
                  f". Across the grid the holdout score varies by {spread:.1%}." if spread is not None else "."))
    block = overfit_reading(train_gap, test_gap, thr, backbone_saw_train)
    return write_summary(files["summary"], verdict=verdict, figures=figures, table=files["table"],
                         numbers=numbers, started=started, seed=seed,
                         inputs=[selection_path, history_path, metrics1, metrics2],
                         extra={"head": head, "grid_table": str(files["grid_table"]), "reading": block,
                                "caveats": ["train accuracy is the running accuracy of the winner's training epoch",
                                            "with refit, the final head saw the holdout; holdout is the grid-phase score"]
                                + ([("backbone_saw_train: the backbone was trained on the train split, so train and "
                                     "holdout images are not exchangeable with the test images")]
                                   if backbone_saw_train else [])})


def overfit_reading(train_gap: float | None, test_gap: float, threshold: float,
                     backbone_saw_train: bool) -> dict[str, Any]:
    """Overfitting lowers accuracy on every unseen image, test set 1's as much as test set 2's, so
    its counterfactual share of the gap is not identified from train / holdout / test numbers.
    What they do bound: a head that loses `train_gap` on unseen images cannot lose more than that
    on test set 2 *because of* overfitting, so the share is at most min(gap, train − holdout).
    Reported as that upper bound (interval [0, bound]), a description that is not a part of the gap; not
    estimable when the backbone saw the train split or no train accuracy was recorded."""
    if backbone_saw_train:
        return evidence.not_estimable(
            "overfit", "Not estimable: the backbone was trained on the train split (backbone_saw_train), so the "
            "head's train and holdout accuracies cannot be set against the test sets.")
    if train_gap is None:
        return evidence.not_estimable("overfit", "Not estimable: no training accuracy was recorded.")
    bound = 100 * max(0.0, min(test_gap, train_gap))
    material = train_gap > threshold
    sentence = (f"The head loses {100 * train_gap:+.1f} points from train to holdout, so overfitting accounts for at "
                f"most {bound:.1f} of the {100 * test_gap:.1f}-point gap (an upper bound: both test sets are unseen)"
                + ("." if material else ": the head barely overfits, no evidence that overfitting accounts for part of the gap."))
    return evidence.reading("overfit", bound, [0.0, bound], sentence=sentence,
                            unit="upper bound from train − holdout (no resampling)", upper_bound=True,
                            material=bool(material and bound > 0))


def _backbone_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--backbone-saw-train", type=lambda text: text.lower() == "true", default=False,
                        help="config backbone_saw_train (true | false): the backbone was trained on the train split")


def main(argv: Sequence[str] | None = None) -> None:
    analysis_cli(
        overfit,
        description="Train / holdout / test accuracy and the regularisation grid.",
        declared=OUTPUTS,
        inputs={"selection": "results/heads/{head}/selection.json", "history": "results/heads/{head}/history.csv",
                "metrics1": "test-1 metrics.json", "metrics2": "test-2 metrics.json"},
        extra=_backbone_arg,
        argv=argv,
    )


if __name__ == "__main__":
    main()
