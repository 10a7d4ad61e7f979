"""The steps' outputs as the rules name them: {step: {output name: file name}}.

The rules (workflow/rules/*.smk) are the only place the workflow writes these file names; tests
that call a step directly use the same names through `outputs_in`, and
tests/test_analysis_wiring.py checks that this table matches the `--output` arguments the rules
pass (so a renamed output cannot drift between the rules and the tests).
"""
from __future__ import annotations

import os
from pathlib import Path

LAYOUT: dict[str, dict[str, str]] = {
    "train_head": {"model": "model.pt", "history": "history.csv", "selection": "selection.json"},
    "train_baseline": {"model": "model.pt", "history": "history.csv", "selection": "selection.json"},
    "improve_compare": {"summary": "summary.json", "table": "variants.csv", "figure": "improve.png"},
    "evaluate": {"predictions": "predictions.parquet", "metrics": "metrics.json", "confusions": "confusions.csv",
                 "plot": "confused_pairs.png"},
    "gap": {"table": "per_class.csv", "summary": "summary.json", "distribution_figure": "drop_distribution.png",
            "top_figure": "top_drops.png"},
    "imbalance": {"table": "per_class.csv", "summary": "summary.json", "figure": "scatter.png"},
    "overfit": {"table": "accuracy.csv", "grid_table": "grid.csv", "summary": "summary.json",
                "accuracy_figure": "accuracy.png", "grid_figure": "grid.png", "curves_figure": "curves.png"},
    "shift": {"table": "features.csv", "summary": "summary.json", "volcano_figure": "volcano.png",
                       "top_features_figure": "top_features.png", "roc_figure": "domain_roc.png"},
    "mean_shift": {"table": "adaptation.csv", "summary": "summary.json", "figure": "adaptation.png"},
    "misclass": {"table": "features.csv", "summary": "summary.json", "figure": "clusters.png"},
    "misclass_compare": {"table": "compare.csv", "summary": "summary.json", "figure": "compare.png"},
    "difficulty": {"table": "typicality.csv", "summary": "summary.json", "figure": "typicality.png"},
    "embedding": {"table": "coords.csv", "summary": "summary.json", "pca_figure": "pca.png", "tsne_figure": "tsne.png"},
    "label_noise": {"table": "disagreements.csv", "summary": "summary.json", "figure": "confidence.png"},
    "decomposition": {"table": "terms.csv", "summary": "summary.json", "figure": "waterfall.png",
                      "label_issues": "label_issues.csv"},
    "reference_line": {"table": "line.csv", "summary": "summary.json", "figure": "line.png"},
    "real_labels": {"table": "errors.csv", "rows": "rows.parquet", "summary": "summary.json",
                    "figure": "real_errors.png"},
}


def outputs_in(folder: str | os.PathLike, step: str) -> dict[str, Path]:
    """The step's outputs in `folder` under the rule's file names (what the workflow passes)."""
    return {name: Path(folder) / file for name, file in LAYOUT[step].items()}


def output_argv(folder: str | os.PathLike, step: str) -> list[str]:
    """The same as `--output NAME=PATH` arguments of the step's CLI."""
    return [arg for name, path in outputs_in(folder, step).items() for arg in ("--output", f"{name}={path}")]
