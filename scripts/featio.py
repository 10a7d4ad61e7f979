"""Shared I/O for every featgap step: atomic writes, fingerprints, meta blocks, shard reading.

Every step imports from here so that the on-disk contracts of ../shared/DESIGN.md live in one place.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

FEATGAP_VERSION = "0.1.0"
FINGERPRINT_BYTES = 1 << 20  # hash of the first and last MB: cheap on a 13 GB file, catches edits


class FeatgapError(Exception):
    """An input or configuration problem a user must fix; the CLI prints only its message."""


# ---------------------------------------------------------------- atomic outputs
@contextlib.contextmanager
def atomic_path(final: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling path; rename it onto `final` only if the block succeeds.

    Works for files and folders. A failed step leaves nothing that looks finished.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    _remove(tmp)
    try:
        yield tmp
        if final.is_dir() and not final.is_symlink():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        _remove(tmp)
        raise


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink()


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Atomically write pretty JSON (sorted keys, so equal content gives equal bytes)."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    return json.loads(Path(path).read_text())


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


# ---------------------------------------------------------------- provenance
def fingerprint(path: str | os.PathLike) -> dict[str, Any]:
    """Size, mtime and a SHA-256 of the first and last MB of a file."""
    path = Path(path)
    stat = path.stat()
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        digest.update(handle.read(FINGERPRINT_BYTES))
        if stat.st_size > FINGERPRINT_BYTES:
            handle.seek(max(FINGERPRINT_BYTES, stat.st_size - FINGERPRINT_BYTES))
            digest.update(handle.read())
    return {
        "path": str(path),
        "size": stat.st_size,
        "mtime": stat.st_mtime,
        "sha256_head_tail": digest.hexdigest(),
    }


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in ("numpy", "pyarrow", "polars", "pandas", "scipy", "sklearn", "torch", "matplotlib"):
        module = sys.modules.get(name)
        if module is not None:
            versions[name] = getattr(module, "__version__", "?")
    return versions


def meta_block(
    *,
    seed: int | None = None,
    device: str = "cpu",
    started: float | None = None,
    inputs: Sequence[str | os.PathLike] = (),
    input_fingerprints: Sequence[dict[str, Any]] = (),
) -> dict[str, Any]:
    """The `meta` block every JSON artifact carries (DESIGN.md: Contracts)."""
    prints = list(input_fingerprints) + [fingerprint(p) for p in inputs if Path(p).is_file()]
    return {
        "featgap_version": FEATGAP_VERSION,
        "libraries": library_versions(),
        "device": device,
        "seed": seed,
        "wall_time_s": None if started is None else round(time.perf_counter() - started, 3),
        "inputs": prints,
    }


# ---------------------------------------------------------------- shards
SHARD_GLOB = "part-*.parquet"


def shard_schema(dim: int) -> pa.Schema:
    """The Parquet contract: one fixed-size list column keeps a shard one contiguous matrix."""
    return pa.schema(
        [
            ("row", pa.int64()),
            ("path", pa.string()),
            ("label", pa.int16()),
            ("features", pa.list_(pa.float32(), dim)),
        ]
    )


def list_shards(folder: str | os.PathLike) -> list[Path]:
    shards = sorted(Path(folder).glob(SHARD_GLOB))
    if not shards:
        raise FeatgapError(f"{folder}: no {SHARD_GLOB} files (did convert run?)")
    return shards


def features_to_numpy(column: pa.ChunkedArray | pa.Array, dim: int) -> np.ndarray:
    """A fixed_size_list<float32>[dim] column as an (n, dim) float32 view/array (no per-row work)."""
    chunks = column.chunks if isinstance(column, pa.ChunkedArray) else [column]
    parts = []
    for chunk in chunks:
        flat = chunk.flatten() if chunk.offset == 0 else chunk.values.slice(chunk.offset * dim, len(chunk) * dim)
        parts.append(flat.to_numpy(zero_copy_only=False).reshape(-1, dim))
    if not parts:
        return np.empty((0, dim), dtype=np.float32)
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


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


def split_shape(folder: str | os.PathLike) -> tuple[int, int]:
    """(rows, dim) from the shard footers, without reading data."""
    rows, dim = 0, 0
    for shard in list_shards(folder):
        meta = pq.ParquetFile(shard)
        rows += meta.metadata.num_rows
        dim = meta.schema_arrow.field("features").type.list_size
    return rows, dim


def read_split(
    folder: str | os.PathLike,
    *,
    features: bool = True,
    columns: Sequence[str] = ("row", "path", "label"),
    rows: np.ndarray | None = None,
    out: np.ndarray | None = None,
) -> Split:
    """Read a split's shards, row group by row group, into preallocated arrays.

    Peak memory is the result plus one row group: the feature matrix is never held twice.
    `rows` (sorted positional indices) selects a subset while streaming; `out` lets the
    caller supply the feature buffer (e.g. pinned memory).
    """
    n_total, dim = split_shape(folder)
    want = None if rows is None else np.asarray(rows, dtype=np.int64)
    n = n_total if want is None else len(want)
    matrix = None
    if features:
        matrix = out if out is not None else np.empty((n, dim), dtype=np.float32)
        if matrix.shape != (n, dim):
            raise ValueError(f"out has shape {matrix.shape}, expected {(n, dim)}")
    pieces: dict[str, list[np.ndarray]] = {name: [] for name in columns}
    cols = list(columns) + (["features"] if features else [])
    start, filled = 0, 0
    for shard in list_shards(folder):
        pfile = pq.ParquetFile(shard)
        for group in range(pfile.num_row_groups):
            g_rows = pfile.metadata.row_group(group).num_rows
            if want is None:
                local = None
            else:
                lo, hi = np.searchsorted(want, [start, start + g_rows])
                local = want[lo:hi] - start
                if len(local) == 0:
                    start += g_rows
                    continue
            table = pfile.read_row_group(group, columns=cols)
            if local is not None:
                table = table.take(pa.array(local))
            for name in columns:
                values = table.column(name).to_numpy(zero_copy_only=False)
                pieces[name].append(values)
            if matrix is not None:
                block = features_to_numpy(table.column("features"), dim)
                matrix[filled : filled + len(block)] = block
            filled += table.num_rows
            start += g_rows
    merged = {
        name: (np.concatenate(values) if values else np.empty(0)) for name, values in pieces.items()
    }
    return Split(
        row=merged.get("row"), path=merged.get("path"), label=merged.get("label"), features=matrix
    )


def iter_row_groups(
    folder: str | os.PathLike, columns: Sequence[str] = ("row", "path", "label", "features")
) -> Iterator[pa.Table]:
    """Stream a split one row group at a time (bounded memory for any split size)."""
    for shard in list_shards(folder):
        pfile = pq.ParquetFile(shard)
        for group in range(pfile.num_row_groups):
            yield pfile.read_row_group(group, columns=list(columns))


# ---------------------------------------------------------------- CLI helpers
def run_cli(main_fn, argv: Sequence[str] | None = None) -> None:
    """Run a step's CLI; a FeatgapError becomes one clear line on stderr and exit code 1."""
    try:
        main_fn(argv)
    except FeatgapError as err:
        print(f"featgap error: {err}", file=sys.stderr)
        raise SystemExit(1) from None


def parse_json_arg(text: str, name: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise FeatgapError(f"--{name}: not valid JSON ({err})") from None


def features_to_arrow(matrix: np.ndarray) -> pa.FixedSizeListArray:
    """(n, D) float32 matrix → fixed_size_list<float32>[D] column, one contiguous buffer."""
    matrix = np.ascontiguousarray(matrix, dtype=np.float32)
    return pa.FixedSizeListArray.from_arrays(pa.array(matrix.reshape(-1)), matrix.shape[1])


def write_shard(
    path: str | os.PathLike,
    *,
    row: np.ndarray,
    path_col: Sequence[str] | None,
    label: np.ndarray,
    features: np.ndarray,
    row_group_rows: int = 8192,
    compression: str = "none",
) -> None:
    """Atomically write one shard in the Parquet contract (used by convert and by tests)."""
    n, dim = features.shape
    paths = pa.array(path_col if path_col is not None else [""] * n, type=pa.string())
    table = pa.Table.from_arrays(
        [pa.array(row, type=pa.int64()), paths, pa.array(label, type=pa.int16()), features_to_arrow(features)],
        schema=shard_schema(dim),
    )
    with atomic_path(path) as tmp:
        pq.write_table(
            table,
            tmp,
            row_group_size=row_group_rows,
            compression=compression,
            use_dictionary=["path"],  # float columns are never dictionary-encoded
        )


def shard_folder(manifest_path: str | os.PathLike) -> Path:
    """results/parquet/{split}.manifest.json → results/parquet/{split}/ (rules pass the manifest)."""
    manifest_path = Path(manifest_path)
    return manifest_path.with_name(manifest_path.name.removesuffix(".manifest.json"))
