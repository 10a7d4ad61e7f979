"""The fingerprint of an input file: size, mtime and a SHA-256 of sampled content.

One definition for both users: convert stores it in the plan and manifest (and refuses to convert
a part whose file changed since planning), and the workflow passes the same digest as a `params:`
value of plan_convert, so that an edit that keeps the file's mtime (cp -p, rsync -t, some editors)
still reruns the conversion. Standard library only: the Snakefile loads this module itself.

Hashing a 13 GB CSV whole would cost a minute on every `snakemake` call (params are evaluated when
the DAG is built), so the digest reads the first and last MB plus 64 evenly spaced 64 KB blocks
(~6 MB whatever the size). Any change of size, and any same-size edit inside a sampled block, is
seen; a same-size edit that falls between blocks and keeps the mtime is not (`snakemake --forcerun
plan_convert` after one).
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

EDGE_BYTES = 1 << 20
SAMPLE_BLOCKS = 64
SAMPLE_BYTES = 1 << 16


def sample_offsets(size: int) -> list[tuple[int, int]]:
    """(offset, length) of the sampled regions of a file of `size` bytes, in file order, disjoint."""
    if size <= 2 * EDGE_BYTES + SAMPLE_BLOCKS * SAMPLE_BYTES:
        return [(0, size)]
    middle_start, middle_end = EDGE_BYTES, size - EDGE_BYTES
    stride = (middle_end - middle_start) // SAMPLE_BLOCKS
    blocks = [(middle_start + i * stride + (stride - SAMPLE_BYTES) // 2, SAMPLE_BYTES) for i in range(SAMPLE_BLOCKS)]
    return [(0, EDGE_BYTES), *blocks, (middle_end, EDGE_BYTES)]


def sampled_sha256(path: str | os.PathLike) -> str:
    path = Path(path)
    size = path.stat().st_size
    digest = hashlib.sha256(str(size).encode())
    with path.open("rb") as handle:
        for offset, length in sample_offsets(size):
            handle.seek(offset)
            digest.update(handle.read(length))
    return digest.hexdigest()


def fingerprint(path: str | os.PathLike) -> dict[str, Any]:
    """Size, mtime and the sampled SHA-256 of a file."""
    path = Path(path)
    stat = path.stat()
    return {"path": str(path), "size": stat.st_size, "mtime": stat.st_mtime, "sha256_sampled": sampled_sha256(path)}
