"""Extract a timm model's pooled pre-logits from a slice of an image split into one Parquet shard.

One part job: the rows [start, stop) of the split's sorted file list (scripts.lib.images.folders),
so parts are independent and a cluster runs them in parallel. Images are decoded with PIL and
converted to RGB, as timm's ImageDataset does, then preprocessed by the model's eval transform
(scripts.lib.images.model).

CUDA: bf16 autocast, DataLoader workers, pinned memory. CPU: float32, no autocast, so the output
equals a plain timm loop up to float-summation order (tests check to 1e-5).

An unreadable or truncated image stops the job with one line naming the file, or
(on_bad_image="skip") is left out and counted: its row id is missing from the shard and its path
is listed in the result and the log, never dropped silently. Decoding errors are caught inside
the workers and returned as data, so the message is one line and not a worker traceback.
"""
from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from PIL import Image
from tqdm import tqdm

from scripts.lib.featio.arrow import features_to_arrow, numpy_to_arrow
from scripts.lib.featio.atomic import atomic_path
from scripts.lib.featio.errors import FeatgapError
from scripts.lib.featio.shards import shard_schema
from scripts.lib.images.model import ModelSpec, build_model, feature_width, make_transform, pre_logits
from scripts.lib.images.tv_compat import import_torchvision

# At import: a DataLoader worker started by "spawn" (macOS, Windows) unpickles ImageFiles, whose
# module is imported before its transform's torchvision classes are looked up.
import_torchvision()

ON_BAD_IMAGE = ("fail", "skip")


@dataclass
class PartResult:
    rows: int
    dim: int
    seconds: float
    skipped: list[str] = field(default_factory=list)  # paths left out (on_bad_image="skip")
    data_config: dict = field(default_factory=dict)


class ImageFiles(torch.utils.data.Dataset):
    """(position, tensor) per image, or (position, error text) when it cannot be decoded."""

    def __init__(self, root: str | os.PathLike, paths: Sequence[str], transform):
        self.root, self.paths, self.transform = Path(root), list(paths), transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        try:
            # As timm's ImageDataset: PIL, converted to RGB (greyscale/CMYK JPEGs exist in ImageNet).
            # PIL decodes lazily: convert() is where a truncated file fails.
            with Image.open(self.root / self.paths[i]) as img:
                return i, self.transform(img.convert("RGB"))
        except (OSError, ValueError, SyntaxError) as err:  # UnidentifiedImageError is an OSError
            return i, (str(err).strip().splitlines() or [type(err).__name__])[0]


def collate(batch):
    """Stack the decoded images; keep the failures apart as (position, message)."""
    good = [(i, x) for i, x in batch if isinstance(x, torch.Tensor)]
    bad = [(i, x) for i, x in batch if not isinstance(x, torch.Tensor)]
    index = torch.tensor([i for i, _ in good], dtype=torch.long)
    # default_collate, not torch.stack: inside a worker it stacks straight into shared memory,
    # saving a copy on the way to the main process (docs/benchmarks.md, extract).
    images = torch.utils.data.default_collate([x for _, x in good]) if good else None
    return index, images, bad


def make_loader(dataset, *, batch_size: int, workers: int, device: torch.device):
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers,
                                       collate_fn=collate, pin_memory=device.type == "cuda")


class ShardWriter:
    """Row groups of `row_group_rows` rows written as batches arrive: bounded memory per part."""

    def __init__(self, path: Path, dim: int, row_group_rows: int, compression: str):
        self.schema, self.row_group_rows = shard_schema(dim), row_group_rows
        # The options of scripts.data.convert's writer: the contract's encoding and checksums.
        self.writer = pq.ParquetWriter(path, self.schema, compression=compression, use_dictionary=["path"],
                                       write_statistics=["row", "label"], write_page_checksum=True)
        self.pending: list[tuple[list[int], list[str], list[int], np.ndarray]] = []
        self.pending_rows = 0

    def add(self, rows, paths, labels, feats) -> None:
        self.pending.append((rows, paths, labels, feats))
        self.pending_rows += len(rows)
        while self.pending_rows >= self.row_group_rows:
            self._flush(self.row_group_rows)

    def _flush(self, n: int) -> None:
        rows = [r for p in self.pending for r in p[0]]
        paths = [s for p in self.pending for s in p[1]]
        labels = [v for p in self.pending for v in p[2]]
        feats = np.concatenate([p[3] for p in self.pending])
        table = pa.Table.from_arrays(
            [numpy_to_arrow(np.asarray(rows[:n]), np.int64), pa.array(paths[:n], type=pa.string()),
             numpy_to_arrow(np.asarray(labels[:n]), np.int16), features_to_arrow(feats[:n])], schema=self.schema)
        self.writer.write_table(table, row_group_size=self.row_group_rows)
        self.pending = [(rows[n:], paths[n:], labels[n:], feats[n:])] if len(rows) > n else []
        self.pending_rows = len(rows) - n

    def close(self) -> None:
        if self.pending_rows:
            self._flush(self.pending_rows)
        self.writer.close()


def extract_part(
    image_root: str | os.PathLike,
    rows: Sequence[int],
    paths: Sequence[str],
    labels: Sequence[int],
    out: str | os.PathLike,
    *,
    spec: ModelSpec,
    batch_size: int = 64,
    workers: int = 0,
    device: str | torch.device = "cpu",
    bf16: bool = True,
    on_bad_image: str = "fail",
    row_group_rows: int = 8192,
    compression: str = "none",
    progress: bool = True,
    seed: int = 0,
) -> PartResult:
    """Features of the images `paths` (relative to `image_root`) into the shard `out`, atomically.
    Threads: the caller's (scripts.lib.threads.limit_threads in the step)."""
    if on_bad_image not in ON_BAD_IMAGE:
        raise FeatgapError(f"extract.on_bad_image: {on_bad_image!r}, expected one of {ON_BAD_IMAGE}")
    if not len(rows) == len(paths) == len(labels):
        raise FeatgapError(f"{out}: {len(rows)} rows, {len(paths)} paths, {len(labels)} labels")
    started = time.perf_counter()
    dev = torch.device(device)
    model, config = build_model(spec, seed)
    model.to(dev)
    dim = feature_width(model)
    loader = make_loader(ImageFiles(image_root, paths, make_transform(config)),
                         batch_size=batch_size, workers=workers, device=dev)
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if dev.type == "cuda" and bf16
                else contextlib.nullcontext())
    skipped: list[str] = []
    written = 0
    with atomic_path(out) as tmp:
        writer = ShardWriter(tmp, dim, row_group_rows, compression)
        try:
            # As a context: the bar is closed (its line ended) before an error is printed.
            with tqdm(total=len(paths), desc=f"extract {Path(out).name}", unit="img", disable=not progress,
                      mininterval=2.0) as bar, torch.inference_mode(), autocast:
                for index, images, bad in loader:
                    for i, message in bad:
                        if on_bad_image == "fail":
                            raise FeatgapError(f"{Path(image_root) / paths[i]}: unreadable image ({message}); "
                                               "replace or remove it, or set extract.on_bad_image: skip")
                        skipped.append(paths[i])
                        print(f"skipped {Path(image_root) / paths[i]}: unreadable image ({message})", file=sys.stderr)
                    if images is not None:
                        feats = pre_logits(model, images.to(dev, non_blocking=True)).float().cpu().numpy()
                        if feats.shape[1] != dim:  # a model whose head breaks the width rule
                            raise FeatgapError(f"{spec.name}: forward_head gave {feats.shape[1]} features, "
                                               f"expected {dim}")
                        idx = index.tolist()
                        writer.add([rows[i] for i in idx], [paths[i] for i in idx], [labels[i] for i in idx], feats)
                        written += len(idx)
                    bar.update(len(index) + len(bad))
        finally:
            writer.close()
    return PartResult(rows=written, dim=dim, seconds=time.perf_counter() - started, skipped=skipped,
                      data_config={k: (list(v) if isinstance(v, tuple) else v) for k, v in config.items()})
