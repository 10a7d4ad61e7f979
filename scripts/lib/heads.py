"""Saved classification heads: the one on-disk format and the single way to apply one.

Every model under results/heads/{name}/model.pt — a PyTorch head from `train_head` or a sklearn
baseline from `baselines` — is a `torch.save` dict of tensors and plain values, loadable with
`torch.load(path, weights_only=True)`:

    format        "featgap.head/1"
    name          head name from the config (e.g. "linear", "mlp", "sgd", "logreg")
    kind          "linear" | "mlp"  (sklearn SGD / LogisticRegression are stored as "linear")
    arch          {"in_dim": D, "num_classes": C, "hidden": [H1, ...], "dropout": p,
                   "activation": "gelu"}            (hidden == [] for a linear head)
    state_dict    tensors of `build_net(arch)`, an nn.Sequential of Linear / GELU / Dropout:
                  "0.weight" (H1|C, D), "0.bias", then "3.weight", ... (nn.Linear layout)
    l2_normalize  bool: rows are L2-normalised first ...
    mean, std     float32 (D,) tensors: ... then standardised as (x - mean) / std.
                  A head without standardisation stores mean = 0, std = 1.
    num_classes   C
    hparams       the chosen hyperparameters (plain values)
    classes_seen  int64 (C,) tensor: 1 where the class had training rows
    temperature   float > 0: logits are divided by it (fitted on the train holdout for
                  calibrated probabilities; argmax unchanged). Absent in old files: 1.0

Preprocessing lives in the checkpoint (not in the caller) so that a head can never be applied
to features scaled differently from those it was trained on. `evaluate` and the analyses use
`load_head` + `predict_logits` and nothing else.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

FORMAT = "featgap.head/1"
KINDS = ("linear", "mlp")


def build_net(arch: Mapping[str, Any]) -> nn.Sequential:
    """The network of a head: Linear (-> GELU -> Dropout -> Linear)*; a linear head is one Linear."""
    layers: list[nn.Module] = []
    width = int(arch["in_dim"])
    for hidden in arch.get("hidden", []) or []:
        layers += [nn.Linear(width, int(hidden)), nn.GELU(), nn.Dropout(float(arch.get("dropout", 0.0)))]
        width = int(hidden)
    layers.append(nn.Linear(width, int(arch["num_classes"])))
    return nn.Sequential(*layers)


class Head(nn.Module):
    """A saved head as a module: stored preprocessing (buffers) + the network."""

    def __init__(self, checkpoint: Mapping[str, Any]):
        super().__init__()
        self.name = str(checkpoint.get("name", ""))
        self.kind = str(checkpoint["kind"])
        self.arch = dict(checkpoint["arch"])
        self.hparams = dict(checkpoint.get("hparams", {}))
        self.num_classes = int(checkpoint["num_classes"])
        self.l2_normalize = bool(checkpoint.get("l2_normalize", False))
        self.temperature = float(checkpoint.get("temperature", 1.0))
        self.register_buffer("mean", torch.as_tensor(checkpoint["mean"], dtype=torch.float32).clone())
        self.register_buffer("std", torch.as_tensor(checkpoint["std"], dtype=torch.float32).clone())
        self.net = build_net(self.arch)
        self.net.load_state_dict(checkpoint["state_dict"])
        self.eval()

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float()
        if self.l2_normalize:
            x = torch.nn.functional.normalize(x, dim=1)
        return (x - self.mean) / self.std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.net(self.preprocess(x))
        return logits if self.temperature == 1.0 else logits / self.temperature


def make_checkpoint(
    *,
    name: str,
    kind: str,
    arch: Mapping[str, Any],
    state_dict: Mapping[str, torch.Tensor],
    mean: np.ndarray | torch.Tensor,
    std: np.ndarray | torch.Tensor,
    l2_normalize: bool,
    hparams: Mapping[str, Any],
    classes_seen: np.ndarray | torch.Tensor | None = None,
    temperature: float = 1.0,
) -> dict[str, Any]:
    """Assemble the checkpoint dict (CPU, contiguous float32 tensors, plain-value metadata)."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    c = int(arch["num_classes"])
    seen = torch.ones(c, dtype=torch.int64) if classes_seen is None else torch.as_tensor(classes_seen).to(torch.int64)
    return {
        "format": FORMAT,
        "name": name,
        "kind": kind,
        "arch": {
            "in_dim": int(arch["in_dim"]),
            "num_classes": c,
            "hidden": [int(h) for h in arch.get("hidden", []) or []],
            "dropout": float(arch.get("dropout", 0.0)),
            "activation": "gelu",
        },
        "state_dict": {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in state_dict.items()},
        "mean": torch.as_tensor(mean, dtype=torch.float32).detach().cpu().contiguous(),
        "std": torch.as_tensor(std, dtype=torch.float32).detach().cpu().contiguous(),
        "l2_normalize": bool(l2_normalize),
        "num_classes": c,
        "hparams": dict(hparams),
        "classes_seen": seen.contiguous(),
        "temperature": float(temperature),
    }


def save_head(path: str | os.PathLike, checkpoint: Mapping[str, Any]) -> None:
    """Atomically torch.save a checkpoint (after checking it loads back into a Head)."""
    from scripts.lib.featio.atomic import atomic_path

    Head(checkpoint)  # fail before writing if the dict is inconsistent
    with atomic_path(path) as tmp:
        torch.save(dict(checkpoint), tmp)


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    from scripts.lib.featio.errors import FeatgapError

    path = Path(path)
    if not path.is_file():
        raise FeatgapError(f"{path}: head file not found")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise FeatgapError(f"{path}: not a loadable featgap head ({err})") from None
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != FORMAT:
        raise FeatgapError(f"{path}: expected a dict with format={FORMAT!r}")
    return checkpoint


def load_head(path_or_checkpoint: str | os.PathLike | Mapping[str, Any], device: str = "cpu") -> Head:
    """A saved head (path or checkpoint dict) as an eval-mode `Head` module on `device`."""
    if isinstance(path_or_checkpoint, Mapping):
        checkpoint = path_or_checkpoint
    else:
        checkpoint = load_checkpoint(path_or_checkpoint)
    return Head(checkpoint).to(device)


@torch.no_grad()
def predict_logits(
    head: Head | Mapping[str, Any] | str | os.PathLike,
    features: np.ndarray,
    batch_size: int = 8192,
    device: str | None = None,
) -> np.ndarray:
    """Logits (n, C) float32 of a head on raw features (n, D); preprocessing is the head's own.

    Batched so that memory stays at one batch of logits beyond the (n, C) result.
    """
    from scripts.lib.featio.errors import FeatgapError

    module = head if isinstance(head, Head) else load_head(head)
    if device is not None:
        module = module.to(device)
    dev = module.mean.device
    features = np.asarray(features)
    if features.ndim != 2 or features.shape[1] != module.arch["in_dim"]:
        raise FeatgapError(
            f"head {module.name!r} expects features of shape (n, {module.arch['in_dim']}), got {features.shape}"
        )
    out = np.empty((features.shape[0], module.num_classes), dtype=np.float32)
    for start in range(0, features.shape[0], batch_size):
        block = torch.from_numpy(np.ascontiguousarray(features[start : start + batch_size], dtype=np.float32))
        out[start : start + len(block)] = module(block.to(dev)).float().cpu().numpy()
    return out
