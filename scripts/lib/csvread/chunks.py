"""A CSV byte range as line-aligned chunks: the unit both parsers read, so memory is bounded by the
chunk size whatever the file size.

A plain file is cut by reading back a little from each chunk's planned end (so the kernel's copy of
each byte is the only one); a stream that cannot seek (gzip) is read through one buffer.
"""
from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

from scripts.lib.csvread.source import open_source

PROBE_BYTES = 1 << 16  # read back from a chunk's planned end to find its last line end


def chunks(csv: Path, compression: str, start: int, end: int | None, chunk_bytes: int) -> Iterator[tuple[int, bytes]]:
    """Yield (offset, bytes) of line-aligned chunks of [start, end) (end None: to the end of
    a gzip stream)."""
    if compression == "none" and end is not None:
        yield from plain_chunks(csv, start, end, chunk_bytes)
    else:
        yield from stream_chunks(csv, compression, start, end, chunk_bytes)

def plain_chunks(csv: Path, start: int, end: int, chunk_bytes: int) -> Iterator[tuple[int, bytes]]:
    """An uncompressed file: find each chunk's last line end first (a small read near its
    planned end), then read exactly [offset, cut) into a new bytes object, so that the
    kernel's copy is the only one (a buffer + carry costs a second copy of every byte)."""
    fd = os.open(csv, os.O_RDONLY)
    try:
        for offset, cut in line_aligned_cuts(fd, start, end, chunk_bytes):
            data = os.pread(fd, cut - offset, offset)
            if not data:  # the file shrank after planning: the converter checked the source first
                break
            yield offset, data
    finally:
        os.close(fd)

def stream_chunks(csv: Path, compression: str, start: int, end: int | None, chunk_bytes: int) -> Iterator[tuple[int, bytes]]:
    """Line-aligned chunks of a stream that cannot seek (gzip), read into one buffer."""
    buf = bytearray(chunk_bytes)
    offset, carry = start, 0
    with open_source(csv, compression) as handle:
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


def line_aligned_cuts(fd: int, start: int, end: int, chunk_bytes: int) -> Iterator[tuple[int, int]]:
    """[offset, cut) of each chunk of about chunk_bytes that ends at a line end."""
    offset = start
    while offset < end:
        cut = end if offset + chunk_bytes >= end else _line_end_before(fd, offset, offset + chunk_bytes, end)
        yield offset, cut
        offset = cut


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


def _after_last_content_line(buf: bytearray, cut: int) -> int:
    """Move a cut back over a run of line ends, so that they go to the next chunk."""
    i = cut
    while i > 0 and buf[i - 1] in b"\r\n":
        i -= 1
    return cut if i == 0 else buf.find(b"\n", i, cut) + 1
