"""Reading a split into memory: row groups decoded in threads straight into one matrix.
"""
from __future__ import annotations

import os
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from scripts.lib.featio import pages
from scripts.lib.featio.arrow import arrow_to_numpy, features_to_numpy
from scripts.lib.featio.errors import FeatgapError
from scripts.lib.featio.shards import REBUILD_HINT, open_split, read_row_group


@dataclass
class Split:
    """One split in memory: the columns a step asked for."""

    row: np.ndarray | None
    path: np.ndarray | None
    label: np.ndarray | None
    features: np.ndarray | None

    def __len__(self) -> int:
        for value in (self.label, self.row, self.features, self.path):
            if value is not None:
                return len(value)
        return 0


def split_shape(manifest_path: str | os.PathLike) -> tuple[int, int]:
    """(rows, dim) from the shard footers, without reading data."""
    rows, dim = 0, 0
    for _, pfile in open_split(manifest_path):
        rows += pfile.metadata.num_rows
        dim = pfile.schema_arrow.field("features").type.list_size
    return rows, dim


def read_split(
    manifest_path: str | os.PathLike,
    *,
    features: bool = True,
    columns: Sequence[str] = ("row", "path", "label"),
    rows: np.ndarray | None = None,
    out: np.ndarray | None = None,
    threads: int | None = None,
) -> Split:
    """Read a split's shards (the ones its manifest lists), row group by row group, into preallocated arrays.

    Row groups are decoded in `threads` threads (default: the cores this process may use, at most
    READ_THREADS), each straight into its rows of the matrix (scripts/lib/featio/pages.py; pyarrow
    for shards in another layout), so peak memory is the result plus one column chunk per
    thread: the feature matrix is never held twice. `rows` (sorted positional indices) selects a
    subset while streaming; `out` lets the caller supply the feature buffer (e.g. pinned memory).
    Every page's CRC-32 is checked either way.
    """
    shards = open_split(manifest_path)
    n_total = sum(pfile.metadata.num_rows for _, pfile in shards)
    dim = shards[0][1].schema_arrow.field("features").type.list_size
    want = None if rows is None else np.asarray(rows, dtype=np.int64)
    n = n_total if want is None else len(want)
    matrix = None
    if features:
        matrix = out if out is not None else np.empty((n, dim), dtype=np.float32)
        if matrix.shape != (n, dim):
            raise ValueError(f"out has shape {matrix.shape}, expected {(n, dim)}")
    tasks: list[_GroupTask] = []
    start, filled = 0, 0
    for shard, pfile in shards:
        lock = threading.Lock()  # pyarrow calls on one ParquetFile, one thread at a time
        for group in range(pfile.num_row_groups):
            g_rows = pfile.metadata.row_group(group).num_rows
            local = None
            if want is not None:
                lo, hi = np.searchsorted(want, [start, start + g_rows])
                local = want[lo:hi] - start
            if local is None or len(local):
                tasks.append(_GroupTask(shard, pfile, lock, group, filled, local))
                filled += g_rows if local is None else len(local)
            start += g_rows

    scratch = threading.local()  # each thread's buffers, for this call only

    def one(task: _GroupTask) -> dict[str, np.ndarray]:
        return _read_group(task, list(columns), matrix, dim, scratch)

    # Threads pay off on large reads; a small one (a streamed pool, a test set's labels) is read
    # in this thread, so its memory stays the result plus one row group.
    small = matrix is None or matrix.nbytes < PARALLEL_READ_BYTES
    workers = 1 if small else min(len(tasks), threads or _read_threads())
    if workers > 1:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            results = list(pool.map(one, tasks))
    else:
        results = [one(task) for task in tasks]
    merged = {
        name: (np.concatenate([r[name] for r in results]) if results else np.empty(0)) for name in columns
    }
    return Split(
        row=merged.get("row"), path=merged.get("path"), label=merged.get("label"), features=matrix
    )


READ_THREADS = 4  # decoding is ~1.5 GB/s per core; more threads than this only queue on the disk


PARALLEL_READ_BYTES = 64 << 20


def _read_threads() -> int:
    return max(1, min(READ_THREADS, len(os.sched_getaffinity(0))))


@dataclass
class _GroupTask:
    shard: Path
    pfile: pq.ParquetFile
    lock: threading.Lock
    group: int
    at: int  # first row of this group's rows in the result
    local: np.ndarray | None  # the group's rows to keep (None: all)


def _read_group(task: _GroupTask, columns: list[str], matrix: np.ndarray | None, dim: int,
                scratch: threading.local) -> dict[str, np.ndarray]:
    """One row group: its small columns through pyarrow, its features into `matrix`."""
    values: dict[str, np.ndarray] = {}
    if columns:
        with task.lock:
            table = read_row_group(task.shard, task.pfile, task.group, columns)
        if task.local is not None:
            table = table.take(pa.array(task.local))
        for name in columns:
            column = table.column(name)
            values[name] = (arrow_to_numpy(column) if pa.types.is_integer(column.type)
                            else column.to_numpy(zero_copy_only=False))
    if matrix is not None:
        _features_into(task, matrix, dim, scratch)
    return values


def _features_into(task: _GroupTask, matrix: np.ndarray, dim: int, scratch: threading.local) -> None:
    g_rows = task.pfile.metadata.row_group(task.group).num_rows
    count = g_rows if task.local is None else len(task.local)
    target = matrix[task.at : task.at + count]
    column = _features_leaf(task.pfile)
    try:
        if column is None:
            done = False
        elif task.local is None and target.flags.c_contiguous:  # straight into the caller's matrix
            done = pages.features_into(task.shard, task.pfile, task.group, column, target, scratch)
        else:  # a subset: rows picked from the group, in place in the read buffer
            view = pages.features_view(task.shard, task.pfile, task.group, column, (g_rows, dim), scratch)
            if done := view is not None:
                target[:] = view if task.local is None else view[task.local]
    except pages.PageChecksumError as err:
        raise FeatgapError(f"{task.shard}: row group {task.group} is corrupt ({err}); {REBUILD_HINT}") from None
    if not done:  # another layout: pyarrow decodes it
        with task.lock:
            table = read_row_group(task.shard, task.pfile, task.group, ["features"])
        block = features_to_numpy(table.column("features"), dim)
        target[:] = block if task.local is None else block[task.local]


def _features_leaf(pfile: pq.ParquetFile) -> int | None:
    """The Parquet leaf column index of `features` (its one float leaf), or None."""
    leaves = [i for i in range(pfile.metadata.num_columns)
              if pfile.schema.column(i).path.split(".")[0] == "features"]
    return leaves[0] if len(leaves) == 1 else None


def iter_row_groups(
    manifest_path: str | os.PathLike, columns: Sequence[str] = ("row", "path", "label", "features")
) -> Iterator[pa.Table]:
    """Stream a split one row group at a time (bounded memory for any split size)."""
    for shard, pfile in open_split(manifest_path):
        for group in range(pfile.num_row_groups):
            yield read_row_group(shard, pfile, group, columns)
