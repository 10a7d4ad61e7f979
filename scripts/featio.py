"""Shared I/O for every featgap step: atomic writes, fingerprints, meta blocks, shard reading.

Every step imports from here so that the on-disk contracts of docs/data-contract.md live in one place.
Readers take a split's shards from its manifest only, and check each against what the manifest
recorded (size, footer checksum, rows; Parquet page checksums while decoding), so a stale, truncated
or corrupted shard stops the step with one line saying what to do instead of being read.
"""
from __future__ import annotations

import contextlib
import errno
import glob
import json
import math
import os
import platform
import shutil
import sys
import threading
import time
import zlib
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from scripts import shard_pages
from scripts.fingerprint import fingerprint

FEATGAP_VERSION = "0.1.0"


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
    tmp = final.with_name(f".{final.name}{TMP_INFIX}{os.getpid()}")
    # A job killed with SIGKILL cannot clean up: its temporary (hundreds of MB for a shard) is
    # removed by the next attempt at the same output.
    for stale in final.parent.glob(f".{glob.escape(final.name)}{TMP_INFIX}*"):
        if _is_dead_temporary(stale):
            _remove(stale)
    _remove(tmp)
    try:
        yield tmp
        if final.is_dir() and not final.is_symlink():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        _remove(tmp)
        raise


TMP_INFIX = ".tmp-"


def _is_dead_temporary(path: Path) -> bool:
    """A `.NAME.tmp-PID` whose process no longer runs on this machine (or this process's own)."""
    pid = path.name.rpartition(TMP_INFIX)[2]
    if not pid.isdigit():
        return False
    if int(pid) == os.getpid():
        return True
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False


def remove_dead_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Remove every `.NAME.tmp-PID` in `folder` whose writer is gone (after kill -9); return them."""
    removed = [p for p in Path(folder).glob(f".*{TMP_INFIX}*") if _is_dead_temporary(p)]
    for path in removed:
        _remove(path)
    return removed


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink()


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Atomically write pretty JSON (sorted keys, so equal content gives equal bytes).

    NaN and ±inf become null: bare `NaN` is not JSON, and browsers, jq and strict parsers refuse it.
    """
    text = json.dumps(_finite_or_null(obj), indent=2, sort_keys=True, default=_json_default, allow_nan=False)
    with atomic_path(path) as tmp:
        tmp.write_text(text + "\n")


def read_json(path: str | os.PathLike) -> Any:
    return json.loads(Path(path).read_text())


def _finite_or_null(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _finite_or_null(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_or_null(item) for item in value]
    if isinstance(value, (np.ndarray, np.generic)):
        return _finite_or_null(value.tolist())
    return value


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


# ---------------------------------------------------------------- provenance
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
    """The `meta` block every JSON artifact carries (docs/data-contract.md: JSON)."""
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


REBUILD_HINT = "delete it and run snakemake again to rebuild it"
CHECKSUM_BLOCK = 16 << 20


def split_folder(manifest_path: str | os.PathLike, manifest: dict | None) -> Path:
    """Where a split's shards are: the manifest's `folder`, relative to the manifest's own folder
    (docs/data-contract.md). The manifest is a split's only handle: no reader derives one path
    from the other's name."""
    recorded = (manifest or {}).get("folder")
    if not isinstance(recorded, str) or not recorded:
        raise FeatgapError(f"{manifest_path}: no 'folder' naming where its shards are (not a manifest written by "
                           "scripts.convert?); delete it and run snakemake again")
    return Path(manifest_path).parent / recorded


def file_crc32(path: str | os.PathLike) -> int:
    """CRC-32 of a whole file, streamed (zlib: ~3 GB/s here, far above the disk)."""
    crc, buffer = 0, bytearray(CHECKSUM_BLOCK)
    with open(path, "rb", buffering=0) as handle, memoryview(buffer) as view:
        while got := handle.readinto(view):
            crc = zlib.crc32(view[:got], crc)
    return crc


def footer_crc32(path: str | os.PathLike) -> int:
    """CRC-32 of a Parquet file's footer (schema, row counts, page offsets): a few KB to read.

    The data pages carry their own CRC (written with write_page_checksum, checked while
    decoding), so footer + pages cover what a reader relies on without a second pass over the file.
    """
    path = Path(path)
    with path.open("rb") as handle:
        handle.seek(0, os.SEEK_END)
        size = handle.tell()
        if size < 12:
            raise FeatgapError(f"{path}: {size} bytes, not a Parquet file; {REBUILD_HINT}")
        handle.seek(size - 8)
        tail = handle.read(8)
        length = int.from_bytes(tail[:4], "little")
        if tail[4:] != b"PAR1" or length + 12 > size:
            raise FeatgapError(f"{path}: no Parquet footer (truncated or overwritten); {REBUILD_HINT}")
        handle.seek(size - 8 - length)
        return zlib.crc32(handle.read(length + 8))


def shard_record(path: str | os.PathLike) -> dict[str, Any]:
    """What a manifest stores about one shard, and what every read checks it against."""
    path = Path(path)
    pfile = open_shard(path)
    return {
        "file": path.name,
        "rows": pfile.metadata.num_rows,
        "row_groups": pfile.num_row_groups,
        "bytes": path.stat().st_size,
        "crc32": file_crc32(path),
        "footer_crc32": footer_crc32(path),
    }


def open_shard(path: str | os.PathLike) -> pq.ParquetFile:
    """Open a shard with page-checksum verification; an unreadable file is one line, not a traceback."""
    try:
        return pq.ParquetFile(path, page_checksum_verification=True)
    except (OSError, pa.ArrowException) as err:
        raise FeatgapError(f"{path}: not a readable Parquet file ({_first_line(err)}); {REBUILD_HINT}") from None


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0]


def _read_manifest(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise FeatgapError(f"{path}: unreadable manifest ({_first_line(err)}); delete it and run snakemake again") from None
    return manifest if isinstance(manifest, dict) else None


def _listed(manifest: dict | None) -> list[dict] | None:
    entries = (manifest or {}).get("shards")
    if isinstance(entries, list) and entries and all(isinstance(e, dict) and "file" in e for e in entries):
        return entries
    return None


def open_split(manifest_path: str | os.PathLike) -> list[tuple[Path, pq.ParquetFile]]:
    """The shards of a split (given by its manifest), opened and checked before any data is read.

    Only the files the manifest lists are read (part files left over from an earlier, larger
    `convert.parts` are ignored). Each listed shard must exist and have the recorded size, footer
    checksum and rows; the split must have the recorded total rows and dim. A manifest that lists
    no shards (hand-made fixtures) has its folder read by name, still checked against `rows` if recorded.
    """
    mpath = Path(manifest_path)
    manifest = _read_manifest(mpath)
    if manifest is None:
        raise FeatgapError(f"{mpath}: no manifest (did convert run?); run snakemake again to rebuild the split")
    folder = split_folder(mpath, manifest)
    entries = _listed(manifest)
    if entries is None:
        paths = sorted(folder.glob(SHARD_GLOB))
        if not paths:
            raise FeatgapError(f"{folder}: no {SHARD_GLOB} files (did convert run?)")
        entries = [{"file": p.name} for p in paths]
    opened = []
    for entry in entries:
        path = folder / entry["file"]
        if not path.is_file():
            raise FeatgapError(f"{path}: listed in {mpath} but missing; run snakemake again to rebuild it")
        size = path.stat().st_size
        if entry.get("bytes") is not None and size != entry["bytes"]:
            raise FeatgapError(f"{path}: {size} bytes, but {mpath.name} records {entry['bytes']} "
                               f"(truncated or overwritten after conversion); {REBUILD_HINT}")
        if entry.get("footer_crc32") is not None and footer_crc32(path) != entry["footer_crc32"]:
            raise FeatgapError(f"{path}: footer checksum differs from {mpath.name} (corrupt); {REBUILD_HINT}")
        pfile = open_shard(path)
        if entry.get("rows") is not None and pfile.metadata.num_rows != entry["rows"]:
            raise FeatgapError(f"{path}: {pfile.metadata.num_rows} rows, but {mpath.name} records {entry['rows']}; "
                               f"{REBUILD_HINT}")
        opened.append((path, pfile))
    total = sum(pfile.metadata.num_rows for _, pfile in opened)
    if manifest and isinstance(manifest.get("rows"), int) and total != manifest["rows"]:
        raise FeatgapError(f"{folder}: {total} rows in {len(opened)} shards, but {mpath.name} records "
                           f"{manifest['rows']}; delete {folder} and {mpath.name} and run snakemake again")
    dims = {pfile.schema_arrow.field("features").type.list_size for _, pfile in opened}
    if len(dims) > 1 or (manifest and isinstance(manifest.get("dim"), int) and dims != {manifest["dim"]}):
        raise FeatgapError(f"{folder}: shards have {sorted(dims)} features, {mpath.name} records "
                           f"{(manifest or {}).get('dim')}; delete {folder} and run snakemake again")
    return opened


def verify_split(manifest_path: str | os.PathLike) -> int:
    """Every listed shard's whole-file CRC-32 against the manifest (QC runs it once per conversion,
    and training and evaluation depend on QC); returns the bytes checked."""
    mpath = Path(manifest_path)
    shards = open_split(mpath)  # the cheap checks first
    entries = {entry["file"]: entry for entry in _listed(_read_manifest(mpath)) or []}
    checked = 0
    for path, _ in shards:
        recorded = entries.get(path.name, {}).get("crc32")
        if recorded is not None and file_crc32(path) != recorded:
            raise FeatgapError(f"{path}: CRC-32 differs from {mpath.name} (corrupt); {REBUILD_HINT}")
        checked += path.stat().st_size if recorded is not None else 0
    return checked


def list_shards(manifest_path: str | os.PathLike) -> list[Path]:
    """The manifest's shards of a split, checked (see open_split)."""
    return [path for path, _ in open_split(manifest_path)]


def read_row_group(path: Path, pfile: pq.ParquetFile, group: int, columns: Sequence[str]) -> pa.Table:
    """One row group; a page whose checksum fails (flipped bytes) stops with one line."""
    try:
        return pfile.read_row_group(group, columns=list(columns))
    except (OSError, pa.ArrowException) as err:
        raise FeatgapError(f"{path}: row group {group} is corrupt ({_first_line(err)}); {REBUILD_HINT}") from None


def arrow_to_numpy(values: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """A numeric Arrow array without nulls as numpy (a view when it is one chunk).

    By its buffer, not Array.to_numpy: that imports pandas (~0.5 s per job, more when busy).
    """
    chunks = values.chunks if isinstance(values, pa.ChunkedArray) else [values]
    parts = []
    for chunk in chunks:
        if chunk.null_count or not pa.types.is_integer(chunk.type) and not pa.types.is_floating(chunk.type):
            parts.append(chunk.to_numpy(zero_copy_only=False))
            continue
        dtype = np.dtype(chunk.type.to_pandas_dtype())
        parts.append(np.frombuffer(chunk.buffers()[1], dtype=dtype, count=len(chunk), offset=chunk.offset * dtype.itemsize))
    if not parts:
        return np.empty(0, dtype=np.dtype(values.type.to_pandas_dtype()))
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


def features_to_numpy(column: pa.ChunkedArray | pa.Array, dim: int) -> np.ndarray:
    """A fixed_size_list<float32>[dim] column as an (n, dim) float32 view/array (no per-row work)."""
    chunks = column.chunks if isinstance(column, pa.ChunkedArray) else [column]
    parts = []
    for chunk in chunks:
        flat = chunk.flatten() if chunk.offset == 0 else chunk.values.slice(chunk.offset * dim, len(chunk) * dim)
        parts.append(arrow_to_numpy(flat).reshape(-1, dim))
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
    READ_THREADS), each straight into its rows of the matrix (scripts/shard_pages.py; pyarrow
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
            done = shard_pages.features_into(task.shard, task.pfile, task.group, column, target, scratch)
        else:  # a subset: rows picked from the group, in place in the read buffer
            view = shard_pages.features_view(task.shard, task.pfile, task.group, column, (g_rows, dim), scratch)
            if done := view is not None:
                target[:] = view if task.local is None else view[task.local]
    except shard_pages.PageChecksumError as err:
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


# ---------------------------------------------------------------- CLI helpers
def run_cli(main_fn, argv: Sequence[str] | None = None) -> None:
    """Run a step's CLI; a FeatgapError becomes one clear line on stderr and exit code 1.

    So does an operating-system error (disk full, permission denied, a file gone): it names the
    file and what happened, which is all a user can act on.
    """
    try:
        main_fn(argv)
    except FeatgapError as err:
        print(f"featgap error: {err}", file=sys.stderr)
        raise SystemExit(1) from None
    except OSError as err:
        print(f"featgap error: {describe_os_error(err)}", file=sys.stderr)
        raise SystemExit(1) from None


def describe_os_error(err: OSError) -> str:
    where = f"{err.filename}: " if err.filename else ""
    what = err.strerror or _first_line(err)
    full = err.errno in (errno.ENOSPC, errno.EDQUOT) or "No space left on device" in str(err)
    hint = " (the disk is full: free space and run again; finished outputs are kept)" if full else ""
    return f"{where}{what}{hint}"


def parse_json_arg(text: str, name: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise FeatgapError(f"--{name}: not valid JSON ({err})") from None


def numpy_to_arrow(values: np.ndarray, dtype: type[np.generic]) -> pa.Array:
    """A 1-D numeric array as an Arrow array over the same memory (after a cast if needed).

    Not pa.array: for a numpy input it first asks whether it is a pandas object, which imports
    pandas (~0.5 s, and more on a busy machine) in every conversion job.
    """
    values = np.ascontiguousarray(values, dtype=dtype)
    return pa.Array.from_buffers(pa.from_numpy_dtype(values.dtype), len(values), [None, pa.py_buffer(values)])


def features_to_arrow(matrix: np.ndarray) -> pa.FixedSizeListArray:
    """(n, D) float32 matrix → fixed_size_list<float32>[D] column, one contiguous buffer."""
    matrix = np.ascontiguousarray(matrix, dtype=np.float32)
    return pa.FixedSizeListArray.from_arrays(numpy_to_arrow(matrix.reshape(-1), np.float32), matrix.shape[1])


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
            write_page_checksum=True,  # readers verify every page: flipped bytes cannot pass as data
        )

