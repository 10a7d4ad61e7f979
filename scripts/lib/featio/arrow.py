"""Arrow ↔ numpy for the shard columns without per-row work (and without importing pandas).
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa


def arrow_to_numpy(values: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """A numeric Arrow array without nulls as numpy (a view when it is one chunk).

    By its buffer, not Array.to_numpy: that imports pandas (~0.5 s per job, more when busy).
    """
    chunks = values.chunks if isinstance(values, pa.ChunkedArray) else [values]
    parts = []
    for chunk in chunks:
        if chunk.null_count or (not pa.types.is_integer(chunk.type) and not pa.types.is_floating(chunk.type)):
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
