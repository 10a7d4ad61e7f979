"""A split's Parquet shards and its manifest: the schema, checksums, and the checks every read
makes before data is decoded (docs/data-contract.md).

Readers take a split's shards from its manifest only, and check each against what the manifest
recorded (size, footer checksum, rows; Parquet page checksums while decoding), so a stale,
truncated or corrupted shard stops the step with one line saying what to do instead of being read.
"""
from __future__ import annotations

import json
import os
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from scripts.lib.featio.arrow import features_to_arrow
from scripts.lib.featio.atomic import atomic_path
from scripts.lib.featio.errors import FeatgapError, first_line

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
                           "scripts.data.convert?); delete it and run snakemake again")
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
        raise FeatgapError(f"{path}: not a readable Parquet file ({first_line(err)}); {REBUILD_HINT}") from None


def _read_manifest(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise FeatgapError(f"{path}: unreadable manifest ({first_line(err)}); delete it and run snakemake again") from None
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
        raise FeatgapError(f"{path}: row group {group} is corrupt ({first_line(err)}); {REBUILD_HINT}") from None


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
