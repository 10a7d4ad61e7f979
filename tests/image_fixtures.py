"""Small generated images in the ImageNet train / val and ImageNetV2 folder layouts (tests, benchmark),
and the peer every extraction is checked against: a plain timm loop.

Layouts, as in the seed CSVs' `path` column:
  train/n01440764/n01440764_18.JPEG
  val/n01440764/ILSVRC2012_val_00000293.JPEG
  imagenetv2-matched-frequency-format-val/0/7e4a….jpeg   (numeric class folders 0..C-1)
Each image is a deterministic colour pattern (class-dependent hue, per-image noise) of a size
that varies a little, so resizing and cropping are exercised.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
from PIL import Image

# The first real ImageNet synsets, in their sorted order (class 0, 1, 2, …).
SYNSETS = ["n01440764", "n01443537", "n01484850", "n01491361", "n01494475", "n01496331",
           "n01498041", "n01514668", "n01514859", "n01518878", "n01530575", "n01531178"]
V2_FOLDER = "imagenetv2-matched-frequency-format-val"


def image(seed: int, label: int, size: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    h = size + int(rng.integers(-size // 4, size // 4 + 1))
    w = size + int(rng.integers(-size // 4, size // 4 + 1))
    base = np.array([(37 * label) % 256, (91 * label + 40) % 256, (151 * label + 80) % 256], dtype=np.float32)
    noise = rng.normal(0, 40, size=(h, w, 3))
    return Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8))


def save(img: Image.Image, path: Path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, format="JPEG", quality=85)
    return str(path)


def make_train(root: str | os.PathLike, classes: int = 3, per_class: int = 4, size: int = 64) -> list[str]:
    out = []
    for label, syn in enumerate(SYNSETS[:classes]):
        for i in range(per_class):
            name = f"{syn}_{18 + 7 * i}.JPEG"  # numbers of different widths: 18, 25, …, natural order matters
            out.append(save(image(1000 * label + i, label, size), Path(root) / "train" / syn / name))
    return out


def make_val(root: str | os.PathLike, classes: int = 3, per_class: int = 2, size: int = 64) -> list[str]:
    out, k = [], 0
    for label, syn in enumerate(SYNSETS[:classes]):
        for i in range(per_class):
            k += 1
            name = f"ILSVRC2012_val_{293 + 1000 * k:08d}.JPEG"
            out.append(save(image(50_000 + 100 * label + i, label, size), Path(root) / "val" / syn / name))
    return out


def make_v2(root: str | os.PathLike, classes: int = 12, per_class: int = 2, size: int = 64) -> list[str]:
    """ImageNetV2 layout: folders 0..classes-1, file names are SHA-1 hex digests + .jpeg."""
    out = []
    for label in range(classes):
        for i in range(per_class):
            name = hashlib.sha1(f"{label}-{i}".encode()).hexdigest() + ".jpeg"
            out.append(save(image(90_000 + 100 * label + i, label, size), Path(root) / V2_FOLDER / str(label) / name))
    return out


def corrupt_jpeg(path: str | os.PathLike, *, keep: int = 200, size: int = 64) -> str:
    """A JPEG cut after `keep` bytes (a truncated download): PIL opens it, decoding fails."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".full.tmp")
    image(7, 0, size).save(tmp, format="JPEG", quality=85)
    path.write_bytes(tmp.read_bytes()[:keep])
    tmp.unlink()
    return str(path)


def plain_timm_features(folder: str | os.PathLike, model, data_config: dict, *, batch_size: int = 64,
                        workers: int = 0, device: str = "cpu") -> tuple[list[str], list[int], np.ndarray]:
    """(file names relative to `folder`, timm's targets, pre-logits) in timm's folder order:
    timm's ImageDataset + a plain DataLoader loop, nothing of featgap's (on CUDA with bf16
    autocast and pinned memory, as the extract stage)."""
    import contextlib

    import torch

    from scripts.lib.images.tv_compat import import_timm

    timm = import_timm()
    dataset = timm.data.ImageDataset(str(folder), transform=timm.data.create_transform(**data_config))
    cuda = torch.device(device).type == "cuda"
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers,
                                         pin_memory=cuda)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else contextlib.nullcontext()
    feats = []
    with torch.inference_mode(), autocast:
        for images, _ in loader:
            x = images.to(device, non_blocking=True)
            feats.append(model.forward_head(model.forward_features(x), pre_logits=True).float().cpu().numpy())
    names = [dataset.filename(i) for i in range(len(dataset))]
    targets = [int(t) for _, t in dataset.reader.samples]
    return names, targets, np.concatenate(feats)
