"""Training data for the heads and baselines: one preprocessed float32 matrix, or a stream.

The train split is read once, row group by row group, into a preallocated float32 matrix
(pinned on CUDA); L2 normalisation and standardisation are applied in place, so the matrix is
never held twice. When the matrix exceeds `memory_budget_mb`, rows are streamed instead.

Shuffling is global in both modes, because the real file is sorted by class (a per-shard or
per-row-group shuffle would give one-class batches). Each epoch draws one permutation of all
training rows and cuts it into batches; the streaming mode cuts the same permutation into pools
of `pool_rows` (a multiple of the batch size), reads each pool's rows with `read_split(rows=...)`
and serves its batches in permutation order. The batch sequence, and hence the trained model,
is therefore identical in both modes; streaming costs one scan of the shards per pool.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np
import pyarrow.parquet as pq
import torch

from scripts.featio import FeatgapError, list_shards, read_split, split_shape

MB = 1 << 20


def resolve_device(name: str) -> torch.device:
    """`auto` → CUDA when present, else CPU; an explicit `cuda` without a GPU is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise FeatgapError(f"train.device={name!r} but no CUDA device is available (use auto or cpu)")
    if name != "cpu" and not name.startswith("cuda"):
        raise FeatgapError(f"train.device must be auto, cpu or cuda[:N], got {name!r}")
    return torch.device(name)


def row_group_sizes(folder: str | os.PathLike) -> list[int]:
    """Rows per row group in read order: the block boundaries every pass uses (same sums, same bytes)."""
    sizes = []
    for shard in list_shards(folder):
        meta = pq.ParquetFile(shard).metadata
        sizes += [meta.row_group(g).num_rows for g in range(meta.num_row_groups)]
    return sizes


def stratified_holdout(labels: np.ndarray, fraction: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(fit_rows, holdout_rows), both sorted: round(fraction · n_c) rows of each class held out,
    never the class's last row (a tiny class keeps at least one training row)."""
    if not 0.0 <= fraction < 1.0:
        raise FeatgapError(f"holdout_fraction must be in [0, 1), got {fraction}")
    order = np.argsort(labels, kind="stable")
    starts = np.flatnonzero(np.r_[True, labels[order][1:] != labels[order][:-1]])
    ends = np.r_[starts[1:], len(order)]
    held = []
    for start, end in zip(starts, ends):
        n = end - start
        take = min(int(math.floor(fraction * n + 0.5)), n - 1)
        if take > 0:
            held.append(rng.choice(order[start:end], size=take, replace=False))
    holdout = np.sort(np.concatenate(held)) if held else np.empty(0, dtype=np.int64)
    mask = np.ones(len(labels), dtype=bool)
    mask[holdout] = False
    return np.flatnonzero(mask), holdout


class Preprocess:
    """Row L2 normalisation (optional) then (x - mean) / std, in place on float32 blocks."""

    def __init__(self, dim: int, l2_normalize: bool, standardize: bool):
        self.l2_normalize, self.standardize = l2_normalize, standardize
        self.sum = np.zeros(dim, dtype=np.float64)
        self.sumsq = np.zeros(dim, dtype=np.float64)
        self.count = 0
        self.mean = np.zeros(dim, dtype=np.float32)
        self.std = np.ones(dim, dtype=np.float32)

    def normalise_rows(self, block: np.ndarray) -> None:
        if self.l2_normalize:
            norms = np.linalg.norm(block, axis=1, keepdims=True)
            block /= np.maximum(norms, 1e-12)

    def accumulate(self, block: np.ndarray) -> None:
        wide = block.astype(np.float64)
        self.sum += wide.sum(axis=0)
        self.sumsq += np.square(wide).sum(axis=0)
        self.count += len(block)

    def finish(self) -> None:
        if not self.standardize or self.count == 0:
            return
        mean = self.sum / self.count
        var = np.maximum(self.sumsq / self.count - mean**2, 0.0)
        std = np.sqrt(var)
        # A constant feature would divide by ~0: leave it unscaled (it carries no information).
        std[std < 1e-6] = 1.0
        self.mean, self.std = mean.astype(np.float32), std.astype(np.float32)

    def apply(self, block: np.ndarray) -> None:
        """In place, on rows that have not been L2-normalised yet."""
        self.normalise_rows(block)
        if self.standardize:
            block -= self.mean
            block /= self.std


@dataclass
class TrainSet:
    """Labels, the holdout split, the preprocessing, and a batch source on `device`."""

    folder: str
    labels: np.ndarray  # (N,) int64, all train rows in file order
    fit_rows: np.ndarray
    holdout_rows: np.ndarray
    num_classes: int
    dim: int
    prep: Preprocess
    device: torch.device
    streaming: bool
    pool_rows: int = 0
    matrix: torch.Tensor | None = None  # preprocessed (N, D), CPU (pinned on CUDA) or on device
    holdout_x: torch.Tensor | None = None  # streaming mode only
    stats: dict = field(default_factory=dict)

    @property
    def labels_t(self) -> torch.Tensor:
        if not hasattr(self, "_labels_t"):
            self._labels_t = torch.from_numpy(self.labels).to(self.device)
        return self._labels_t

    def class_counts(self, rows: np.ndarray) -> np.ndarray:
        return np.bincount(self.labels[rows], minlength=self.num_classes)

    # ------------------------------------------------------------ batches
    def batches(self, rows: np.ndarray, batch_size: int, rng: np.random.Generator) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """One epoch over `rows` in a fresh global permutation: (x, y) on the device."""
        order = rows[rng.permutation(len(rows))]
        if not self.streaming:
            yield from self._gather_batches(self.matrix, order, order, batch_size)
            return
        pool = self.pool_rows
        for start in range(0, len(order), pool):
            chunk = order[start : start + pool]
            wanted = np.sort(chunk)
            block = read_split(self.folder, columns=(), rows=wanted).features
            self.prep.apply(block)
            local = np.searchsorted(wanted, chunk)  # positions of the chunk's rows inside block
            yield from self._gather_batches(torch.from_numpy(block), local, chunk, batch_size)

    def _gather_batches(self, source: torch.Tensor, local: np.ndarray, global_rows: np.ndarray, batch_size: int):
        on_device = source.device == self.device
        staging = _Staging(self.device) if not on_device else None
        for start in range(0, len(local), batch_size):
            # Sorted within the batch: better memory locality; the batch's gradient is a sum anyway.
            sel = np.argsort(local[start : start + batch_size], kind="stable")
            idx = local[start : start + batch_size][sel]
            rows = global_rows[start : start + batch_size][sel]
            index = torch.from_numpy(idx)
            if on_device:
                x = source.index_select(0, index.to(self.device))
            else:
                x = staging.copy(source, index)
            yield x, self.labels_t[torch.from_numpy(rows).to(self.device)]

    def holdout_batches(self, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The holdout rows in file order, preprocessed, on the device."""
        rows = self.holdout_rows
        for start in range(0, len(rows), batch_size):
            sl = rows[start : start + batch_size]
            if self.streaming:
                x = self.holdout_x[start : start + batch_size]
            else:
                x = self.matrix.index_select(0, torch.from_numpy(sl).to(self.matrix.device))
            yield x.to(self.device, non_blocking=True), self.labels_t[torch.from_numpy(sl).to(self.device)]

    def features(self, rows: np.ndarray) -> np.ndarray:
        """Preprocessed features of `rows` as a host array (for the sklearn baselines)."""
        if not self.streaming:
            return self.matrix.index_select(0, torch.from_numpy(rows).to(self.matrix.device)).cpu().numpy()
        order = np.argsort(rows, kind="stable")
        block = read_split(self.folder, columns=(), rows=rows[order]).features
        self.prep.apply(block)
        out = np.empty_like(block)
        out[order] = block
        return out


class _Staging:
    """Host → CUDA batch transfer through two pinned buffers (overlaps copy and compute).

    On the CPU the gathered batch is returned directly."""

    def __init__(self, device: torch.device):
        self.device = device
        self.cuda = device.type == "cuda"
        self.buffers: list[torch.Tensor] = []
        self.events: list = []
        self.turn = 0

    def copy(self, source: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        if not self.cuda:
            return source.index_select(0, index)
        shape = (len(index), source.shape[1])
        if len(self.buffers) < 2:
            self.buffers.append(torch.empty(shape, dtype=source.dtype, pin_memory=True))
            self.events.append(None)
        slot = self.turn % 2
        self.turn += 1
        if self.events[slot] is not None:
            self.events[slot].synchronize()  # the previous copy from this buffer has finished
        buf = self.buffers[slot][: len(index)]
        torch.index_select(source, 0, index, out=buf)
        x = buf.to(self.device, non_blocking=True)
        event = torch.cuda.Event()
        event.record()
        self.events[slot] = event
        return x


def load_train(
    folder: str | os.PathLike,
    *,
    num_classes: int,
    holdout_fraction: float,
    seed: int,
    l2_normalize: bool = False,
    standardize: bool = True,
    memory_budget_mb: float = 12000,
    device: torch.device | str = "cpu",
    batch_size: int = 1024,
) -> TrainSet:
    """Read labels, choose the holdout, compute the preprocessing, and load or plan streaming."""
    import time

    folder = str(folder)
    device = torch.device(device)
    t0 = time.perf_counter()
    n, dim = split_shape(folder)
    labels = read_split(folder, features=False, columns=("label",)).label.astype(np.int64)
    if n == 0:
        raise FeatgapError(f"{folder}: the train split has no rows")
    bad = np.flatnonzero((labels < 0) | (labels >= num_classes))
    if len(bad):
        raise FeatgapError(
            f"{folder}: row {int(bad[0])} has label {int(labels[bad[0]])}, expected 0..{num_classes - 1}"
        )
    fit_rows, holdout_rows = stratified_holdout(labels, holdout_fraction, np.random.default_rng([seed, 0]))
    prep = Preprocess(dim, l2_normalize, standardize)
    sizes = row_group_sizes(folder)
    nbytes = n * dim * 4
    streaming = nbytes > memory_budget_mb * MB
    ts = TrainSet(folder, labels, fit_rows, holdout_rows, num_classes, dim, prep, device, streaming)
    if not streaming:
        pin = device.type == "cuda"
        matrix = torch.empty((n, dim), dtype=torch.float32, pin_memory=pin)
        read_split(folder, columns=(), out=matrix.numpy())
        load_s = time.perf_counter() - t0
        host = matrix.numpy()
        for block in _blocks(host, sizes):
            prep.normalise_rows(block)
            prep.accumulate(block)
        prep.finish()
        if standardize:
            for block in _blocks(host, sizes):
                block -= prep.mean
                block /= prep.std
        if device.type == "cuda" and _fits_on_device(nbytes, device):
            matrix = matrix.to(device)  # batches are then indexed on the device, no transfers
        ts.matrix = matrix
    else:
        from scripts.featio import iter_row_groups

        for table in iter_row_groups(folder, columns=("features",)):
            from scripts.featio import features_to_numpy

            block = np.array(features_to_numpy(table.column("features"), dim), dtype=np.float32)
            prep.normalise_rows(block)
            prep.accumulate(block)
        prep.finish()
        load_s = time.perf_counter() - t0
        per_pool = max(1, int(memory_budget_mb * MB // (dim * 4)) // batch_size)
        ts.pool_rows = per_pool * batch_size
        ts.holdout_x = torch.from_numpy(ts.features(holdout_rows)) if len(holdout_rows) else torch.empty(0, dim)
    ts.stats = {
        "rows": n,
        "dim": dim,
        "fit_rows": len(fit_rows),
        "holdout_rows": len(holdout_rows),
        "matrix_mb": round(nbytes / MB, 1),
        "streaming": streaming,
        "pool_rows": ts.pool_rows,
        "load_s": round(load_s, 3),
        "load_mb_per_s": round(nbytes / MB / max(load_s, 1e-9), 1),
        "classes_seen": int((np.bincount(labels, minlength=num_classes) > 0).sum()),
    }
    return ts


def _blocks(matrix: np.ndarray, sizes: list[int]) -> Iterator[np.ndarray]:
    start = 0
    for size in sizes:
        yield matrix[start : start + size]
        start += size


def _fits_on_device(nbytes: int, device: torch.device) -> bool:
    """Keep the matrix on the GPU when it leaves at least half the free memory for training."""
    free, _total = torch.cuda.mem_get_info(device)
    return nbytes < 0.5 * free
