"""Open a feature CSV and plan its conversion: file format, header layout, byte ranges.

Supported: UTF-8 text (with or without a byte-order mark), LF or CRLF line ends, RFC-4180 quoting
within a line, trailing blank lines, and gzip (`.csv.gz`, recognised by its magic bytes, streamed
as one part because a gzip stream cannot be cut into byte ranges). Refused in one line each:
other compressions, UTF-16, CR-only line ends, quoted fields that span lines (checked while
parsing), and any header that is ambiguous: duplicate names, a configured column that is absent,
a column that is neither configured nor a feature name `0..D-1`.
"""
from __future__ import annotations

import contextlib
import csv
import gzip
import itertools
import re
import zlib
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

from scripts.lib.featio.errors import FeatgapError
from scripts.lib.fingerprint import fingerprint

DEFAULT_COLUMNS = {"index": "", "path": "path", "label": "label"}
COLUMN_ROLES = {"index": "the index column", "path": "the image path column", "label": "the class label"}
FEATURE_NAME = re.compile(r"0|[1-9][0-9]*")  # ASCII only: '²' or '٣' are not feature numbers
GZIP_MAGIC = b"\x1f\x8b"
OTHER_COMPRESSIONS = {b"\x28\xb5\x2f\xfd": "zstd", b"BZh": "bzip2", b"\xfd7zXZ\x00": "xz", b"PK\x03\x04": "zip"}
UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")
MAX_HEADER_BYTES = 16 << 20
COUNT_BLOCK = 16 << 20


# ---------------------------------------------------------------- opening
def sniff_compression(csv_path: Path) -> str:
    """'gzip' or 'none', from the magic bytes (a name can lie); other formats are refused."""
    with csv_path.open("rb") as handle:
        head = handle.read(8)
    if head.startswith(GZIP_MAGIC):
        return "gzip"
    for magic, name in OTHER_COMPRESSIONS.items():
        if head.startswith(magic):
            raise FeatgapError(f"{csv_path}: {name}-compressed; decompress it (or use gzip, which is read directly)")
    return "none"


@contextlib.contextmanager
def open_source(csv_path: str | Path, compression: str) -> Iterator[BinaryIO]:
    """The CSV's bytes (decompressed for gzip); a corrupt gzip stream is one line, not a traceback."""
    csv_path = Path(csv_path)
    try:
        with (gzip.open(csv_path, "rb") if compression == "gzip" else csv_path.open("rb")) as handle:
            yield handle
    except (EOFError, zlib.error, gzip.BadGzipFile) as err:
        raise FeatgapError(f"{csv_path}: corrupt or truncated gzip stream ({err}); "
                           "check the file (gzip -t) or decompress it again") from None


def count_lines(handle: BinaryIO, start: int, end: int | None) -> int:
    """Lines in [start, end) (end None: to the end), a last line without newline included."""
    handle.seek(start)
    left, lines, last = (end - start) if end is not None else float("inf"), 0, b"\n"
    while left > 0:
        block = handle.read(int(min(COUNT_BLOCK, left)))
        if not block:
            break
        lines += block.count(b"\n")
        last = block[-1:]
        left -= len(block)
    return lines + (1 if last != b"\n" else 0)


# ---------------------------------------------------------------- header
def read_header_line(handle: BinaryIO, csv_path: Path) -> bytes:
    first = handle.readline(MAX_HEADER_BYTES)
    if not first.strip():
        raise FeatgapError(f"{csv_path}: the file is empty (expected a header line `,path,label,0,1,…`)")
    if first.startswith(UTF16_BOMS) or b"\x00" in first:
        raise FeatgapError(f"{csv_path}: line 1: UTF-16 or binary data (NUL bytes); save the file as UTF-8 CSV")
    body = first.rstrip(b"\r\n")
    if b"\r" in body:
        raise FeatgapError(f"{csv_path}: line 1: lines end with CR only (old Mac / Excel 'CSV (Macintosh)'); "
                           "save the file with LF or CRLF line ends")
    if len(first) >= MAX_HEADER_BYTES and not first.endswith(b"\n"):
        raise FeatgapError(f"{csv_path}: line 1 is longer than {MAX_HEADER_BYTES >> 20} MB (no line end found)")
    return first


def decode_header(body: bytes, csv_path: Path) -> list[str]:
    try:
        text = body.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        field = body[: err.start].count(b",") + 1
        raise FeatgapError(f"{csv_path}: line 1 (header), field {field}: byte 0x{body[err.start]:02x} is not UTF-8; "
                           "save the file as UTF-8") from None
    try:
        return next(csv.reader([text], strict=True))
    except csv.Error as err:
        raise FeatgapError(f"{csv_path}: line 1 (header): {err}") from None


def parse_header(first: bytes, csv_path: Path, columns: dict[str, Any] | None, dim: int | None) -> dict[str, Any]:
    """Locate index / path / label / feature columns by name; refuse anything ambiguous."""
    names = decode_header(first.rstrip(b"\r\n"), csv_path)
    where = f"{csv_path}: line 1 (header)"
    repeated = [name for name, count in Counter(names).items() if count > 1]
    if repeated:
        shown = ", ".join(f"{n!r} (columns {', '.join(str(i + 1) for i, m in enumerate(names) if m == n)})"
                          for n in repeated[:3])
        raise FeatgapError(f"{where}: duplicate column name {shown}; every column needs its own name")
    cols = {**DEFAULT_COLUMNS, **(columns or {})}
    position = {name: i for i, name in enumerate(names)}
    for role in ("label", "index", "path"):
        name = cols[role]
        if name is not None and name not in position:
            raise FeatgapError(f"{where}: missing column {name!r} ({COLUMN_ROLES[role]}, columns.{role})"
                               + _near_miss(name, names, role))
    configured = {cols[role] for role in COLUMN_ROLES if cols[role] is not None}
    feature_pos = {int(n): i for i, n in enumerate(names) if n not in configured and FEATURE_NAME.fullmatch(n)}
    unexpected = [(i, n) for i, n in enumerate(names) if n not in configured and not FEATURE_NAME.fullmatch(n)]
    if unexpected:
        i, n = unexpected[0]
        raise FeatgapError(f"{where}, column {i + 1}: unexpected column {n!r}; expected only the configured "
                           f"columns ({', '.join(repr(c) for c in sorted(configured))}) and features named 0..D-1")
    found = len(feature_pos)
    if found == 0:
        raise FeatgapError(f"{where}: no feature columns (expected columns named 0..D-1)")
    if sorted(feature_pos) != list(range(found)):
        missing = sorted(set(range(max(feature_pos) + 1)) - set(feature_pos))[:5]
        raise FeatgapError(f"{where}: feature columns must be named 0..{found - 1} without gaps; missing {missing}")
    if dim is not None and found != dim:
        raise FeatgapError(f"{where}: found {found} feature columns (0..{found - 1}), expected {dim} (config dim)")
    return {
        "names": names,
        "header_bytes": len(first),
        "index": position[cols["index"]] if cols["index"] is not None else None,
        "path": position[cols["path"]] if cols["path"] is not None else None,
        "label": position[cols["label"]],
        "features": [feature_pos[j] for j in range(found)],
        "dim": found,
    }


def _near_miss(name: str, names: list[str], role: str) -> str:
    similar = [n for n in names if n.strip().casefold() == name.strip().casefold()]
    if similar:
        return f"; found {similar[0]!r} (names are exact: rename it or set columns.{role}: {similar[0]!r})"
    if role in ("index", "path"):
        return f"; set columns.{role}: null if the file has none"
    return ""


# ---------------------------------------------------------------- plan
def next_line_start(handle: BinaryIO, offset: int, size: int) -> int:
    """The first byte of the line after the one that holds byte offset-1 (a line-aligned cut)."""
    if offset >= size:
        return size
    handle.seek(offset - 1)
    handle.readline()
    return min(handle.tell(), size)


def content_end(handle: BinaryIO, size: int) -> int:
    """File size without trailing line ends: blank lines at the end of a file are not rows."""
    end = size
    while end > 0:
        start = max(0, end - 4096)
        handle.seek(start)
        block = handle.read(end - start)
        kept = block.rstrip(b"\r\n")
        if kept:
            return start + len(kept)
        end = start
    return 0


def plan(csv_path: str | Path, parts: int, columns: dict | None = None, dim: int | None = None) -> dict:
    """Format, header layout and `parts` line-aligned byte ranges of the data."""
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise FeatgapError(f"{csv_path}: file not found")
    compression = sniff_compression(csv_path)
    if compression == "gzip" and parts != 1:
        raise FeatgapError(f"{csv_path}: a gzip stream cannot be cut into byte ranges; set convert.parts to 1 for "
                           f"this split (it has {parts}), or decompress the file to convert it in parallel parts")
    with open_source(csv_path, compression) as handle:
        first = read_header_line(handle, csv_path)
        header = parse_header(first, csv_path, columns, dim)
        if not handle.read(1 << 16).strip(b"\r\n"):
            raise FeatgapError(f"{csv_path}: header only, no data rows (expected at least one row after line 1)")
        data_start = header["header_bytes"]
        if compression == "gzip":
            ranges = [{"start": data_start, "end": None, "first_row": 0}]  # end None: to the end of the stream
        else:
            size = csv_path.stat().st_size
            end = content_end(handle, size)
            cuts = [data_start]
            for i in range(1, parts):
                cuts.append(max(cuts[-1], next_line_start(handle, data_start + (end - data_start) * i // parts, end)))
            cuts.append(end)
            ranges = [{"start": a, "end": b} for a, b in itertools.pairwise(cuts)]
            if header["index"] is None:
                # No index column: row ids are line positions, so each range needs its first row id.
                first_row = 0
                for rng in ranges:
                    rng["first_row"] = first_row
                    first_row += count_lines(handle, rng["start"], rng["end"]) if rng["end"] > rng["start"] else 0
    return {"csv": str(csv_path), "compression": compression, "fingerprint": fingerprint(csv_path),
            "size": csv_path.stat().st_size, "ranges": ranges, **header}

