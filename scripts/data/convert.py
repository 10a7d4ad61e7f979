"""CSV → Parquet shards, streamed, in byte-range parts that run as independent jobs.

Three sub-steps (one rule each, so a 13 GB file converts in parallel jobs):
  plan      check the file format, read the header, find the columns by name, cut the file into
            `parts` line-aligned byte ranges (scripts/lib/csvread/source.py);
  part      parse one byte range chunk by chunk into one shard: a strict numba parser for the
            common case (scripts/lib/csvread/fastparse.py), polars for any chunk it does not handle;
  manifest  check the parts, record each shard's rows, size and checksums in {split}.manifest.json,
            and remove part files of an earlier conversion that the manifest no longer lists.

Threads: polars reads POLARS_MAX_THREADS at import, so the rule sets it to the job's threads.
Why polars for the rest: its CSV reader is the fastest library here (docs/benchmarks.md). Both
parsers get line-aligned byte chunks, so memory is bounded by `chunk_mb` whatever the file size,
and give bit-identical values, so a shard does not depend on which one read a chunk. The features
become one fixed_size_list<float32>[D] column, so a row group is one contiguous float32 matrix.
Bad input stops with one message naming the file, the line, the column and what was expected
(scripts/lib/csvread/diagnose.py finds them once polars has refused a chunk).
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import os
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from scripts.lib.csvread.chunks import chunks, line_aligned_cuts
from scripts.lib.csvread.columns import ChunkColumns, chunk_table
from scripts.lib.csvread.diagnose import (
    Layout,
    stray_carriage_return,
    unbalanced_quote,
)
from scripts.lib.csvread.located import ChunkErrors
from scripts.lib.csvread.source import plan
from scripts.lib.featio.arrow import arrow_to_numpy
from scripts.lib.featio.atomic import atomic_path
from scripts.lib.featio.cli import run_cli
from scripts.lib.featio.errors import FeatgapError
from scripts.lib.featio.jsonio import parse_json_arg, read_json, write_json
from scripts.lib.featio.manifest import write_split_manifest
from scripts.lib.featio.shards import open_shard, shard_record, shard_schema
from scripts.lib.fingerprint import fingerprint

if TYPE_CHECKING:
    from scripts.lib.csvread.fastparse import FastChunk, FastLayout

__all__ = ["convert_file", "convert_part", "plan", "write_manifest"]
# Private switch (tests and benchmarks, not a config key): True / False = the fast parser for every
# part / for none; None = for parts of at least FAST_PARSE_MIN_BYTES. Below that, numba's start-up
# (~0.6 s per job with its on-disk cache, ~5 s for the first compile on a machine) costs about as
# much as the faster parsing saves (measured, whole job on 2 cores: 1.6 against 1.7 s for 200 MB,
# 1.1 against 0.75 s for 50 MB).
FAST_PARSE: bool | None = None
FAST_PARSE_MIN_BYTES = 256 << 20


def fast_layout(plan_: dict, part_bytes: int) -> FastLayout | None:
    """The fast parser's layout, or None where it is switched off, not worth its start-up for a
    part this small, unavailable, or the layout is unusual. Imported here, not at the top: numba
    costs ~0.3 s to import, which only part jobs that use it pay."""
    wanted = FAST_PARSE if FAST_PARSE is not None else part_bytes >= FAST_PARSE_MIN_BYTES
    if not wanted:
        return None
    from scripts.lib.csvread import fastparse

    return fastparse.FastLayout.of(plan_) if fastparse.available() else None


# ---------------------------------------------------------------- one part
class PartConverter:
    """Parse one byte range of the CSV into one shard, chunk by chunk."""

    def __init__(self, plan_: dict, num_classes: int):
        self.plan = plan_
        self.csv = Path(plan_["csv"])
        self.compression = plan_.get("compression", "none")
        self.num_classes = num_classes
        self.layout = Layout.of(plan_)
        names = plan_["names"]
        self.dim = plan_["dim"]
        # Parse only the columns we need; every feature straight to float32.
        dtypes = {plan_["label"]: pl.Int64}
        if plan_["index"] is not None:
            dtypes[plan_["index"]] = pl.Int64
        if plan_["path"] is not None:
            dtypes[plan_["path"]] = pl.String
        self.wanted = list(self.layout.wanted)
        self.col_names = [f"c{i}" for i in range(len(names))]
        self.schema = {self.col_names[i]: dtypes.get(i, pl.Float32 if i in self.layout.features else pl.String)
                       for i in range(len(names))}
        self.feature_cols = [self.col_names[i] for i in plan_["features"]]
        # The frame's columns are `wanted` in file order; features usually sit there as one run
        # 0..D-1, which is sliced by position (selecting 1024 names builds 1024 expressions).
        first = self.wanted.index(plan_["features"][0])
        in_order = self.wanted[first : first + self.dim] == list(plan_["features"])
        self.feature_slice = slice(first, first + self.dim) if in_order else None
        self.workers = max(1, pl.thread_pool_size())  # POLARS_MAX_THREADS: the job's threads
        self.matrix_buffer: np.ndarray | None = None
        self.fast_layout: FastLayout | None = None  # chosen per part, in _run
        self.errors = ChunkErrors(plan_, num_classes, self.read)

    def use_fast_parser(self, part_bytes: int) -> None:
        self.fast_layout = fast_layout(self.plan, part_bytes)
        if self.fast_layout is not None:
            from scripts.lib.csvread.fastparse import BufferPool, MatrixPool

            self.matrix_pool = MatrixPool()
            self.read_pool = BufferPool(np.uint8)

    def check_source_unchanged(self) -> None:
        """Byte ranges are only valid for the file they were planned on."""
        planned, now = self.plan["fingerprint"], fingerprint(self.csv)
        if (planned["size"], planned["sha256_sampled"]) != (now["size"], now["sha256_sampled"]):
            raise FeatgapError(f"{self.csv}: changed since its conversion was planned; run snakemake again "
                               "(it plans the new file)")

    def read(self, data: bytes) -> pl.DataFrame:
        return pl.read_csv(data, has_header=False, schema=self.schema, columns=self.wanted,
                           raise_if_empty=False, truncate_ragged_lines=False)

    def parse_chunk(self, data: bytes, offset: int) -> pl.DataFrame:
        if b'"' in data and (problem := unbalanced_quote(data, self.layout)) is not None:
            raise self.errors.error_at(offset, problem)
        # Two memchr-speed counts, only for files that contain a CR at all (CRLF files).
        if b"\r" in data and data.count(b"\r") != data.count(b"\r\n"):
            raise self.errors.error_at(offset, stray_carriage_return(data, self.layout))
        try:
            frame = self.read(data)
        except (pl.exceptions.PolarsError, ValueError, OSError) as err:  # diagnose precisely
            raise self.errors.diagnose(data, offset, str(err).splitlines()[0]) from None
        # Fewer fields than the header, or empty values, come back as nulls.
        if frame.null_count().sum_horizontal().item() > 0:
            raise self.errors.diagnose(data, offset, "empty value")
        return frame

    def parse_any(self, data: bytes | np.ndarray, offset: int) -> FastChunk | pl.DataFrame:
        """The fast parser's result, or polars' frame for a chunk outside its grammar (which
        polars either reads or reports with today's one-line error)."""
        if self.fast_layout is not None:
            from scripts.lib.csvread.fastparse import parse

            chunk = parse(data, self.fast_layout, self.matrix_pool)
            if chunk is not None:
                return chunk
        return self.parse_chunk(data if isinstance(data, bytes) else data.tobytes(), offset)

    def read_and_parse(self, fd: int, offset: int, size: int) -> FastChunk | pl.DataFrame:
        """Read [offset, offset + size) into a pooled buffer and parse it (in a worker thread, so
        that the main thread only writes). The buffer is free again once parsed: neither parser's
        result points into it."""
        buffer = self.read_pool.take(size)
        try:
            got = os.preadv(fd, [memoryview(buffer)[:size]], offset)
            return self.parse_any(buffer[:got], offset)
        finally:
            self.read_pool.give(buffer)

    def chunk_jobs(self, start: int, end: int | None, chunk_bytes: int,
                   fd: int | None) -> Iterator[tuple[int, int, Callable[[], FastChunk | pl.DataFrame]]]:
        """(offset, bytes, parse it) per chunk: with the fast parser, a plain file's chunks are
        read by the worker that parses them, into reused buffers; otherwise read here."""
        if fd is not None:
            for offset, cut in line_aligned_cuts(fd, start, end, chunk_bytes):
                yield offset, cut - offset, partial(self.read_and_parse, fd, offset, cut - offset)
        else:
            for offset, data in chunks(self.csv, self.compression, start, end, chunk_bytes):
                yield offset, len(data), partial(self.parse_any, data, offset)

    def parsed_chunks(self, start: int, end: int, chunk_bytes: int) -> Iterator[tuple[int, int, FastChunk | pl.DataFrame]]:
        """Yield (offset, bytes, parsed chunk) in file order while up to `workers` later chunks parse
        in worker threads. Either parser reads one in-memory chunk on one core, so one parser per
        core; numba (nogil), polars, numpy and pyarrow release the GIL, so the caller's writing
        overlaps with the parsing. The first bad chunk in file order is the one reported."""
        worker_reads = self.fast_layout is not None and self.compression == "none" and end is not None
        fd = os.open(self.csv, os.O_RDONLY) if worker_reads else None
        pending: deque[tuple[int, int, Future]] = deque()
        with contextlib.ExitStack() as cleanup:
            if fd is not None:
                cleanup.callback(os.close, fd)
            pool = cleanup.enter_context(ThreadPoolExecutor(max_workers=self.workers))  # shut down before the close
            source = self.chunk_jobs(start, end, chunk_bytes, fd)

            def submit_next() -> None:
                item = next(source, None)
                if item is not None:
                    pending.append((item[0], item[1], pool.submit(item[2])))

            for _ in range(self.workers):
                submit_next()
            while pending:
                offset, nbytes, future = pending.popleft()
                parsed = future.result()
                submit_next()
                yield offset, nbytes, parsed

    def columns_of(self, parsed: FastChunk | pl.DataFrame) -> ChunkColumns:
        if isinstance(parsed, pl.DataFrame):
            return self.frame_columns(parsed)
        return ChunkColumns(parsed.matrix, parsed.labels, parsed.row_ids, parsed.paths, None, known_finite=True,
                            pooled=parsed.buffer)

    def frame_columns(self, frame: pl.DataFrame) -> ChunkColumns:
        """A polars frame's columns; the matrix is transposed into the shared matrix_buffer."""
        labels = frame.get_column(self.col_names[self.plan["label"]]).to_numpy()
        row_ids = (frame.get_column(self.col_names[self.plan["index"]]).to_numpy()
                   if self.plan["index"] is not None else None)
        paths, empty_path_row = None, None
        if self.plan["path"] is not None:
            path_column = frame.get_column(self.col_names[self.plan["path"]])
            empty = path_column.eq("").arg_true()
            empty_path_row = int(empty[0]) if len(empty) else None
            paths = path_column.to_arrow().cast(pa.string())
        return ChunkColumns(self.feature_matrix(frame), labels, row_ids, paths, empty_path_row, known_finite=False)

    def feature_matrix(self, frame: pl.DataFrame) -> np.ndarray:
        """The (n, D) float32 row-major matrix of a parsed chunk. Polars copies its columns into a
        column-major matrix (one memcpy each) and numpy transposes that: together ~1.8× faster
        than polars' own row-major export (measured; the transpose is the costly part)."""
        block = frame[:, self.feature_slice] if self.feature_slice is not None else frame.select(self.feature_cols)
        columns = block.to_numpy(order="fortran")
        if self.matrix_buffer is None or len(self.matrix_buffer) < len(columns):
            self.matrix_buffer = np.empty((len(columns), self.dim), dtype=np.float32)
        # One buffer for every chunk (written before the next one is made): a fresh 20+ MB
        # array per chunk costs a page fault per 4 KB.
        matrix = self.matrix_buffer[: len(columns)]
        np.copyto(matrix, columns)
        return matrix

    def run(self, part: int, out: Path, row_group_rows: int, compression: str, chunk_mb: int) -> int:
        # Each chunk makes thousands of short-lived Python objects (a 1027-column frame); they
        # set off full garbage collections that walk every loaded module (~10 % of the job in a
        # profile). Nothing here builds reference cycles, so collection waits until the end.
        collecting = gc.isenabled()
        gc.disable()
        try:
            return self._run(part, out, row_group_rows, compression, chunk_mb)
        finally:
            if collecting:
                gc.enable()

    def _run(self, part: int, out: Path, row_group_rows: int, compression: str, chunk_mb: int) -> int:
        self.check_source_unchanged()
        rng = self.plan["ranges"][part]
        next_row = rng.get("first_row", 0)
        # a gzip part's size is unknown until read: its compressed size is a lower bound
        self.use_fast_parser(rng["end"] - rng["start"] if rng["end"] is not None else self.csv.stat().st_size)
        schema = shard_schema(self.dim)
        rows = 0
        with atomic_path(out) as tmp:
            writer = pq.ParquetWriter(tmp, schema, compression=compression, use_dictionary=["path"],
                                      write_statistics=["row", "label"], write_page_checksum=True)
            try:
                total = None if rng["end"] is None else rng["end"] - rng["start"]
                with tqdm(total=total, unit="B", unit_scale=True, desc=f"convert part {part}", mininterval=2) as bar:
                    for offset, nbytes, parsed in self.parsed_chunks(rng["start"], rng["end"], chunk_mb << 20):
                        chunk = self.columns_of(parsed)
                        n = len(chunk.labels)
                        self.errors.check_values(chunk, offset)
                        writer.write_table(chunk_table(chunk, next_row, schema), row_group_size=row_group_rows)
                        if chunk.pooled is not None:  # written: write_table keeps no reference to it
                            self.matrix_pool.give(chunk.pooled)
                        rows += n
                        next_row += n
                        bar.update(nbytes)
            finally:
                writer.close()
        return rows


def convert_part(plan_path: str | Path, part: int, out: str | Path, *, num_classes: int,
                 row_group_rows: int = 8192, compression: str = "none", chunk_mb: int = 64) -> int:
    plan_ = read_json(plan_path)
    if not 0 <= part < len(plan_["ranges"]):
        raise FeatgapError(f"{plan_path}: part {part} does not exist (plan has {len(plan_['ranges'])} parts)")
    return PartConverter(plan_, num_classes).run(part, Path(out), row_group_rows, compression, chunk_mb)


# ---------------------------------------------------------------- manifest
def write_manifest(plan_path: str | Path, shards: Sequence[str | Path], out: str | Path) -> dict:
    """Record every shard (rows, size, CRC-32 of the file and of its footer) and remove part
    files of the same folder that are not listed (left by a conversion with more parts: Snakemake
    never deletes files that stopped being outputs)."""
    started = time.perf_counter()
    plan_ = read_json(plan_path)
    shards = sorted(map(Path, shards))
    if len(shards) != len(plan_["ranges"]):
        raise FeatgapError(f"{plan_path}: {len(plan_['ranges'])} parts planned, {len(shards)} shards given")
    entries, rows, labels_seen = [], 0, set()
    for shard in shards:
        entry, labels = checked_shard(shard, plan_)
        labels_seen.update(labels)
        entries.append(entry)
        rows += entry["rows"]
    if rows == 0:
        raise FeatgapError(f"{plan_['csv']}: no data rows were converted")
    return write_split_manifest(out, shards=shards, entries=entries, labels_seen=labels_seen, dim=plan_["dim"],
                                source=plan_["csv"], source_fingerprint=plan_["fingerprint"], started=started,
                                made_by="conversion")


def checked_shard(shard: Path, plan_: dict) -> tuple[dict, set[int]]:
    """A shard's manifest entry and its labels. An unreadable shard (truncated, overwritten) is
    removed, so that the next `snakemake` run sees it missing and rebuilds it."""
    try:
        entry = shard_record(shard)
        pfile = open_shard(shard)
        labels = arrow_to_numpy(pfile.read(columns=["label"]).column("label"))
        dim = pfile.schema_arrow.field("features").type.list_size
    except (FeatgapError, OSError, pa.ArrowException) as err:
        shard.unlink(missing_ok=True)
        raise FeatgapError(f"{shard}: not a complete Parquet shard ({str(err).splitlines()[0]}); removed it: run "
                           "snakemake again to rebuild it") from None
    if dim != plan_["dim"]:
        raise FeatgapError(f"{shard}: {dim} features, expected {plan_['dim']} as in {plan_['csv']}")
    return entry, set(np.unique(labels).tolist())


def convert_file(csv_path: str | Path, folder: str | Path, manifest: str | Path, *, num_classes: int,
                 dim: int | None = None, parts: int = 1, columns: dict | None = None, **options) -> dict:
    """Plan, convert every part and write the manifest in one call (tests, benchmarks, notebooks)."""
    folder = Path(folder)
    plan_path = Path(manifest).with_name(Path(manifest).name.replace(".manifest.json", ".plan.json"))
    write_json(plan_path, plan(csv_path, parts, columns, dim))
    with atomic_path(folder) as tmp_folder:  # all shards appear together, or none
        tmp_folder.mkdir()
        for part in range(parts):
            convert_part(plan_path, part, tmp_folder / f"part-{part:05d}.parquet", num_classes=num_classes,
                         **options)
    return write_manifest(plan_path, [folder / f"part-{part:05d}.parquet" for part in range(parts)], manifest)


# ---------------------------------------------------------------- CLI
def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p_plan = sub.add_parser("plan")
    p_plan.add_argument("--csv", required=True)
    p_plan.add_argument("--out", required=True)
    p_plan.add_argument("--parts", type=int, default=1)
    p_plan.add_argument("--columns", default="{}")
    p_plan.add_argument("--dim", type=int)
    p_part = sub.add_parser("part")
    p_part.add_argument("--plan", required=True)
    p_part.add_argument("--part", type=int, required=True)
    p_part.add_argument("--out", required=True)
    p_part.add_argument("--num-classes", type=int, required=True)
    p_part.add_argument("--row-group-rows", type=int, default=8192)
    p_part.add_argument("--compression", default="none")
    p_part.add_argument("--chunk-mb", type=int, default=64)
    p_man = sub.add_parser("manifest")
    p_man.add_argument("--plan", required=True)
    p_man.add_argument("--out", required=True)
    p_man.add_argument("shards", nargs="+")
    args = parser.parse_args(argv)
    if args.command == "plan":
        result = plan(args.csv, args.parts, parse_json_arg(args.columns, "columns"), args.dim)
        write_json(args.out, result)
        print(f"{args.csv}: {result['dim']} features, {len(result['ranges'])} parts")
    elif args.command == "part":
        rows = convert_part(args.plan, args.part, args.out, num_classes=args.num_classes,
                            row_group_rows=args.row_group_rows, compression=args.compression,
                            chunk_mb=args.chunk_mb)
        print(f"{args.out}: {rows} rows")
    else:
        manifest = write_manifest(args.plan, args.shards, args.out)
        print(f"{args.out}: {manifest['rows']} rows in {len(manifest['shards'])} shards")


if __name__ == "__main__":
    run_cli(main)
