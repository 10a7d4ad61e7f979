"""Running the real Snakefile in a temporary directory on tiny generated data (workflow tests)."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]

# The whole workflow on 12 classes × 32 features: every stage runs, in about a minute on 2 cores.
TINY_CONFIG = {
    "demo": {"enabled": True, "out_dir": "results/demo", "classes": 12, "dim": 32, "train_scale": 0.05,
             "test1_per_class": 20, "test2_per_class": 10, "seed": 0},
    "num_classes": 12,
    "dim": 32,
    "convert": {"parts": {"train": 3, "test1": 1, "test2": 1}},
    "validate": {"expected": {"test1": {"rows": 240, "per_class_min": 20, "per_class_max": 20},
                              "test2": {"rows": 120, "per_class_min": 10, "per_class_max": 10}}},
    "evaluate": {"bootstrap": 50},
    "analysis": {"shift": {"domain": {"folds": 3, "bootstrap": 50}}, "mean_shift": {"bootstrap": 50},
                 "embedding": {"per_set": 60, "pca_components": 10, "perplexity": 10.0, "tsne_iter": 250}},
    "heads": {
        "linear": {"type": "linear", "lr": [0.003, 0.01], "weight_decay": [0.1, 1.0], "epochs": 4,
                   "batch_size": 64},
        "mlp": {"type": "mlp", "hidden": [32], "lr": [0.01], "weight_decay": [0.1], "epochs": 3, "batch_size": 64},
    },
    "baselines": {
        "sgd": {"type": "sgd", "alpha": [0.0001], "epochs": 1, "chunk_rows": 256},
        "logreg": {"type": "logreg", "C": [0.3], "subsample": 500, "max_iter": 200},
    },
    # The demo's variants, PCA-whitened to 16 of these 32 dims; few resamples.
    "improve": {"bootstrap": 50, "variants": {"pca_whiten": {"kind": "retrain", "set": {"pca_whiten": 16}}}},
}


def write_config(workdir: Path, config: dict) -> None:
    (workdir / "config.yaml").write_text(yaml.safe_dump(config))


def command(workdir: Path, *args: str) -> list[str]:
    """Runs the workflow copy in `workdir` when there is one, else this checkout's."""
    snakefile = workdir / "Snakefile" if (workdir / "Snakefile").exists() else ROOT / "Snakefile"
    return [sys.executable, "-m", "snakemake", "-s", str(snakefile), "--directory", str(workdir),
            "--configfile", str(workdir / "config.yaml"), "--cores", "2", *args]


def environment() -> dict:
    # Rules call `python`: make it this interpreter, as an activated virtual environment would.
    return {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}


def snakemake(workdir: Path, *args: str, check: bool = True, timeout: int = 900) -> subprocess.CompletedProcess:
    cmd = command(workdir, *args)
    result = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=timeout, env=environment())
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}")
    return result


def planned_jobs(workdir: Path, *targets: str) -> dict[str, int]:
    """Rule → job count of what a dry run would execute ({} when nothing is to be done)."""
    result = snakemake(workdir, "-n", *targets)
    text = result.stdout + result.stderr
    if "Nothing to be done" in text:
        return {}
    table = text.split("Job stats:", 1)[1]
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, re.M)
            if m.group(1) not in ("total", "all")}
