"""CSV → Parquet shards, streamed, in byte-range parts that run as independent jobs.

Three sub-steps (one rule each, so a 13 GB file converts in parallel jobs):
  plan      read the header, find the columns by name, cut the file into `parts` line-aligned
            byte ranges (and count rows per range when there is no index column to take row ids from);
  part      parse one byte range chunk by chunk with polars (multi-threaded) into one shard;
  manifest  check the parts agree and write {split}.manifest.json.

Threads: polars reads POLARS_MAX_THREADS at import, so the rule sets it to the job's threads.
Why polars: its CSV reader is the fastest here (see README benchmarks); we hand it line-aligned
byte chunks so memory is bounded by `chunk_mb`, whatever the file size. The features become one
fixed_size_list<float32>[D] column, so a row group is one contiguous float32 matrix.
Bad input stops with one message naming the file, the line, the column and what was expected.
"""
from __future__ import annotations

import argparse
import csv
import io
import os
import time
from pathlib import Path
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Iterator, Sequence

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from scripts.featio import (
    FeatgapError,
    atomic_path,
    features_to_arrow,
    fingerprint,
    meta_block,
    parse_json_arg,
    read_json,
    run_cli,
    shard_schema,
    write_json,
)

DEFAULT_COLUMNS = {"index": "", "path": "path", "label": "label"}
COUNT_BLOCK = 16 << 20


# ---------------------------------------------------------------- header and plan
def parse_header(csv_path: Path, columns: dict[str, Any], dim: int | None) -> dict[str, Any]:
    """Locate index / path / label / feature columns by name; return their positions."""
    with csv_path.open("rb") as handle:
        first = handle.readline()
        header_bytes = len(first)
        if not first.strip():
            raise FeatgapError(f"{csv_path}: the file is empty (expected a header line `,path,label,0,1,…`)")
    names = next(csv.reader([first.decode("utf-8-sig").rstrip("\r\n")]))
    cols = {**DEFAULT_COLUMNS, **(columns or {})}
    position = {name: i for i, name in enumerate(names)}
    label_name = cols["label"]
    if label_name not in position:
        raise FeatgapError(f"{csv_path}: line 1 (header): missing column '{label_name}' (the class label)")
    feature_pos = {int(n): i for i, n in enumerate(names) if n.strip().isdigit() and n != cols["index"]}
    found = len(feature_pos)
    if found == 0:
        raise FeatgapError(f"{csv_path}: line 1 (header): no feature columns (expected columns named 0..D-1)")
    if sorted(feature_pos) != list(range(found)):
        missing = sorted(set(range(max(feature_pos) + 1)) - set(feature_pos))[:5]
        raise FeatgapError(
            f"{csv_path}: line 1 (header): feature columns must be named 0..{found - 1} without gaps; missing {missing}"
        )
    if dim is not None and found != dim:
        raise FeatgapError(
            f"{csv_path}: line 1 (header): found {found} feature columns (0..{found - 1}), expected {dim} (config dim)"
        )
    index_name, path_name = cols["index"], cols["path"]
    return {
        "names": names,
        "header_bytes": header_bytes,
        "index": position.get(index_name) if index_name is not None else None,
        "path": position.get(path_name) if path_name is not None else None,
        "label": position[label_name],
        "features": [feature_pos[j] for j in range(found)],
        "dim": found,
    }


def next_line_start(handle, offset: int, size: int) -> int:
    """The first byte of the line that contains `offset`'s successor line (line-aligned cut)."""
    if offset >= size:
        return size
    handle.seek(offset - 1)
    handle.readline()  # finish the line that byte offset-1 belongs to
    return min(handle.tell(), size)


def count_lines(handle, start: int, end: int) -> int:
    handle.seek(start)
    left, lines, last = end - start, 0, b"\n"
    while left > 0:
        block = handle.read(min(COUNT_BLOCK, left))
        if not block:
            break
        lines += block.count(b"\n")
        last = block[-1:]
        left -= len(block)
    return lines + (1 if end > start and last != b"\n" else 0)


def plan(csv_path: str | Path, parts: int, columns: dict | None = None, dim: int | None = None) -> dict:
    """Header layout + `parts` line-aligned byte ranges of the data."""
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise FeatgapError(f"{csv_path}: file not found")
    header = parse_header(csv_path, columns or {}, dim)
    size = csv_path.stat().st_size
    data_start = header["header_bytes"]
    with csv_path.open("rb") as handle:
        handle.seek(data_start)
        head_only = not handle.read(4096).strip() and size - data_start <= 4096
    if head_only:
        raise FeatgapError(f"{csv_path}: header only, no data rows (expected at least one row after line 1)")
    with csv_path.open("rb") as handle:
        cuts = [data_start]
        for i in range(1, parts):
            cuts.append(max(cuts[-1], next_line_start(handle, data_start + (size - data_start) * i // parts, size)))
        cuts.append(size)
        ranges = [{"start": a, "end": b} for a, b in zip(cuts[:-1], cuts[1:])]
        if header["index"] is None:
            # No index column: row ids are line positions, so each range needs its first row id.
            first_row = 0
            for rng in ranges:
                rng["first_row"] = first_row
                first_row += count_lines(handle, rng["start"], rng["end"])
    return {"csv": str(csv_path), "fingerprint": fingerprint(csv_path), "size": size, "ranges": ranges, **header}


# ---------------------------------------------------------------- one part
class PartConverter:
    """Parse one byte range of the CSV into one shard, chunk by chunk."""

    def __init__(self, plan_: dict, num_classes: int):
        self.plan = plan_
        self.csv = Path(plan_["csv"])
        self.num_classes = num_classes
        names = plan_["names"]
        self.dim = plan_["dim"]
        # Parse only the columns we need; every feature straight to float32.
        wanted = [plan_["label"]] + plan_["features"]
        dtypes = {plan_["label"]: pl.Int64}
        if plan_["index"] is not None:
            wanted.append(plan_["index"])
            dtypes[plan_["index"]] = pl.Int64
        if plan_["path"] is not None:
            wanted.append(plan_["path"])
            dtypes[plan_["path"]] = pl.String
        self.wanted = sorted(wanted)
        self.col_names = [f"c{i}" for i in range(len(names))]
        self.schema = {self.col_names[i]: dtypes.get(i, pl.Float32 if i in set(plan_["features"]) else pl.String)
                       for i in range(len(names))}
        self.feature_cols = [self.col_names[i] for i in plan_["features"]]

    def parse_chunk(self, data: bytes, offset: int) -> pl.DataFrame:
        try:
            frame = pl.read_csv(
                data, has_header=False, schema=self.schema, columns=self.wanted,
                raise_if_empty=False, truncate_ragged_lines=False,
            )
        except Exception as err:  # polars raises several types; diagnose precisely below
            self.diagnose(data, offset, str(err).splitlines()[0])
            raise  # diagnose always raises
        # Fewer fields than the header, or empty values, come back as nulls.
        if frame.null_count().sum_horizontal().item() > 0:
            self.diagnose(data, offset, "empty value")
        return frame

    def diagnose(self, data: bytes, offset: int, fallback: str) -> None:
        """Find the first bad line of a chunk with the slow, exact csv module, and raise."""
        names, n_fields = self.plan["names"], len(self.plan["names"])
        features = set(self.plan["features"])
        ints = {self.plan["label"]} | ({self.plan["index"]} if self.plan["index"] is not None else set())
        text = data.decode("utf-8", errors="replace")
        for local_line, fields in enumerate(csv.reader(io.StringIO(text))):
            if not fields:
                raise self.error(offset, local_line, None, "an empty line (expected a data row)")
            if len(fields) != n_fields:
                raise self.error(offset, local_line, None, f"{len(fields)} fields, expected {n_fields} as in the header")
            for pos in self.wanted:
                value = fields[pos]
                if pos in features:
                    try:
                        float(value)
                    except ValueError:
                        raise self.error(offset, local_line, names[pos], f"value {value!r}, expected a number") from None
                elif pos in ints:
                    try:
                        int(value)
                    except ValueError:
                        raise self.error(offset, local_line, names[pos], f"value {value!r}, expected an integer") from None
        raise FeatgapError(f"{self.csv}: bytes {offset}..{offset + len(data)}: could not parse ({fallback})")

    def line_number(self, offset: int, local_line: int) -> int:
        """1-based line number in the file (header = line 1); counted only when reporting an error."""
        with self.csv.open("rb") as handle:
            return count_lines(handle, 0, offset) + local_line + 1

    def error(self, offset: int, local_line: int, column: str | None, what: str) -> FeatgapError:
        where = f"line {self.line_number(offset, local_line)}"
        col = f", column '{column}'" if column is not None else ""
        return FeatgapError(f"{self.csv}: {where}{col}: {what}")

    def check_values(self, frame: pl.DataFrame, matrix: np.ndarray, labels: np.ndarray, offset: int) -> None:
        finite = np.isfinite(matrix)
        if not finite.all():
            row, col = np.argwhere(~finite)[0]
            raise self.error(offset, int(row), self.plan["names"][self.plan["features"][col]],
                             f"value {matrix[row, col]}, expected a finite number (no NaN or inf)")
        bad = (labels < 0) | (labels >= self.num_classes)
        if bad.any():
            row = int(np.argmax(bad))
            raise self.error(offset, row, self.plan["names"][self.plan["label"]],
                             f"label {labels[row]}, expected an integer in 0..{self.num_classes - 1}")

    def chunks(self, start: int, end: int, chunk_bytes: int) -> Iterator[tuple[int, bytes]]:
        """Yield (file offset, bytes) of line-aligned chunks of [start, end), reading into one buffer."""
        buf = bytearray(chunk_bytes)
        offset, carry = start, 0
        with self.csv.open("rb") as handle:
            handle.seek(start)
            while offset + carry < end or carry:
                room = min(len(buf) - carry, end - offset - carry)
                with memoryview(buf) as view:
                    got = handle.readinto(view[carry : carry + room]) if room > 0 else 0
                filled = carry + got
                at_end = got == 0 or offset + filled >= end
                cut = filled if at_end else buf.rfind(b"\n", 0, filled) + 1
                if cut == 0:  # a line longer than the buffer: grow it and read on
                    buf.extend(bytes(len(buf)))
                    carry = filled
                    continue
                with memoryview(buf) as view:
                    chunk = bytes(view[:cut])  # the one copy polars needs
                if not chunk.isspace():  # stops at the first non-blank byte: cheap
                    yield offset, chunk
                buf[: filled - cut] = buf[cut:filled]
                offset, carry = offset + cut, filled - cut
                if at_end:
                    break

    def parsed_chunks(self, start: int, end: int, chunk_bytes: int) -> Iterator[tuple[int, int, pl.DataFrame]]:
        """Parse chunk k+1 in a worker thread while the caller writes chunk k (polars and
        pyarrow release the GIL, so reading, parsing and writing overlap on the job's cores)."""
        source = self.chunks(start, end, chunk_bytes)

        def parse_next() -> tuple[int, int, pl.DataFrame] | None:
            item = next(source, None)
            return None if item is None else (item[0], len(item[1]), self.parse_chunk(item[1], item[0]))

        with ThreadPoolExecutor(max_workers=1) as pool:
            future = pool.submit(parse_next)
            while (result := future.result()) is not None:
                future = pool.submit(parse_next)
                yield result

    def run(self, part: int, out: Path, row_group_rows: int, compression: str, chunk_mb: int) -> int:
        rng = self.plan["ranges"][part]
        next_row = rng.get("first_row", 0)
        schema = shard_schema(self.dim)
        rows = 0
        with atomic_path(out) as tmp:
            writer = pq.ParquetWriter(tmp, schema, compression=compression, use_dictionary=["path"],
                                      write_statistics=["row", "label"])
            try:
                total = rng["end"] - rng["start"]
                with tqdm(total=total, unit="B", unit_scale=True, desc=f"convert part {part}", mininterval=2) as bar:
                    for offset, nbytes, frame in self.parsed_chunks(rng["start"], rng["end"], chunk_mb << 20):
                        n = frame.height
                        matrix = frame.select(self.feature_cols).to_numpy(order="c")
                        labels = frame.get_column(self.col_names[self.plan["label"]]).to_numpy()
                        self.check_values(frame, matrix, labels, offset)
                        if self.plan["index"] is not None:
                            row_ids = frame.get_column(self.col_names[self.plan["index"]]).to_numpy()
                        else:
                            row_ids = np.arange(next_row, next_row + n, dtype=np.int64)
                        paths = (frame.get_column(self.col_names[self.plan["path"]]).to_arrow().cast(pa.string())
                                 if self.plan["path"] is not None else pa.array([""] * n, pa.string()))
                        table = pa.Table.from_arrays(
                            [pa.array(row_ids, pa.int64()), paths, pa.array(labels.astype(np.int16)),
                             features_to_arrow(matrix)], schema=schema)
                        writer.write_table(table, row_group_size=row_group_rows)
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
    started = time.perf_counter()
    plan_ = read_json(plan_path)
    entries, rows, labels_seen = [], 0, set()
    for shard in sorted(map(Path, shards)):
        pfile = pq.ParquetFile(shard)
        dim = pfile.schema_arrow.field("features").type.list_size
        if dim != plan_["dim"]:
            raise FeatgapError(f"{shard}: {dim} features, expected {plan_['dim']} as in {plan_['csv']}")
        labels = pq.read_table(shard, columns=["label"]).column("label").to_numpy()
        labels_seen.update(np.unique(labels).tolist())
        entries.append({"file": shard.name, "rows": pfile.metadata.num_rows,
                        "row_groups": pfile.num_row_groups, "bytes": shard.stat().st_size})
        rows += pfile.metadata.num_rows
    if rows == 0:
        raise FeatgapError(f"{plan_['csv']}: no data rows were converted")
    manifest = {
        "source": plan_["csv"],
        "source_fingerprint": plan_["fingerprint"],
        "folder": str(Path(out).with_name(Path(out).name.removesuffix(".manifest.json"))),
        "rows": rows,
        "dim": plan_["dim"],
        "classes_seen": len(labels_seen),
        "label_min": min(labels_seen),
        "label_max": max(labels_seen),
        "shards": entries,
        "meta": meta_block(started=started, input_fingerprints=[plan_["fingerprint"]]),
    }
    write_json(out, manifest)
    return manifest


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
    return write_manifest(plan_path, sorted(folder.glob("part-*.parquet")), manifest)


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
