"""One parsed chunk's columns, whichever parser read it, and the shard table over them (no copies)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from scripts.lib.featio.arrow import features_to_arrow, numpy_to_arrow


@dataclass
class ChunkColumns:
    """One parsed chunk, ready to check and write."""

    matrix: np.ndarray  # (n, D) float32, row-major
    labels: np.ndarray  # int64
    row_ids: np.ndarray | None  # the index column; None: row ids are line positions
    paths: pa.Array | None  # None: the file has no path column
    empty_path_row: int | None  # the first row whose path is empty
    known_finite: bool  # the fast parser's grammar has no NaN, inf or overflow: no need to look
    pooled: np.ndarray | None = None  # the fast parser's buffer behind `matrix`, returned after writing


def chunk_table(chunk: ChunkColumns, first_row: int, schema: pa.Schema) -> pa.Table:
    """The shard's columns over the chunk's arrays (no copies); row ids are line positions from
    first_row where the file has no index column."""
    n = len(chunk.labels)
    row_ids = chunk.row_ids if chunk.row_ids is not None else np.arange(first_row, first_row + n, dtype=np.int64)
    paths = chunk.paths if chunk.paths is not None else _empty_strings(n)
    return pa.Table.from_arrays([numpy_to_arrow(row_ids, np.int64), paths, numpy_to_arrow(chunk.labels, np.int16),
                                 features_to_arrow(chunk.matrix)], schema=schema)


def _empty_strings(n: int) -> pa.Array:
    """n empty strings (a file without a path column), built without pa.array: that imports pandas."""
    return pa.Array.from_buffers(pa.string(), n, [None, pa.py_buffer(np.zeros(n + 1, np.int32)), pa.py_buffer(b"")])
