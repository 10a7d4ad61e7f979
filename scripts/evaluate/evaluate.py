"""Evaluate one saved head (or baseline) on one test split.

Outputs (docs/architecture.md, the evaluate stage), each at the path the rule passes (--output NAME=PATH):
  predictions  Parquet: row, path, label, pred, top5 (list<int16>), confidence, correct,
               p_label (softmax probability of the true class; used to break ties when
               ranking classes by their drop)
  metrics      JSON: metrics (top-1, top-5, balanced accuracy, macro precision/recall/F1, NLL,
               ECE), ci95 (seeded percentile bootstrap), per_class (accuracy, n, ...), meta
  confusions   CSV, sparse confusion table: true, pred, count, true_name, pred_name
  plot         PNG, the most frequent off-diagonal (true → pred) pairs

With `real_labels` (a ReaL real.json, config evaluate.real_labels for its test set), the metrics
also has a `real` block (scripts.lib.real_scoring.rescore): ReaL top-1 with its interval beside the
original top-1 on the same images, and the split of the errors; images are matched by file name.

The split is streamed row group by row group: memory is one row group of features plus the
(n, 5) prediction columns. Logits come only from scripts.lib.heads.predict_logits, so the head's
stored preprocessing is always applied.
"""
from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from scripts.lib.analysis.common import load_class_names, mpl_text, pyplot, save_figure, write_table
from scripts.lib.featio.arrow import features_to_numpy
from scripts.lib.featio.atomic import atomic_path
from scripts.lib.featio.cli import run_cli
from scripts.lib.featio.errors import FeatgapError
from scripts.lib.featio.jsonio import parse_json_arg, read_json, write_json
from scripts.lib.featio.provenance import meta_block
from scripts.lib.featio.reader import iter_row_groups, split_shape
from scripts.lib.options import merge_options
from scripts.lib.stats import inference
from scripts.lib.step_outputs import add_output_args, output_paths, parse_outputs
from scripts.lib.threads import add_threads_arg, limit_threads

METRIC_KEYS = ("top1", "top5", "balanced_accuracy", "macro_precision", "macro_recall", "macro_f1", "nll", "ece")
OUTPUTS = {"predictions": ".parquet", "metrics": ".json", "confusions": ".csv", "plot": ".png"}


def predict_split(
    manifest: str | Path,
    logits_fn: Callable[[np.ndarray], np.ndarray],
    num_classes: int,
    k: int = 5,
) -> dict[str, np.ndarray]:
    """Stream a split through `logits_fn`; return per-row prediction columns (no features kept)."""
    n_total, dim = split_shape(manifest)
    k = min(k, num_classes)
    cols: dict[str, list[np.ndarray]] = {key: [] for key in ("row", "path", "label", "pred", "top5",
                                                             "confidence", "p_label", "nll")}
    seen = 0
    with tqdm(total=n_total, desc="evaluate", unit="row", leave=False) as bar:
        for table in iter_row_groups(manifest):
            feats = np.array(features_to_numpy(table.column("features"), dim))  # writable, for torch
            label = table.column("label").to_numpy().astype(np.int64)
            bad = np.flatnonzero((label < 0) | (label >= num_classes))
            if len(bad):
                row = table.column("row").to_numpy()[bad[0]]
                raise FeatgapError(
                    f"{manifest}: row {row}: label {label[bad[0]]} outside 0..{num_classes - 1} (head classes)"
                )
            logits = np.asarray(logits_fn(feats))
            if logits.shape != (len(label), num_classes):
                raise FeatgapError(f"head returned logits of shape {logits.shape}, expected {(len(label), num_classes)}")
            logp = inference.log_softmax(logits)
            top = np.argpartition(-logp, k - 1, axis=1)[:, :k] if k < num_classes else np.tile(np.arange(k), (len(label), 1))
            order = np.argsort(-np.take_along_axis(logp, top, axis=1), axis=1, kind="stable")
            top = np.take_along_axis(top, order, axis=1)
            pred = logp.argmax(axis=1)
            top[:, 0] = pred  # argmax's tie rule (first index) decides top-1 everywhere
            lp_label = logp[np.arange(len(label)), label]
            cols["row"].append(table.column("row").to_numpy())
            cols["path"].append(table.column("path").to_numpy(zero_copy_only=False))
            cols["label"].append(label)
            cols["pred"].append(pred)
            cols["top5"].append(top)
            cols["confidence"].append(np.exp(logp.max(axis=1)))
            cols["p_label"].append(np.exp(lp_label))
            cols["nll"].append(-lp_label)
            seen += len(label)
            bar.update(len(label))
    if seen == 0:
        raise FeatgapError(f"{manifest}: the split has no rows")
    return {key: np.concatenate(values) for key, values in cols.items()}


def predictions_table(pred: dict[str, np.ndarray]) -> pa.Table:
    k = pred["top5"].shape[1]
    return pa.table(
        {
            "row": pa.array(pred["row"], pa.int64()),
            "path": pa.array(pred["path"], pa.string()),
            "label": pa.array(pred["label"], pa.int16()),
            "pred": pa.array(pred["pred"], pa.int16()),
            "top5": pa.FixedSizeListArray.from_arrays(pa.array(pred["top5"].reshape(-1), pa.int16()), k).cast(
                pa.list_(pa.int16())
            ),
            "confidence": pa.array(pred["confidence"].astype(np.float32), pa.float32()),
            "correct": pa.array(pred["label"] == pred["pred"], pa.bool_()),
            "p_label": pa.array(pred["p_label"].astype(np.float32), pa.float32()),
        }
    )


def compute_metrics(pred: dict[str, np.ndarray], num_classes: int, *, ece_bins: int, n_resamples: int,
                    ci: float, seed: int) -> tuple[dict[str, float], dict[str, list[float]]]:
    """Point metrics and their bootstrap intervals.

    The bootstrap resamples images *within each class* (the unit is the image, conditional on
    the classes; the test sets are stratified by class), and its intervals are bias-corrected
    so that each contains its estimate. ECE uses equal-mass bins and is debiased by its value
    under perfect calibration at this n (inference.calibration), so test sets of 50k and 10k
    images compare.
    """
    label, p = pred["label"], pred["pred"]
    top5_hit = (pred["top5"] == label[:, None]).any(axis=1)
    conf = pred["confidence"]
    bins = inference.equal_mass_bins(conf, ece_bins)
    calib = inference.calibration(conf, label == p, ece_bins, seed=seed)
    floor = calib["ece_calibrated_floor"]

    def metrics_of(idx: np.ndarray | None) -> dict[str, float]:
        sel = slice(None) if idx is None else idx
        return inference.classification_metrics(label[sel], p[sel], top5_hit[sel], pred["nll"][sel], conf[sel],
                                            num_classes, ece_bins, conf_bins=bins[sel], ece_floor=floor)

    point = metrics_of(None)
    intervals = inference.bootstrap_ci(metrics_of, len(label), n_resamples=n_resamples, confidence=ci, seed=seed,
                                   progress=True, strata=label, point=point)
    point.update({k: v for k, v in calib.items() if k != "ece"})
    return point, intervals


def per_class_table(pred: dict[str, np.ndarray], num_classes: int, names: list[str]) -> pd.DataFrame:
    label, p = pred["label"], pred["pred"]
    correct = (label == p).astype(np.float64)
    n = np.bincount(label, minlength=num_classes)
    pred_n = np.bincount(p, minlength=num_classes)
    tp = np.bincount(label, weights=correct, minlength=num_classes)
    with np.errstate(divide="ignore", invalid="ignore"):
        acc = np.where(n > 0, tp / n, np.nan)
        precision = np.where(pred_n > 0, tp / pred_n, np.nan)
        mean_p = np.where(n > 0, np.bincount(label, weights=pred["p_label"], minlength=num_classes) / n, np.nan)
        mean_conf = np.where(n > 0, np.bincount(label, weights=pred["confidence"], minlength=num_classes) / n, np.nan)
    return pd.DataFrame({"class": np.arange(num_classes), "name": names, "n": n, "correct": tp.astype(np.int64),
                         "accuracy": acc, "precision": precision, "predicted_n": pred_n,
                         "mean_p_label": mean_p, "mean_confidence": mean_conf})


def confusion_table(pred: dict[str, np.ndarray], num_classes: int, names: list[str]) -> pd.DataFrame:
    code = pred["label"].astype(np.int64) * num_classes + pred["pred"].astype(np.int64)
    keys, counts = np.unique(code, return_counts=True)
    true, predicted = keys // num_classes, keys % num_classes
    frame = pd.DataFrame({"true": true, "pred": predicted, "count": counts,
                          "true_name": [names[i] for i in true], "pred_name": [names[i] for i in predicted]})
    return frame.sort_values(["count", "true", "pred"], ascending=[False, True, True], kind="stable")


def plot_confused_pairs(conf: pd.DataFrame, n_true: np.ndarray, top: int, title: str, path: str | Path) -> str:
    plt = pyplot()
    off = conf[conf["true"] != conf["pred"]].head(top)
    fig, ax = plt.subplots(figsize=(7, 0.28 * max(len(off), 3) + 1.2))
    if len(off):
        labels = [mpl_text(f"{t} → {p}") for t, p in zip(off["true_name"], off["pred_name"])]
        share = off["count"].to_numpy() / np.maximum(n_true[off["true"].to_numpy()], 1)
        ax.barh(np.arange(len(off))[::-1], off["count"], color="#c0504d")
        ax.set_yticks(np.arange(len(off))[::-1], labels)
        for y, (c, s) in zip(np.arange(len(off))[::-1], zip(off["count"], share)):
            ax.text(c, y, f" {c} ({s:.0%} of true class)", va="center", fontsize=7)
        ax.set_xlabel("misclassified samples (true → predicted)")
    else:
        ax.text(0.5, 0.5, "no misclassifications", ha="center", va="center", transform=ax.transAxes)
    ax.set_title(mpl_text(title))
    return save_figure(fig, path)


def evaluate(
    *,
    head_path: str | Path,
    manifest: str | Path,
    outputs: Mapping[str, str | Path],
    num_classes: int,
    options: dict[str, Any],
    seed: int = 0,
    head_name: str,
    test_name: str | None = None,
    logits_fn: Callable[[np.ndarray], np.ndarray] | None = None,
    backbone_saw_train: bool = False,
    real_labels: str | Path | None = None,
    real_entries: int | None = None,
) -> dict[str, Any]:
    """Predictions, metrics, confusions and the confused-pairs plot of one head on one split.

    `backbone_saw_train` (config key of the same name): the feature extractor was trained on the
    training split, so the temperature fitted on its holdout calibrates on images the backbone
    has seen; metrics.json states it next to the calibration numbers. `real_labels`: a ReaL
    real.json whose file names this split's paths are (metrics.json `real` block), of `real_entries`
    entries (config evaluate.real_labels.entries; None: the schema's default)."""
    started = time.perf_counter()
    # The config `evaluate:` section over its schema defaults; `real_labels` is accepted and unused
    # (the rule passes the file as `real_labels`, for its own test set only).
    opts = merge_options(options, "evaluate")
    files = output_paths(outputs, OUTPUTS, "evaluate")
    test_name = test_name or Path(manifest).name.removesuffix(".manifest.json")
    # The one device parser (scripts.lib.device): `cuda` resolves to an explicit `cuda:N`.
    from scripts.lib.device import resolve_device

    device = str(resolve_device(opts["device"]))
    temperature = None
    if logits_fn is None:
        from scripts.lib.heads import load_head, predict_logits

        head = load_head(head_path, device=device)
        if head.num_classes != num_classes:
            raise FeatgapError(f"{head_path}: head has {head.num_classes} classes, config num_classes is {num_classes}")
        temperature = head.temperature

        def logits_fn(x: np.ndarray) -> np.ndarray:
            return predict_logits(head, x, batch_size=int(opts["batch_size"]))

    names = load_class_names(opts["class_names"], num_classes)
    real = None
    if real_labels:  # checked before any prediction: a bad file fails at once
        from scripts.lib.real_scoring import load_real

        entries = opts["real_labels"]["entries"] if real_entries is None else real_entries
        real = load_real(real_labels, num_classes, entries=int(entries))
    pred = predict_split(manifest, logits_fn, num_classes)

    with atomic_path(files["predictions"]) as tmp:
        pq.write_table(predictions_table(pred), tmp, compression="zstd")
    point, intervals = compute_metrics(pred, num_classes, ece_bins=int(opts["ece_bins"]),
                                       n_resamples=int(opts["bootstrap"]), ci=0.95, seed=seed)
    per_class = per_class_table(pred, num_classes, names)
    conf = confusion_table(pred, num_classes, names)
    write_table(conf, files["confusions"])
    plot_confused_pairs(conf, per_class["n"].to_numpy(), int(opts["top_confused"]),
                        f"{head_name} on {test_name}: most confused pairs (top-1 {point['top1']:.2%})",
                        files["plot"])
    off = conf[conf["true"] != conf["pred"]].head(int(opts["top_confused"]))
    metrics = {
        "head": head_name,
        "test": test_name,
        "n": len(pred["label"]),
        "num_classes": num_classes,
        "metrics": point,
        "ci95": intervals,
        "bootstrap": {"resamples": int(opts["bootstrap"]), "confidence": 0.95, "seed": seed,
                      "method": "bias-corrected percentile", "unit": "images, resampled within each class"},
        "ece_method": ("equal-mass bins, debiased: plug-in ECE minus its mean under perfect calibration at this n"
                       " (ece_calibrated_floor); ece_equal_width is the textbook estimate"),
        "ece_bins": int(opts["ece_bins"]),
        "temperature": temperature,
        "backbone_saw_train": bool(backbone_saw_train),
        "calibration_caveat": ("the softmax temperature was fitted on a holdout of the training split, which the "
                               "backbone was trained on: it may be mis-set for unseen images" if backbone_saw_train
                               else None),
        "top_confused": off[["true", "pred", "count", "true_name", "pred_name"]].to_dict(orient="records"),
        "per_class": {col: per_class[col].tolist() for col in per_class.columns},
        # Keyed by file name, as the report looks the plot up (scripts/report/report.py).
        "files": {files[name].name: str(files[name]) for name in ("predictions", "confusions", "plot")},
        "meta": meta_block(seed=seed, device=device, started=started, inputs=[head_path, manifest]),
    }
    if real is not None:
        from scripts.lib.real_scoring import rescore

        source = str((read_json(manifest) or {}).get("source") or manifest)
        metrics["real"] = rescore(paths=pred["path"].tolist(), label=pred["label"], pred=pred["pred"], real=real,
                                  source=source, test=test_name, n_resamples=int(opts["bootstrap"]), seed=seed)
    metrics["per_class"] = {k: [None if (isinstance(v, float) and np.isnan(v)) else v for v in vals]
                            for k, vals in metrics["per_class"].items()}
    write_json(files["metrics"], metrics)
    return metrics


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Evaluate a saved head on one test split.")
    parser.add_argument("--model", required=True, help="results/heads/{head}/model.pt")
    parser.add_argument("--manifest", required=True, help="results/parquet/{test}.manifest.json")
    add_output_args(parser, OUTPUTS)
    parser.add_argument("--num-classes", type=int, required=True)
    parser.add_argument("--options", default="{}", help="JSON: the config `evaluate:` section")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--head-name", required=True, help="the head or baseline the model is")
    parser.add_argument("--test-name")
    add_threads_arg(parser)
    parser.add_argument("--backbone-saw-train", default="false", choices=["true", "false", "True", "False"],
                        help="config backbone_saw_train: the backbone was trained on the train split")
    parser.add_argument("--real-labels", default=None,
                        help="ReaL real.json: re-score this split (its paths are ImageNet val file names)")
    parser.add_argument("--real-entries", type=int, default=None,
                        help="config evaluate.real_labels.entries: the entries real.json must hold")
    args = parser.parse_args(argv)
    limit_threads(args.threads)
    metrics = evaluate(head_path=args.model, manifest=args.manifest, outputs=parse_outputs(args.output),
                       num_classes=args.num_classes, options=parse_json_arg(args.options, "options"),
                       seed=args.seed, head_name=args.head_name, test_name=args.test_name,
                       backbone_saw_train=args.backbone_saw_train.lower() == "true",
                       real_labels=args.real_labels or None, real_entries=args.real_entries)
    m = metrics["metrics"]
    print(f"{metrics['head']} on {metrics['test']}: top-1 {m['top1']:.4f}, top-5 {m['top5']:.4f}, "
          f"NLL {m['nll']:.4f}, ECE {m['ece']:.4f} ({metrics['n']} rows)")
    r = metrics.get("real")
    if r and r["top1"] is not None:
        print(f"ReaL top-1 {r['top1']:.4f} over {r['n_with_real']} images (original labels, same images: "
              f"{r['top1_original']:.4f}); errors {r['errors']}")


if __name__ == "__main__":
    run_cli(main)
