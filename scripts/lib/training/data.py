"""Training data for the heads and baselines: one preprocessed float32 matrix, or a stream.

Where the matrix lives is decided *before* anything is allocated (`choose_placement`):

* ``device``: CUDA and the matrix fits on the GPU. Row groups are read through one small pinned
  staging block straight into a preallocated GPU matrix, so the host never holds the matrix
  (nor 8 GiB of pinned memory: torch's pinned allocator rounds a 5.25 GB request up to a power
  of two and keeps it cached). Batches are gathered on the GPU from a permutation uploaded once
  per epoch: no host→device copy and no host synchronisation per step.
* ``host``: the matrix fits the host memory budget. It is ordinary (pageable) memory; on CUDA
  each batch is gathered into one of two small pinned buffers and copied asynchronously (no host
  synchronisation per copy). The copies are issued on the compute stream, so the GPU runs a
  batch's copy between two steps, not during one: what overlaps the GPU's work is the host's
  gather of the next batch. Reusing a buffer waits for the copy that last read it (two batches
  back), so the host runs at most two steps ahead.
* ``stream``: larger than `memory_budget_mb`. Rows are read in pools; the previous pool is
  released before the next is read, so at most one pool is held.

Shuffling is global in every placement, because the real file is sorted by class (a per-shard
or per-row-group shuffle would give one-class batches). Each epoch draws one permutation of all
training rows and cuts it into batches (rows sorted within a batch, for memory locality; the
batch gradient is a sum anyway); streaming cuts the same permutation into pools of `pool_rows`
(a multiple of the batch size). The batch sequence, and hence the trained model, is the same
in every placement.
"""
from __future__ import annotations

import math
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import pyarrow.parquet as pq
import torch

from scripts.lib.featio.arrow import features_to_numpy
from scripts.lib.featio.errors import FeatgapError
from scripts.lib.featio.reader import iter_row_groups, read_split, split_shape
from scripts.lib.featio.shards import list_shards

MB = 1 << 20
PLACEMENTS = ("device", "host", "stream")


def row_group_sizes(manifest: str | os.PathLike) -> list[int]:
    """Rows per row group in read order: the block boundaries every pass uses (same sums, same bytes)."""
    sizes = []
    for shard in list_shards(manifest):
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
        take = min(math.floor(fraction * n + 0.5), n - 1)
        if take > 0:
            held.append(rng.choice(order[start:end], size=take, replace=False))
    holdout = np.sort(np.concatenate(held)) if held else np.empty(0, dtype=np.int64)
    mask = np.ones(len(labels), dtype=bool)
    mask[holdout] = False
    return np.flatnonzero(mask), holdout


class Preprocess:
    """Row L2 normalisation (optional) then (x - mean) / std, in place on float32 blocks.

    Blocks may be numpy arrays or torch tensors (on the GPU when the matrix lives there); the
    sums are float64 either way."""

    def __init__(self, dim: int, l2_normalize: bool, standardize: bool):
        self.l2_normalize, self.standardize = l2_normalize, standardize
        self.sum = np.zeros(dim, dtype=np.float64)
        self.sumsq = np.zeros(dim, dtype=np.float64)
        self.count = 0
        self.mean = np.zeros(dim, dtype=np.float32)
        self.std = np.ones(dim, dtype=np.float32)

    def normalise_rows(self, block) -> None:
        if not self.l2_normalize:
            return
        if isinstance(block, torch.Tensor):
            block /= torch.linalg.vector_norm(block, dim=1, keepdim=True).clamp_min_(1e-12)
        else:
            block /= np.maximum(np.linalg.norm(block, axis=1, keepdims=True), 1e-12)

    def accumulate(self, block) -> None:
        if isinstance(block, torch.Tensor):
            wide = block.double()
            self.sum += wide.sum(0).cpu().numpy()
            self.sumsq += wide.square_().sum(0).cpu().numpy()
        else:
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

    def standardise(self, block) -> None:
        """In place, on rows already L2-normalised (when configured)."""
        if not self.standardize:
            return
        if isinstance(block, torch.Tensor):
            block.sub_(torch.from_numpy(self.mean).to(block.device)).div_(torch.from_numpy(self.std).to(block.device))
        else:
            block -= self.mean
            block /= self.std

    def apply(self, block) -> None:
        """Both steps, in place, on raw rows."""
        self.normalise_rows(block)
        self.standardise(block)


def choose_placement(nbytes: int, device: torch.device, memory_budget_mb: float, wanted: str = "auto") -> str:
    """Where the preprocessed matrix lives; decided before any allocation (see the module doc)."""
    if wanted not in ("auto", *PLACEMENTS):
        raise FeatgapError(f"train.placement must be auto, device, host or stream, got {wanted!r}")
    if wanted == "device" and device.type != "cuda":
        raise FeatgapError(f"train.placement=device needs a CUDA device, but training runs on {device}")
    if wanted != "auto":
        return wanted
    if device.type == "cuda" and _fits_on_device(nbytes, device):
        return "device"
    return "host" if nbytes <= memory_budget_mb * MB else "stream"


def _fits_on_device(nbytes: int, device: torch.device) -> bool:
    """Keep the matrix on the GPU when it leaves at least half the free memory for training."""
    free, _total = torch.cuda.mem_get_info(device)
    return nbytes < 0.5 * free


@dataclass
class TrainSet:
    """Labels, the holdout split, the preprocessing, and a batch source on `device`."""

    manifest: str
    labels: np.ndarray  # (N,) int64, all train rows in file order
    fit_rows: np.ndarray
    holdout_rows: np.ndarray
    num_classes: int
    dim: int
    prep: Preprocess
    device: torch.device
    placement: str  # device | host | stream
    pool_rows: int = 0
    matrix: torch.Tensor | None = None  # preprocessed (N, D), on the GPU or in host memory
    holdout_x: torch.Tensor | None = None  # stream placement only (host)
    stats: dict = field(default_factory=dict)

    @property
    def streaming(self) -> bool:
        return self.placement == "stream"

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
        if self.placement == "device":
            yield from self._device_batches(order, batch_size)
            return
        staging = _Staging(self.device, batch_size, self.dim)
        if self.placement == "host":
            yield from self._host_batches(self.matrix, order, order, batch_size, staging)
            return
        pool = self.pool_rows
        for start in range(0, len(order), pool):
            chunk = order[start : start + pool]
            wanted = np.sort(chunk)
            # Release the previous pool before reading the next: never two pools at once.
            block = None
            block = read_split(self.manifest, columns=(), rows=wanted).features
            self.prep.apply(block)
            local = np.searchsorted(wanted, chunk)  # positions of the chunk's rows inside block
            yield from self._host_batches(torch.from_numpy(block), local, chunk, batch_size, staging)

    def _device_batches(self, order: np.ndarray, batch_size: int):
        """Matrix on the GPU: the permutation goes up once, batches are gathered there."""
        perm = _upload(order, self.device)
        for start in range(0, len(order), batch_size):
            idx = torch.sort(perm[start : start + batch_size]).values
            yield self.matrix.index_select(0, idx), self.labels_t.index_select(0, idx)

    def _host_batches(self, source: torch.Tensor, local: np.ndarray, global_rows: np.ndarray, batch_size: int,
                      staging: _Staging):
        for start in range(0, len(local), batch_size):
            sel = np.argsort(local[start : start + batch_size], kind="stable")
            idx = torch.from_numpy(local[start : start + batch_size][sel])
            y = torch.from_numpy(self.labels[global_rows[start : start + batch_size][sel]])
            yield staging.copy(source, idx, y)

    def holdout_batches(self, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The holdout rows in file order, preprocessed, float32, on the device."""
        rows = self.holdout_rows
        for start in range(0, len(rows), batch_size):
            sl = torch.from_numpy(rows[start : start + batch_size])
            if self.streaming:
                x = self.holdout_x[start : start + batch_size]
            else:
                x = self.matrix.index_select(0, sl.to(self.matrix.device))
            yield x.to(self.device), self.labels_t[sl.to(self.device)]

    def row_blocks(self, rows: np.ndarray, block_rows: int = 1 << 15) -> Iterator[torch.Tensor]:
        """Preprocessed features of sorted `rows`, block by block, on the device (bounded memory)."""
        for start in range(0, len(rows), block_rows):
            chunk = rows[start : start + block_rows]
            if self.streaming:
                yield torch.from_numpy(self.features(chunk)).to(self.device)
            else:
                yield self.matrix.index_select(0, torch.from_numpy(chunk).to(self.matrix.device)).to(self.device)

    def features(self, rows: np.ndarray) -> np.ndarray:
        """Preprocessed features of `rows` as a host array (for the sklearn baselines)."""
        if not self.streaming:
            return self.matrix.index_select(0, torch.from_numpy(rows).to(self.matrix.device)).cpu().numpy()
        order = np.argsort(rows, kind="stable")
        block = read_split(self.manifest, columns=(), rows=rows[order]).features
        self.prep.apply(block)
        out = np.empty_like(block)
        out[order] = block
        return out


def whitening_map(data: TrainSet, rows: np.ndarray, dims: int) -> torch.Tensor:
    """(D, dims) PCA-whitening map of the preprocessed features of `rows`: x @ map has unit variance
    along the `dims` leading principal axes. Covariance accumulated in float64, block by block."""
    if not 1 <= dims <= data.dim:
        raise FeatgapError(f"pca_whiten must be between 1 and the feature dimension {data.dim}, got {dims}")
    total = torch.zeros(data.dim, dtype=torch.float64, device=data.device)
    outer = torch.zeros(data.dim, data.dim, dtype=torch.float64, device=data.device)
    for block in data.row_blocks(np.sort(rows)):
        wide = block.double()
        total += wide.sum(0)
        outer += wide.T @ wide
    n = len(rows)
    mean = total / n
    cov = (outer / n - torch.outer(mean, mean)).cpu()
    values, vectors = torch.linalg.eigh(cov)  # ascending
    values, vectors = values.flip(0)[:dims], vectors.flip(1)[:, :dims]
    # A floor relative to the largest variance keeps near-null directions from exploding.
    scale = values.clamp_min(1e-6 * float(values[0])).rsqrt()
    return (vectors * scale).float()


def _upload(values: np.ndarray, device: torch.device) -> torch.Tensor:
    """A host array on the device; on CUDA through pinned memory, asynchronously (no host sync)."""
    tensor = torch.from_numpy(values)
    if device.type != "cuda":
        return tensor
    return tensor.pin_memory().to(device, non_blocking=True)


class _Staging:
    """Host → CUDA batch transfer through two pinned buffers: the host gathers a batch into one
    while the GPU works on the previous one. The copy itself is on the current (compute) stream,
    so it does not overlap the GPU's compute; reusing a buffer waits on the event of its last copy.
    On the CPU the gathered batch is returned directly."""

    def __init__(self, device: torch.device, batch_size: int, dim: int):
        self.device = device
        self.cuda = device.type == "cuda"
        if self.cuda:
            self.x = [torch.empty((batch_size, dim), dtype=torch.float32, pin_memory=True) for _ in range(2)]
            self.y = [torch.empty(batch_size, dtype=torch.int64, pin_memory=True) for _ in range(2)]
            self.events: list = [None, None]
        self.turn = 0

    def copy(self, source: torch.Tensor, index: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.cuda:
            return source.index_select(0, index), y
        slot = self.turn % 2
        self.turn += 1
        if self.events[slot] is not None:
            self.events[slot].synchronize()  # the copy that last read this buffer has finished
        n = len(index)
        x_buf, y_buf = self.x[slot][:n], self.y[slot][:n]
        torch.index_select(source, 0, index, out=x_buf)
        y_buf.copy_(y)
        x = x_buf.to(self.device, non_blocking=True)
        y_dev = y_buf.to(self.device, non_blocking=True)
        event = torch.cuda.Event()
        event.record()
        self.events[slot] = event
        return x, y_dev


def load_train(
    manifest: str | os.PathLike,
    *,
    num_classes: int,
    holdout_fraction: float,
    seed: int,
    l2_normalize: bool = False,
    standardize: bool = True,
    memory_budget_mb: float = 12000,
    device: torch.device | str = "cpu",
    batch_size: int = 1024,
    placement: str = "auto",
) -> TrainSet:
    """Read labels, choose the holdout, decide the placement, then load (or plan streaming)."""
    manifest = str(manifest)
    device = torch.device(device)
    t0 = time.perf_counter()
    n, dim = split_shape(manifest)
    labels = read_split(manifest, features=False, columns=("label",)).label.astype(np.int64)
    if n == 0:
        raise FeatgapError(f"{manifest}: the train split has no rows")
    bad = np.flatnonzero((labels < 0) | (labels >= num_classes))
    if len(bad):
        raise FeatgapError(
            f"{manifest}: row {int(bad[0])} has label {int(labels[bad[0]])}, expected 0..{num_classes - 1}"
        )
    fit_rows, holdout_rows = stratified_holdout(labels, holdout_fraction, np.random.default_rng([seed, 0]))
    prep = Preprocess(dim, l2_normalize, standardize)
    nbytes = n * dim * 4
    placement = choose_placement(nbytes, device, memory_budget_mb, placement)
    ts = TrainSet(manifest, labels, fit_rows, holdout_rows, num_classes, dim, prep, device, placement)
    if placement == "device":
        ts.matrix = _load_to_device(manifest, n, dim, prep, device)
    elif placement == "host":
        ts.matrix = _load_to_host(manifest, n, dim, prep)
    else:
        for table in iter_row_groups(manifest, columns=("features",)):
            block = np.array(features_to_numpy(table.column("features"), dim), dtype=np.float32)
            prep.normalise_rows(block)
            prep.accumulate(block)
        prep.finish()
        per_pool = max(1, int(memory_budget_mb * MB // (dim * 4)) // batch_size)
        ts.pool_rows = per_pool * batch_size
        ts.holdout_x = torch.from_numpy(ts.features(holdout_rows)) if len(holdout_rows) else torch.empty(0, dim)
    _ = ts.labels_t  # on the device now: a first use inside an epoch would be a blocking copy
    load_s = time.perf_counter() - t0
    ts.stats = {
        "rows": n,
        "dim": dim,
        "fit_rows": len(fit_rows),
        "holdout_rows": len(holdout_rows),
        "matrix_mb": round(nbytes / MB, 1),
        "placement": placement,
        "streaming": placement == "stream",
        "pool_rows": ts.pool_rows,
        "load_s": round(load_s, 3),
        "load_mb_per_s": round(nbytes / MB / max(load_s, 1e-9), 1),
        "classes_seen": int((np.bincount(labels, minlength=num_classes) > 0).sum()),
    }
    return ts


def _load_to_host(manifest: str, n: int, dim: int, prep: Preprocess) -> torch.Tensor:
    """One pageable (n, dim) matrix, preprocessed in place block by block."""
    matrix = torch.empty((n, dim), dtype=torch.float32)
    read_split(manifest, columns=(), out=matrix.numpy())
    host = matrix.numpy()
    sizes = row_group_sizes(manifest)
    for block in _blocks(host, sizes):
        prep.normalise_rows(block)
        prep.accumulate(block)
    prep.finish()
    for block in _blocks(host, sizes):
        prep.standardise(block)
    return matrix


def _load_to_device(manifest: str, n: int, dim: int, prep: Preprocess, device: torch.device) -> torch.Tensor:
    """Row groups → one pinned staging block → the preallocated GPU matrix; the statistics and the
    standardisation run on the GPU. Host memory: one row group, not the matrix."""
    matrix = torch.empty((n, dim), dtype=torch.float32, device=device)
    cuda = device.type == "cuda"
    staging, filled = None, 0
    for table in iter_row_groups(manifest, columns=("features",)):
        block = features_to_numpy(table.column("features"), dim)
        rows = len(block)
        if cuda:
            torch.cuda.current_stream(device).synchronize()  # the previous copy has left the buffer
        if staging is None or staging.shape[0] < rows:
            staging = torch.empty((rows, dim), dtype=torch.float32, pin_memory=cuda)
        staging[:rows].numpy()[:] = block
        target = matrix[filled : filled + rows]
        target.copy_(staging[:rows], non_blocking=True)
        prep.normalise_rows(target)
        prep.accumulate(target)
        filled += rows
    if filled != n:
        raise FeatgapError(f"{manifest}: read {filled} train rows, the shard footers say {n}")
    prep.finish()
    for start in range(0, n, 1 << 16):
        prep.standardise(matrix[start : start + (1 << 16)])
    del staging
    release_pinned_cache()
    return matrix


def release_pinned_cache() -> None:
    """Hand torch's cached pinned host blocks back to the system (they stay cached after use)."""
    empty = getattr(torch._C, "_host_emptyCache", None)
    if empty is not None and torch.cuda.is_available():
        empty()


def _blocks(matrix: np.ndarray, sizes: list[int]) -> Iterator[np.ndarray]:
    start = 0
    for size in sizes:
        yield matrix[start : start + size]
        start += size


