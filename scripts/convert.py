"""CSV → Parquet shards, streamed, in byte-range parts that run as independent jobs.

Three sub-steps (one rule each, so a 13 GB file converts in parallel jobs):
  plan      check the file format, read the header, find the columns by name, cut the file into
            `parts` line-aligned byte ranges (scripts/csv_source.py);
  part      parse one byte range chunk by chunk with polars (multi-threaded) into one shard;
  manifest  check the parts, record each shard's rows, size and checksums in {split}.manifest.json,
            and remove part files of an earlier conversion that the manifest no longer lists.

Threads: polars reads POLARS_MAX_THREADS at import, so the rule sets it to the job's threads.
Why polars: its CSV reader is the fastest here (see README benchmarks); we hand it line-aligned
byte chunks so memory is bounded by `chunk_mb`, whatever the file size. The features become one
fixed_size_list<float32>[D] column, so a row group is one contiguous float32 matrix.
Bad input stops with one message naming the file, the line, the column and what was expected
(scripts/csv_diagnose.py finds them once polars has refused a chunk).
"""
from __future__ import annotations

import argparse
import csv
import gc
import math
import os
import time
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from scripts.csv_diagnose import (
    NUMBER_TEXT,
    Layout,
    Problem,
    find_problem,
    stray_carriage_return,
    unbalanced_quote,
)
from scripts.csv_source import count_lines, open_source, plan
from scripts.featio import (
    SHARD_GLOB,
    FeatgapError,
    arrow_to_numpy,
    atomic_path,
    features_to_arrow,
    meta_block,
    numpy_to_arrow,
    open_shard,
    parse_json_arg,
    read_json,
    remove_dead_temporaries,
    run_cli,
    shard_record,
    shard_schema,
    write_json,
)
from scripts.fingerprint import fingerprint

__all__ = ["convert_file", "convert_part", "plan", "write_manifest"]
FLOAT32_MAX = float(np.finfo(np.float32).max)
PROBE_BYTES = 1 << 16  # read back from a chunk's planned end to find its last line end


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
            raise self.error_at(offset, problem)
        # Two memchr-speed counts, only for files that contain a CR at all (CRLF files).
        if b"\r" in data and data.count(b"\r") != data.count(b"\r\n"):
            raise self.error_at(offset, stray_carriage_return(data, self.layout))
        try:
            frame = self.read(data)
        except (pl.exceptions.PolarsError, ValueError, OSError) as err:  # diagnose precisely
            raise self.diagnose(data, offset, str(err).splitlines()[0]) from None
        # Fewer fields than the header, or empty values, come back as nulls.
        if frame.null_count().sum_horizontal().item() > 0:
            raise self.diagnose(data, offset, "empty value")
        return frame

    def diagnose(self, data: bytes, offset: int, fallback: str) -> FeatgapError:
        """The first bad line of a chunk, found with the slow, exact rules of csv_diagnose."""
        problem = find_problem(data, self.layout, self.read)
        if problem is not None:
            return self.error_at(offset, problem)
        first = self.line_number(offset, 0)
        last = first + data.count(b"\n")
        return FeatgapError(f"{self.csv}: lines {first}..{last}: could not parse ({fallback})")

    def line_number(self, offset: int, local_line: int) -> int:
        """1-based line number in the file (header = line 1); counted only when reporting an error."""
        with open_source(self.csv, self.compression) as handle:
            return count_lines(handle, 0, offset) + local_line + 1

    def raw_field(self, offset: int, local_line: int, position: int) -> str:
        """A field's text as written in the file (error messages only)."""
        with open_source(self.csv, self.compression) as handle:
            handle.seek(offset)
            for _ in range(local_line):
                handle.readline()
            line = handle.readline().decode("utf-8", errors="replace").rstrip("\r\n")
        fields = next(csv.reader([line]), [])
        return fields[position] if position < len(fields) else ""

    def error(self, offset: int, local_line: int, column: str | None, what: str) -> FeatgapError:
        where = f"line {self.line_number(offset, local_line)}"
        col = f", column '{column}'" if column is not None else ""
        return FeatgapError(f"{self.csv}: {where}{col}: {what}")

    def error_at(self, offset: int, problem: Problem) -> FeatgapError:
        return self.error(offset, problem.line, problem.column, problem.what)

    def check_values(self, frame: pl.DataFrame, matrix: np.ndarray, labels: np.ndarray, offset: int) -> None:
        names = self.plan["names"]
        finite = np.isfinite(matrix)
        if not finite.all():
            row, col = (int(i) for i in np.argwhere(~finite)[0])
            position = self.plan["features"][col]
            text = self.raw_field(offset, row, position)
            overflow = bool(NUMBER_TEXT.fullmatch(text)) and math.isfinite(float(text))
            what = (f"value {text!r} is outside the float32 range (±{FLOAT32_MAX:.4g})" if overflow
                    else f"value {text!r}, expected a finite number (no NaN or inf)")
            raise self.error(offset, row, names[position], what)
        bad = (labels < 0) | (labels >= self.num_classes)
        if bad.any():
            row = int(np.argmax(bad))
            raise self.error(offset, row, names[self.plan["label"]],
                             f"label {labels[row]}, expected an integer in 0..{self.num_classes - 1}")
        if self.plan["path"] is not None:
            empty = frame.get_column(self.col_names[self.plan["path"]]).eq("").arg_true()
            if len(empty):
                raise self.error(offset, int(empty[0]), names[self.plan["path"]], "empty value, expected an image path")

    def chunks(self, start: int, end: int | None, chunk_bytes: int) -> Iterator[tuple[int, bytes]]:
        """Yield (offset, bytes) of line-aligned chunks of [start, end) (end None: to the end of
        a gzip stream)."""
        if self.compression == "none" and end is not None:
            yield from self.plain_chunks(start, end, chunk_bytes)
        else:
            yield from self.stream_chunks(start, end, chunk_bytes)

    def plain_chunks(self, start: int, end: int, chunk_bytes: int) -> Iterator[tuple[int, bytes]]:
        """An uncompressed file: find each chunk's last line end first (a small read near its
        planned end), then read exactly [offset, cut) into a new bytes object, so that the
        kernel's copy is the only one (a buffer + carry costs a second copy of every byte)."""
        fd = os.open(self.csv, os.O_RDONLY)
        try:
            offset = start
            while offset < end:
                cut = end if offset + chunk_bytes >= end else _line_end_before(fd, offset, offset + chunk_bytes, end)
                data = os.pread(fd, cut - offset, offset)
                if not data:  # the file shrank after planning: check_source_unchanged ran first
                    break
                yield offset, data
                offset += len(data)
        finally:
            os.close(fd)

    def stream_chunks(self, start: int, end: int | None, chunk_bytes: int) -> Iterator[tuple[int, bytes]]:
        """Line-aligned chunks of a stream that cannot seek (gzip), read into one buffer."""
        buf = bytearray(chunk_bytes)
        offset, carry = start, 0
        with open_source(self.csv, self.compression) as handle:
            handle.seek(start)
            while True:
                room = len(buf) - carry if end is None else min(len(buf) - carry, end - offset - carry)
                with memoryview(buf) as view:
                    got = handle.readinto(view[carry : carry + room]) if room > 0 else 0
                filled = carry + got
                at_end = got == 0 or (end is not None and offset + filled >= end)
                if not at_end and filled < len(buf):  # a short read (a gzip stream): fill the buffer first
                    carry = filled
                    continue
                cut = filled if at_end else buf.rfind(b"\n", 0, filled) + 1
                if end is None and not at_end:
                    cut = _after_last_content_line(buf, cut)  # blank lines may be the stream's end
                if cut == 0:  # a line longer than the buffer: grow it and read on
                    buf.extend(bytes(len(buf)))
                    carry = filled
                    continue
                with memoryview(buf) as view:
                    chunk = bytes(view[:cut])  # the one copy polars needs
                if at_end and end is None:
                    chunk = chunk.rstrip(b"\r\n")  # trailing blank lines of a stream are not rows
                if chunk:
                    yield offset, chunk
                buf[: filled - cut] = buf[cut:filled]
                offset, carry = offset + cut, filled - cut
                if at_end:
                    break

    def parsed_chunks(self, start: int, end: int, chunk_bytes: int) -> Iterator[tuple[int, int, pl.DataFrame]]:
        """Yield (offset, bytes, frame) in file order while up to `workers` later chunks parse in
        worker threads. Polars parses one in-memory chunk on about one core (measured: CPU time =
        wall time), so one parser per core; polars, numpy and pyarrow release the GIL, so the
        caller's transposing and writing overlap with the parsing. The first bad chunk in file
        order is the one reported."""
        source = self.chunks(start, end, chunk_bytes)
        pending: deque[tuple[int, int, Future]] = deque()
        with ThreadPoolExecutor(max_workers=self.workers) as pool:

            def submit_next() -> None:
                item = next(source, None)
                if item is not None:
                    pending.append((item[0], len(item[1]), pool.submit(self.parse_chunk, item[1], item[0])))

            for _ in range(self.workers):
                submit_next()
            while pending:
                offset, nbytes, future = pending.popleft()
                frame = future.result()
                submit_next()
                yield offset, nbytes, frame

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
        schema = shard_schema(self.dim)
        rows = 0
        with atomic_path(out) as tmp:
            writer = pq.ParquetWriter(tmp, schema, compression=compression, use_dictionary=["path"],
                                      write_statistics=["row", "label"], write_page_checksum=True)
            try:
                total = None if rng["end"] is None else rng["end"] - rng["start"]
                with tqdm(total=total, unit="B", unit_scale=True, desc=f"convert part {part}", mininterval=2) as bar:
                    for offset, nbytes, frame in self.parsed_chunks(rng["start"], rng["end"], chunk_mb << 20):
                        n = frame.height
                        matrix = self.feature_matrix(frame)
                        labels = frame.get_column(self.col_names[self.plan["label"]]).to_numpy()
                        self.check_values(frame, matrix, labels, offset)
                        if self.plan["index"] is not None:
                            row_ids = frame.get_column(self.col_names[self.plan["index"]]).to_numpy()
                        else:
                            row_ids = np.arange(next_row, next_row + n, dtype=np.int64)
                        paths = (frame.get_column(self.col_names[self.plan["path"]]).to_arrow().cast(pa.string())
                                 if self.plan["path"] is not None else _empty_strings(n))
                        table = pa.Table.from_arrays(
                            [numpy_to_arrow(row_ids, np.int64), paths, numpy_to_arrow(labels, np.int16),
                             features_to_arrow(matrix)], schema=schema)
                        writer.write_table(table, row_group_size=row_group_rows)
                        rows += n
                        next_row += n
                        bar.update(nbytes)
            finally:
                writer.close()
        return rows


def _line_end_before(fd: int, offset: int, target: int, end: int) -> int:
    """The position after the last newline in (offset, target], or, for a line longer than
    target - offset, after the first newline past target (capped at end)."""
    probe_end = target
    while probe_end > offset:
        probe_start = max(offset, probe_end - PROBE_BYTES)
        found = os.pread(fd, probe_end - probe_start, probe_start).rfind(b"\n")
        if found >= 0:
            return probe_start + found + 1
        probe_end = probe_start
    position = target
    while position < end:
        block = os.pread(fd, min(PROBE_BYTES, end - position), position)
        found = block.find(b"\n")
        if found >= 0:
            return position + found + 1
        if not block:
            break
        position += len(block)
    return end


def _empty_strings(n: int) -> pa.Array:
    """n empty strings (a file without a path column), built without pa.array: that imports pandas."""
    return pa.Array.from_buffers(pa.string(), n, [None, pa.py_buffer(np.zeros(n + 1, np.int32)), pa.py_buffer(b"")])


def _after_last_content_line(buf: bytearray, cut: int) -> int:
    """Move a cut back over a run of line ends, so that they go to the next chunk."""
    i = cut
    while i > 0 and buf[i - 1] in b"\r\n":
        i -= 1
    return cut if i == 0 else buf.find(b"\n", i, cut) + 1


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
    # The shards' folder as the rule passed them (one per split); recorded relative to the manifest,
    # which is how every reader finds it (featio.split_folder).
    folders = {shard.parent for shard in shards}
    if len(folders) != 1:
        raise FeatgapError(f"{out}: the shards of one split must share a folder, got {sorted(map(str, folders))}")
    folder = folders.pop()
    listed = {entry["file"] for entry in entries}
    stale = sorted(p for p in folder.glob(SHARD_GLOB) if p.name not in listed) if folder.is_dir() else []
    manifest = {
        "source": plan_["csv"],
        "source_fingerprint": plan_["fingerprint"],
        "folder": os.path.relpath(folder, Path(out).parent),
        "rows": rows,
        "dim": plan_["dim"],
        "classes_seen": len(labels_seen),
        "label_min": min(labels_seen),
        "label_max": max(labels_seen),
        "shards": entries,
        "meta": meta_block(started=started, input_fingerprints=[plan_["fingerprint"]]),
    }
    write_json(out, manifest)
    for path in stale:  # after the manifest exists: readers never see a folder without one
        path.unlink()
        print(f"removed {path}: not a part of this conversion")
    if folder.is_dir():
        for path in remove_dead_temporaries(folder):
            print(f"removed {path}: left by a killed job")
    return manifest


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
