"""A shard's feature column read page by page, checksum-checked, straight into a float32 matrix.

Why: pyarrow decodes a fixed_size_list<float32> column through its general nested-data path:
for every value it decodes a definition and a repetition level, builds a validity bitmap and list
offsets, and grows its buffers by reallocation (~400 MB/s per core here, for a matrix with no
nulls). A feature page that convert writes is a header, two run-length level blocks and then the
row-major float32 values themselves, so this reader checks each page's CRC-32 (as pyarrow's
page_checksum_verification does) and copies the values. When the values count equals the levels
count no value is null; with the column's fixed list size, the values in order are the matrix.

Anything else (compression, a dictionary page, data page v2, another encoding, a null, a page
without a checksum, a layout it does not expect) returns False, and the caller reads the row
group with pyarrow instead; a checksum mismatch raises PageChecksumError.
"""
from __future__ import annotations

import ctypes
import os
import threading
import zlib

import numpy as np
import pyarrow.parquet as pq

PLAIN, RLE = 0, 3
DATA_PAGE = 0
FLOAT32_LE = np.dtype("<f4")


class PageChecksumError(Exception):
    """A data page whose bytes do not match its CRC-32."""


class _Unexpected(Exception):
    """A header this reader does not handle: let pyarrow read the row group."""


# ---------------------------------------------------------------- Thrift compact protocol
# Just enough to read a PageHeader (parquet.thrift): integers, nested structs, and skipping the
# rest (statistics hold binaries and may hold lists).
def _varint(buf: memoryview, pos: int) -> tuple[int, int]:
    result = shift = 0
    while shift < 64:
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7
    raise _Unexpected("varint too long")


def _zigzag(value: int) -> int:
    return (value >> 1) ^ -(value & 1)


def _skip(buf: memoryview, pos: int, kind: int, in_collection: bool = False) -> int:
    if kind in (1, 2):  # booleans: in the field header, but one byte inside a list
        return pos + 1 if in_collection else pos
    if kind == 3:
        return pos + 1
    if kind in (4, 5, 6):
        return _varint(buf, pos)[1]
    if kind == 7:
        return pos + 8
    if kind == 8:
        size, pos = _varint(buf, pos)
        return pos + size
    if kind in (9, 10):
        head = buf[pos]
        pos += 1
        size, element = head >> 4, head & 0x0F
        if size == 15:
            size, pos = _varint(buf, pos)
        for _ in range(size):
            pos = _skip(buf, pos, element, True)
        return pos
    if kind == 11:
        size, pos = _varint(buf, pos)
        if size:
            types = buf[pos]
            pos += 1
            for _ in range(size):
                pos = _skip(buf, _skip(buf, pos, types >> 4, True), types & 0x0F, True)
        return pos
    if kind == 12:
        return _struct(buf, pos)[1]
    raise _Unexpected(f"thrift type {kind}")


def _struct(buf: memoryview, pos: int) -> tuple[dict, int]:
    """{field id: int | bool | dict} of a struct (other fields skipped), and the position after it."""
    fields: dict[int, object] = {}
    last = 0
    while True:
        head = buf[pos]
        pos += 1
        if head == 0:
            return fields, pos
        kind, delta = head & 0x0F, head >> 4
        if delta:
            field = last + delta
        else:
            raw, pos = _varint(buf, pos)
            field = _zigzag(raw)
        last = field
        if kind in (4, 5, 6):
            raw, pos = _varint(buf, pos)
            fields[field] = _zigzag(raw)
        elif kind in (1, 2):
            fields[field] = kind == 1
        elif kind == 12:
            fields[field], pos = _struct(buf, pos)
        else:
            pos = _skip(buf, pos, kind)


# ---------------------------------------------------------------- reading
def _chunk_bytes(path: os.PathLike | str, start: int, size: int, scratch: threading.local) -> memoryview:
    """The column chunk's bytes in the calling thread's buffer of `scratch` (one column chunk per
    thread, reused from row group to row group: a fresh 30 MB buffer costs a page fault per 4 KB)."""
    buffer = getattr(scratch, "chunk", None)
    if buffer is None or len(buffer) < size:
        scratch.chunk = None
        buffer = scratch.chunk = bytearray(size)
    view = memoryview(buffer)[:size]
    fd = os.open(path, os.O_RDONLY)
    try:
        got = 0
        while got < size:
            n = os.preadv(fd, [view[got:]], start + got)
            if n == 0:
                raise _Unexpected("file shorter than its footer says")
            got += n
    finally:
        os.close(fd)
    return view


def _pages(path, pfile: pq.ParquetFile, group: int, column: int, scratch: threading.local):
    """(buffer view, [(values start, values end)] of every page) of a row group's feature chunk,
    every page's checksum checked; None when the chunk is not in the expected layout."""
    meta = pfile.metadata.row_group(group).column(column)
    leaf = pfile.schema.column(column)
    if meta.compression != "UNCOMPRESSED" or meta.has_dictionary_page or meta.physical_type != "FLOAT":
        return None
    levels = (leaf.max_repetition_level > 0) + (leaf.max_definition_level > 0)
    size = meta.total_compressed_size
    try:
        buf = _chunk_bytes(path, meta.data_page_offset, size, scratch)
        pos, spans = 0, []
        while pos < size:
            header, body = _struct(buf, pos)
            page = header.get(5)
            length, crc = header.get(3), header.get(4)
            if header.get(1) != DATA_PAGE or not isinstance(page, dict) or length is None or crc is None:
                return None
            end = body + length
            if end > size or page.get(2) != PLAIN or page.get(3) != RLE or page.get(4) != RLE:
                return None
            if zlib.crc32(buf[body:end]) != crc & 0xFFFFFFFF:
                raise PageChecksumError(f"page at byte {meta.data_page_offset + pos}: CRC-32 mismatch")
            values_at = body
            for _ in range(levels):  # RLE levels of a v1 page: a 4-byte length, then the runs
                values_at += 4 + int.from_bytes(buf[values_at : values_at + 4], "little")
            count = page.get(1)
            if not isinstance(count, int) or end - values_at != 4 * count:
                return None  # a null value: fewer values than levels
            spans.append((values_at, end))
            pos = end
        return buf, spans
    except (_Unexpected, IndexError, ValueError):
        return None


def features_into(path: os.PathLike | str, pfile: pq.ParquetFile, group: int, column: int, out: np.ndarray,
                  scratch: threading.local | None = None) -> bool:
    """Fill `out` ((rows, dim) float32, C-contiguous) with row group `group`'s features; `scratch`
    holds each thread's read buffer between calls (a caller reading many row groups passes one).
    Returns False (out partly written, nothing raised) when the chunk is not in the layout above.
    """
    if not out.flags.c_contiguous or out.dtype != np.float32:
        return False
    found = _pages(path, pfile, group, column, scratch if scratch is not None else threading.local())
    if found is None or sum(end - at for at, end in found[1]) != 4 * out.size:
        return False
    buf, filled, flat = found[0], 0, out.reshape(-1)
    for at, end in found[1]:
        count = (end - at) // 4
        flat[filled : filled + count] = np.frombuffer(buf[at:end], dtype=FLOAT32_LE)
        filled += count
    return True


def features_view(path: os.PathLike | str, pfile: pq.ParquetFile, group: int, column: int, shape: tuple[int, int],
                  scratch: threading.local) -> np.ndarray | None:
    """The row group's features as a view of this thread's read buffer (valid until its next
    read): the values are moved to the front of the buffer in place, so a subset read needs no
    second group-sized block. None when the chunk is not in the layout above."""
    found = _pages(path, pfile, group, column, scratch)
    if found is None or sum(end - at for at, end in found[1]) != 4 * shape[0] * shape[1]:
        return None
    buf, spans = found
    base = np.frombuffer(buf, dtype=np.uint8)
    address, filled = base.ctypes.data, 0
    for at, end in spans:  # the destination never passes the source: memmove is safe
        ctypes.memmove(address + filled, address + at, end - at)
        filled += end - at
    return np.frombuffer(buf, dtype=FLOAT32_LE, count=shape[0] * shape[1]).reshape(shape)
