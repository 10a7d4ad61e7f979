"""A strict, fast CSV chunk parser for the common case: plain numbers, plain paths, LF line ends.

Why a hand parser: the convert step spent about half its CPU time in polars' CSV parser (measured
on a 417 MB convert: ~2.1 of 4.2 CPU s), then ~0.55 s transposing polars' columns into the
row-major float32 matrix the shard stores. pyarrow's CSV reader is slower than polars here, and no
library parses straight into a row-major (n, D) float32 matrix. This parser accepts only a narrow
grammar, writes each value straight into its place in that matrix (no transpose, no per-column
objects) and builds the path column from the chunk's bytes (no Python strings). Measured on one
core, a 64 MB chunk of the benchmark CSV (D = 1024): ~690 MB/s here against ~230 MB/s for polars'
parse plus the transpose. It reads 8 bytes at a time (SWAR, as the fast_float library does): it
finds a field's end before parsing its digits, so consecutive fields overlap in the CPU.

Why numba: the byte loop must run at C speed and release the GIL (`nogil=True`), so that the
convert step's worker threads parse chunks in parallel while the main thread writes Parquet; numba
does both without a compiled extension to build and ship. Compiled code is cached on disk
(`cache=True`, next to this file or, where that is read-only, in numba's user cache folder), so
only the first run on a machine pays the compile (~5 s); later jobs pay ~0.3 s to import numba and
~0.3 s to load the cached code, which is why convert.py uses this parser only for large parts.

Strict: the grammar accepted is
    line    = field ("," field)* "\\n"      (the chunk's last line may lack its "\\n")
    number  = "-"? digit+ ("." digit+)? ([eE] [+-]? digit{1,4})?   (at most 19 significant digits)
    integer = "-"? digit{1,18}
    path    = one or more bytes other than `,` `"` CR LF and control bytes (UTF-8 checked after)
with exactly the header's number of fields. Anything else (quotes, CR, empty fields or lines,
ragged rows, spaces, `+1`, `1.`, `.5`, nan/inf, subnormal or out-of-range values, a non-UTF-8
path) returns None and the caller parses the chunk with polars, which either reads it or reports
the one-line error. Every accepted number is read by polars to the same value, so the result is
bit-identical whichever parser ran.

Correct rounding: a number is m × 10^e with m < 10^19. v = float64(m) ×/÷ 10^|e| carries at
most ~2 float64 rounding errors, so casting v to float32 is the correctly rounded result unless v
lies within a few float64 ulps of a float32 rounding midpoint. Such values are recorded and redone
exactly with fractions.Fraction: none of the 90.7 M values of the 1 GB benchmark CSV; exact
midpoints do occur in shortest-repr text of float32 integers above 2^24 (`125034260`), ~0.2 % of
random float32 bit patterns.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from fractions import Fraction

import numpy as np
import pyarrow as pa

try:
    import numba
except ImportError:  # an environment without numba still converts, through polars
    numba = None

KIND_FEATURE, KIND_INDEX, KIND_LABEL, KIND_PATH = 0, 1, 2, 3
MAX_UNCERTAIN = 256  # per chunk; more than that (not seen in real-like data) and the chunk goes to polars
UNCERTAIN_MARGIN = 8  # float64 ulps around a float32 midpoint treated as "cannot tell"
# 10^k as the float64 nearest to it (exact up to 10^22).
POWERS_OF_TEN = np.array([float(10**k) for k in range(65)], dtype=np.float64)
MAX_DECIMAL_EXPONENT = 64
# float32 normal range in float64 biased exponents: [2^-126, 2^128).
F64_EXPONENT_MIN, F64_EXPONENT_MAX = 1023 - 126, 1023 + 127
LOW_BITS = (1 << 29) - 1  # the float64 mantissa bits that a cast to float32 drops
HALF_WAY = 1 << 28

OK, NOT_HANDLED, OUT_OF_ROOM = 0, -1, -2


# ---------------------------------------------------------------- layout
@dataclass(frozen=True)
class FastLayout:
    """Per column of the file: what it holds and, for a feature, its index in the matrix."""

    kinds: np.ndarray  # int8, one per column
    slots: np.ndarray  # int32: feature index for KIND_FEATURE columns, else -1
    dim: int
    has_index: bool
    has_path: bool

    @classmethod
    def of(cls, plan: dict) -> FastLayout | None:
        """None for layouts the fast parser does not handle (a column that is not used)."""
        kinds = np.full(len(plan["names"]), -1, dtype=np.int8)
        slots = np.full(len(plan["names"]), -1, dtype=np.int32)
        for j, position in enumerate(plan["features"]):
            kinds[position], slots[position] = KIND_FEATURE, j
        kinds[plan["label"]] = KIND_LABEL
        if plan["index"] is not None:
            kinds[plan["index"]] = KIND_INDEX
        if plan["path"] is not None:
            kinds[plan["path"]] = KIND_PATH
        if (kinds < 0).any():
            return None
        return cls(kinds, slots, plan["dim"], plan["index"] is not None, plan["path"] is not None)


@dataclass
class FastChunk:
    """One parsed chunk: `matrix` is a view into a pooled buffer (give it back after writing)."""

    rows: int
    matrix: np.ndarray  # (rows, D) float32, row-major
    labels: np.ndarray  # int64
    row_ids: np.ndarray | None  # int64, the index column (None: the file has none)
    paths: pa.Array | None  # string
    buffer: np.ndarray  # the pooled buffer behind `matrix`
    settled: int = 0  # values near a float32 rounding midpoint, rounded exactly in Python


class BufferPool:
    """Flat buffers reused across chunks: a fresh 64 MB array per chunk costs a page fault per
    4 KB (glibc maps every allocation this large anew). A pool holds at most as many buffers as
    chunks are in flight at once; a buffer grows when a chunk needs more."""

    def __init__(self, dtype: type[np.generic]) -> None:
        self.dtype = dtype
        self._free: list[np.ndarray] = []
        self._lock = threading.Lock()

    def take(self, size: int) -> np.ndarray:
        with self._lock:
            buffer = self._free.pop() if self._free else None
        if buffer is None or len(buffer) < size:
            buffer = np.empty(size, dtype=self.dtype)
        return buffer

    def give(self, buffer: np.ndarray) -> None:
        with self._lock:
            self._free.append(buffer)


class MatrixPool(BufferPool):
    """Float32 buffers for the chunks' matrices, which also sizes them: counting a chunk's lines
    costs ~40 ms per 64 MB (a fifth of parsing it), so after the first chunk the row count is
    bounded from the shortest mean line length seen, with room to spare; pages beyond the rows
    written are never touched, so they take no memory."""

    def __init__(self) -> None:
        super().__init__(np.float32)
        self._shortest_row_bytes: float | None = None

    def rows_estimate(self, nbytes: int) -> int | None:
        shortest = self._shortest_row_bytes
        return None if shortest is None else int(nbytes / (0.75 * shortest)) + 16

    def saw_rows(self, nbytes: int, rows: int) -> None:
        if rows:
            with self._lock:
                mean = nbytes / rows
                self._shortest_row_bytes = min(self._shortest_row_bytes or mean, mean)


# ---------------------------------------------------------------- kernels
def _jit(func=None, *, inline: bool = False, nrt: bool = True):
    """Compile lazily (on the first call), without the GIL, cached on disk where some cache folder
    is writable (numba tries __pycache__ next to this file, then its user cache folder). Helpers
    are inlined into the chunk kernel by numba: separately compiled functions are not inlined by
    LLVM, and a call per field halved the speed (measured). `nrt=False` (numba's private `_nrt`
    flag) drops reference counting from a kernel that allocates nothing: inlined helpers that take
    the buffer otherwise cost an atomic incref/decref per field (measured: 120 against 385 MB/s)."""
    if func is None:
        return lambda f: _jit(f, inline=inline, nrt=nrt)
    if numba is None:
        return func
    options = {"nogil": True, "inline": "always"} if inline else {"nogil": True}
    if not nrt:
        options["_nrt"] = False
    try:
        return numba.njit(cache=True, **options)(func)
    except RuntimeError:  # "cannot cache function ...: no locator available": compile in memory each run
        return numba.njit(**options)(func)


if numba is not None:
    from llvmlite import ir as llvm_ir
    from numba.core import types as numba_types
    from numba.cpython.unsafe.numbers import trailing_zeros
    from numba.extending import intrinsic

    @intrinsic
    def _load_u64(typingctx, array, position):
        """The 8 bytes at array[position:position + 8] as one little-endian uint64 (an unaligned
        load; numba has no such operation, and 8 byte loads were not merged by LLVM)."""

        def codegen(context, builder, signature, args):
            data = context.make_array(signature.args[0])(context, builder, args[0]).data
            pointer = builder.bitcast(builder.gep(data, [args[1]]), llvm_ir.IntType(64).as_pointer())
            return builder.load(pointer, align=1)

        return numba_types.uint64(array, position), codegen

    @intrinsic
    def _byte(typingctx, array, position):
        """array[position] without numba's negative-index wraparound (a select on every byte)."""

        def codegen(context, builder, signature, args):
            data = context.make_array(signature.args[0])(context, builder, args[0]).data
            return builder.zext(builder.load(builder.gep(data, [args[1]])), llvm_ir.IntType(64))

        return numba_types.int64(array, position), codegen
else:  # pragma: no cover - numba absent: the fast parser is unavailable
    _load_u64 = _byte = trailing_zeros = None

ZEROS8 = np.uint64(0x3030303030303030)  # "00000000"
POWERS_OF_TEN_INT = np.array([10**k for k in range(9)], dtype=np.uint64)
MAX_DIGITS = 19  # significant digits before the exponent: the mantissa fits a uint64
QUICK_MAX_DIGITS = 18  # in the quick path: fits an int64, whose conversion to float64 is one instruction


FAST_WINDOW = 32  # bytes readable past a field's start for the branch-light path (loads of 8 bytes)
COMMAS8, NEWLINES8 = np.uint64(0x2C2C2C2C2C2C2C2C), np.uint64(0x0A0A0A0A0A0A0A0A)
ONES8, HIGH_BITS8 = np.uint64(0x0101010101010101), np.uint64(0x8080808080808080)


@_jit(inline=True)
def _digit_count(word):
    """How many of the word's bytes, from the first, are ASCII digits (0..8). A byte's high bit is
    set below iff it is not '0'..'9': above '9' (+0x46 carries into bit 7) or below '0' (-0x30
    borrows); carries and borrows only start at a non-digit, so the lowest flagged byte is exact."""
    non_digit = ((word + np.uint64(0x4646464646464646)) | (word - ZEROS8)) & HIGH_BITS8
    if non_digit == 0:
        return 8
    return np.int64(trailing_zeros(non_digit)) >> 3


@_jit(inline=True)
def _digits_value(word, count):
    """The number written by the word's first `count` bytes (digits; 0 <= count <= 8), as in
    fast_float: the digits move to the top bytes (the bytes shifted in read as leading zeros), then
    pairs, quads and octets are combined by three multiplications. The shift is split in two, as a
    shift by 64 (count 0) is undefined."""
    half = np.uint64(32 - 4 * count)
    digits = ((word - ZEROS8) << half) << half
    digits = digits * np.uint64(10) + (digits >> np.uint64(8))
    digits = ((digits & np.uint64(0x000000FF000000FF)) * np.uint64(0x000F424000000064)
              + ((digits >> np.uint64(16)) & np.uint64(0x000000FF000000FF)) * np.uint64(0x0000271000000001)) >> np.uint64(32)
    return digits & np.uint64(0xFFFFFFFF)


@_jit(inline=True)
def _separator_offset(word):
    """Offset of the word's first ',' or LF, 8 if none (the has-zero-byte test of word ^ ',' and of
    word ^ LF: exact for the lowest match, which is the only one used)."""
    commas = word ^ COMMAS8
    newlines = word ^ NEWLINES8
    found = (((commas - ONES8) & ~commas) | ((newlines - ONES8) & ~newlines)) & HIGH_BITS8
    if found == 0:
        return 8
    return np.int64(trailing_zeros(found)) >> 3


@_jit(inline=True)
def _field_end(buf, pos):
    """Position of the first ',' or LF at or after pos, looking 16 bytes ahead; -1 if none there.
    Found before the field is parsed, so the next field's work does not wait for this one's digits
    (the CPU overlaps them)."""
    first = _separator_offset(_load_u64(buf, pos))
    if first < 8:
        return pos + first
    second = _separator_offset(_load_u64(buf, pos + 8))
    return pos + 8 + second if second < 8 else -1


@_jit(inline=True)
def _quick_float(buf, pos, field_end):
    """The common number `-?D{1,7}.D{1,16}` or `-?D{1,7}` that fills exactly buf[pos:field_end]:
    (magnitude, negative, handled). Needs FAST_WINDOW readable bytes at pos."""
    negative = _byte(buf, pos) == 45
    start = pos + negative
    word = _load_u64(buf, start)
    int_digits = _digit_count(word)
    mantissa = _digits_value(word, int_digits)
    point = start + int_digits
    if int_digits == 0 or int_digits == 8:
        return 0.0, negative, False
    if point == field_end:
        return np.float64(np.int64(mantissa)), negative, True
    if _byte(buf, point) != 46:  # '.'
        return 0.0, negative, False
    word = _load_u64(buf, point + 1)
    frac_digits = _digit_count(word)
    mantissa = mantissa * POWERS_OF_TEN_INT[frac_digits] + _digits_value(word, frac_digits)
    if frac_digits == 8:  # 9 to 16 digits after the point (common: 0.0xxxxxxxx)
        word = _load_u64(buf, point + 9)
        more = _digit_count(word)
        mantissa = mantissa * POWERS_OF_TEN_INT[more] + _digits_value(word, more)
        frac_digits += more
    if frac_digits == 0 or point + 1 + frac_digits != field_end or int_digits + frac_digits > QUICK_MAX_DIGITS:
        return 0.0, negative, False
    return np.float64(np.int64(mantissa)) / POWERS_OF_TEN[frac_digits], negative, True


@_jit(inline=True)
def _digit_run(buf, pos, end):
    """(count, value) of the up to 8 ASCII digits at buf[pos:]: eight bytes at once where eight
    remain, else byte by byte."""
    if pos + 8 > end:
        count = 0
        value = np.uint64(0)
        while count < 8 and pos + count < end and 48 <= _byte(buf, pos + count) <= 57:
            value = value * np.uint64(10) + np.uint64(_byte(buf, pos + count) - 48)
            count += 1
        return count, value
    word = _load_u64(buf, pos)
    count = _digit_count(word)
    return count, _digits_value(word, count)


@_jit(inline=True)
def _digits(buf, pos, end, mantissa):
    """Append the digit run at buf[pos:] to mantissa: (position after it, mantissa, digit count)."""
    total = 0
    while True:
        count, value = _digit_run(buf, pos, end)
        mantissa = mantissa * POWERS_OF_TEN_INT[count] + value
        total += count
        pos += count
        if count < 8 or total > MAX_DIGITS:
            return pos, mantissa, total


@_jit(inline=True)
def _parse_exponent(buf, pos, end):
    """(position after `[eE][+-]?digit{1,4}`, its value, handled)."""
    pos += 1
    negative = False
    if pos < end and (_byte(buf, pos) == 43 or _byte(buf, pos) == 45):  # '+' '-'
        negative = _byte(buf, pos) == 45
        pos += 1
    value = 0
    count = 0
    while pos < end and 48 <= _byte(buf, pos) <= 57:
        value = value * 10 + (_byte(buf, pos) - 48)
        count += 1
        pos += 1
    return pos, -value if negative else value, 0 < count <= 4


@_jit(inline=True)
def _skip_zeros(buf, pos, end):
    while pos < end and _byte(buf, pos) == 48:
        pos += 1
    return pos


@_jit(inline=True)
def _parse_float(buf, pos, end):
    """Any number of the grammar: (position after it, its magnitude as float64 or nan if not
    handled, negative). Leading zeros are not significant digits. The magnitude is
    float64(mantissa) ×/÷ a power of ten (exact up to 10^22): at most ~3 float64 rounding errors,
    which the caller's midpoint check covers."""
    negative = pos < end and _byte(buf, pos) == 45  # '-'
    pos += negative
    int_start = pos
    pos = _skip_zeros(buf, pos, end)
    pos, mantissa, significant = _digits(buf, pos, end, np.uint64(0))
    if pos == int_start:
        return pos, np.nan, negative
    exponent = 0
    if pos < end and _byte(buf, pos) == 46:  # '.'
        pos += 1
        frac_start = pos
        if mantissa == 0:  # 0.000123: the zeros only move the point
            pos = _skip_zeros(buf, pos, end)
            exponent -= pos - frac_start
        before = pos
        pos, mantissa, more = _digits(buf, pos, end, mantissa)
        significant += more
        exponent -= pos - before
        if pos == frac_start:
            return pos, np.nan, negative
    if significant > MAX_DIGITS:
        return pos, np.nan, negative
    if pos < end and (_byte(buf, pos) == 101 or _byte(buf, pos) == 69):  # 'e' 'E'
        pos, written, handled = _parse_exponent(buf, pos, end)
        if not handled:
            return pos, np.nan, negative
        exponent += written
    if mantissa == 0:
        return pos, 0.0, negative
    if exponent > MAX_DECIMAL_EXPONENT or exponent < -MAX_DECIMAL_EXPONENT:
        return pos, np.nan, negative
    magnitude = np.float64(mantissa)
    if exponent >= 0:
        return pos, magnitude * POWERS_OF_TEN[exponent], negative
    return pos, magnitude / POWERS_OF_TEN[-exponent], negative


@_jit(inline=True)
def _parse_integer(buf, pos, end):
    """(position after the integer, value, handled)."""
    negative = pos < end and _byte(buf, pos) == 45
    pos += negative
    pos, value, count = _digits(buf, pos, end, np.uint64(0))
    signed = np.int64(value)
    return pos, -signed if negative else signed, 0 < count <= 18


@_jit(inline=True)
def _scan_path(buf, pos, end):
    """(position after the path, handled, saw a non-ASCII byte)."""
    start = pos
    non_ascii = False
    while pos < end:
        byte = _byte(buf, pos)
        if byte == 44 or byte == 10:  # ',' or LF ends the field
            break
        if byte < 32 or byte == 34 or byte == 127:  # control bytes (CR, tab, ...), '"', DEL
            return pos, False, non_ascii
        if byte >= 128:
            non_ascii = True
        pos += 1
    return pos, pos > start, non_ascii


@_jit(inline=True)
def _in_float32_range(value):
    """False for nan (not handled), for values a float32 holds only as a subnormal or not at all,
    and for values that round to inf; 0 is in range."""
    if value == 0.0:
        return True
    biased = np.int64((np.float64(value).view(np.uint64) >> np.uint64(52)) & np.uint64(0x7FF))
    return F64_EXPONENT_MIN <= biased <= F64_EXPONENT_MAX and not np.isinf(np.float32(value))


@_jit(inline=True)
def _near_midpoint(value):
    """Whether a float64 lies within UNCERTAIN_MARGIN ulps of a point halfway between two float32s
    (|low 29 mantissa bits - 2^28| <= margin, as one unsigned comparison), where casting it to
    float32 could round the other way than the exact decimal would."""
    low = np.float64(value).view(np.uint64) - np.uint64(HALF_WAY - UNCERTAIN_MARGIN)
    return (low & np.uint64(LOW_BITS)) <= np.uint64(2 * UNCERTAIN_MARGIN)


@_jit(nrt=False)
def _parse_chunk(buf, kinds, slots, matrix, row_ids, labels, path_bounds, uncertain):
    """Parse every line of `buf` into the outputs. Returns (status, rows, uncertain count, non-ASCII
    paths seen); status NOT_HANDLED means the chunk is outside the grammar (outputs are garbage)."""
    end = len(buf)
    columns = len(kinds)
    pos = 0
    row = 0
    n_uncertain = 0
    non_ascii = False
    capacity = matrix.shape[0]
    while pos < end:
        if row >= capacity:
            return OUT_OF_ROOM, row, n_uncertain, non_ascii
        for column in range(columns):
            kind = kinds[column]
            start = pos
            if kind == KIND_FEATURE:
                handled = False
                if pos + FAST_WINDOW <= end:
                    field_end = _field_end(buf, pos)
                    if field_end > pos:
                        value, negative, handled = _quick_float(buf, pos, field_end)
                if handled:
                    # |value| is 0 or in [1e-16, 1e7): a normal float32 whatever the rounding
                    pos = field_end
                else:  # anything else the grammar allows (exponents, long numbers), or not handled
                    pos, value, negative = _parse_float(buf, pos, end)
                    if not _in_float32_range(value):
                        return NOT_HANDLED, row, n_uncertain, non_ascii
                if _near_midpoint(value):
                    if n_uncertain >= uncertain.shape[0]:
                        return NOT_HANDLED, row, n_uncertain, non_ascii
                    uncertain[n_uncertain, 0] = row
                    uncertain[n_uncertain, 1] = slots[column]
                    uncertain[n_uncertain, 2] = start
                    uncertain[n_uncertain, 3] = pos
                    n_uncertain += 1
                # the sign after rounding or before is the same: round-to-nearest-even is symmetric
                matrix[row, slots[column]] = np.float32(-value if negative else value)
            elif kind == KIND_PATH:
                pos, handled, high = _scan_path(buf, pos, end)
                if not handled:
                    return NOT_HANDLED, row, n_uncertain, non_ascii
                non_ascii = non_ascii or high
                path_bounds[row, 0] = start
                path_bounds[row, 1] = pos
            else:
                pos, number, handled = _parse_integer(buf, pos, end)
                if not handled:
                    return NOT_HANDLED, row, n_uncertain, non_ascii
                if kind == KIND_LABEL:
                    labels[row] = number
                else:
                    row_ids[row] = number
            # the field must end exactly here: ',' between fields, LF (or the chunk's end) after the last
            if column < columns - 1:
                if pos >= end or _byte(buf, pos) != 44:
                    return NOT_HANDLED, row, n_uncertain, non_ascii
            elif pos < end and _byte(buf, pos) != 10:
                return NOT_HANDLED, row, n_uncertain, non_ascii
            pos += 1
        row += 1
    return OK, row, n_uncertain, non_ascii


@_jit
def _count_newlines(buf):
    count = 0
    for byte in buf:
        count += byte == 10
    return count


@_jit
def _gather_paths(buf, path_bounds, rows):
    """Arrow string layout: the paths' bytes back to back and int64 offsets."""
    offsets = np.empty(rows + 1, dtype=np.int64)
    offsets[0] = 0
    for row in range(rows):
        offsets[row + 1] = offsets[row] + path_bounds[row, 1] - path_bounds[row, 0]
    values = np.empty(offsets[rows], dtype=np.uint8)
    for row in range(rows):
        start = path_bounds[row, 0]
        values[offsets[row] : offsets[row + 1]] = buf[start : path_bounds[row, 1]]
    return values, offsets


def available() -> bool:
    return numba is not None


# ---------------------------------------------------------------- the chunk
def parse(data: bytes | np.ndarray, layout: FastLayout, pool: MatrixPool) -> FastChunk | None:
    """The chunk (bytes, or a uint8 array) parsed, or None when it is outside the strict grammar
    (the caller asks polars)."""
    buf = _read_only(data)
    if not len(buf):
        return None
    estimate = pool.rows_estimate(len(buf))
    parsed = _parse_rows(buf, layout, pool, estimate or _line_count(buf))
    if parsed is OUT_OF_ROOM:  # shorter lines than any chunk before: count them
        parsed = _parse_rows(buf, layout, pool, _line_count(buf))
    if parsed is OUT_OF_ROOM or parsed is None:
        return None
    pool.saw_rows(len(buf), parsed.rows)
    return parsed


def _read_only(data: bytes | np.ndarray) -> np.ndarray:
    """A read-only uint8 view: bytes and pooled arrays then have one numba type, so the kernels
    are compiled (~5 s on a machine's first run) and cached once, not once per type."""
    if isinstance(data, bytes):
        return np.frombuffer(data, dtype=np.uint8)
    view = data.view()
    view.flags.writeable = False
    return view


def _line_count(buf: np.ndarray) -> int:
    return _count_newlines(buf) + (0 if buf[-1] == 10 else 1)


def _parse_rows(buf: np.ndarray, layout: FastLayout, pool: MatrixPool, capacity: int) -> FastChunk | int | None:
    """The chunk parsed with room for `capacity` rows; OUT_OF_ROOM if it has more; None if it is
    outside the grammar."""
    buffer = pool.take(capacity * layout.dim)
    matrix = buffer[: capacity * layout.dim].reshape(capacity, layout.dim)
    labels = np.empty(capacity, dtype=np.int64)
    row_ids = np.empty(capacity if layout.has_index else 0, dtype=np.int64)
    path_bounds = np.empty((capacity if layout.has_path else 0, 2), dtype=np.int64)
    uncertain = np.empty((MAX_UNCERTAIN, 4), dtype=np.int64)
    status, rows, n_uncertain, non_ascii = _parse_chunk(buf, layout.kinds, layout.slots, matrix, row_ids, labels,
                                                        path_bounds, uncertain)
    matrix = matrix[:rows]
    if status != OK or not _settle_uncertain(buf, matrix, uncertain[:n_uncertain]):
        pool.give(buffer)
        return OUT_OF_ROOM if status == OUT_OF_ROOM else None
    paths = _path_array(buf, path_bounds, rows, non_ascii) if layout.has_path else None
    if layout.has_path and paths is None:
        pool.give(buffer)
        return None
    return FastChunk(rows, matrix, labels[:rows], row_ids[:rows] if layout.has_index else None, paths, buffer,
                     settled=n_uncertain)


def _path_array(buf: np.ndarray, path_bounds: np.ndarray, rows: int, non_ascii: bool) -> pa.Array | None:
    """The path column as an Arrow string array over gathered bytes; None if a path is not UTF-8."""
    values, offsets = _gather_paths(buf, path_bounds, rows)
    if offsets[-1] >= 1 << 31:
        return None  # beyond 32-bit string offsets: polars' path handles it
    array = pa.Array.from_buffers(pa.string(), rows,
                                  [None, pa.py_buffer(offsets.astype(np.int32)), pa.py_buffer(values)])
    if non_ascii:
        try:
            array.validate(full=True)  # checks UTF-8
        except pa.ArrowInvalid:
            return None
    return array


# ---------------------------------------------------------------- exact rounding
def _settle_uncertain(buf: np.ndarray, matrix: np.ndarray, uncertain: np.ndarray) -> bool:
    """Redo values near a float32 rounding midpoint exactly; False if one cannot be settled."""
    for row, column, start, end in uncertain.tolist():
        exact = exact_float32(buf[start:end].tobytes(), matrix[row, column])
        if exact is None:
            return False
        matrix[row, column] = exact
    return True


def exact_float32(text: bytes, estimate: np.float32) -> np.float32 | None:
    """The float32 nearest to the decimal `text` (ties to even), searched next to `estimate`,
    which is at most one float32 step off; None if that neighbourhood reaches inf or the text is
    beyond Fraction (more than Python's 4,300 digits in its integer part, e.g. leading zeros)."""
    try:
        target = Fraction(text.decode("ascii"))
    except ValueError:  # the int-from-text limit: polars reads it (the caller hands the chunk over)
        return None
    estimate = np.float32(estimate)
    with np.errstate(over="ignore"):  # next to float32's largest value: inf, refused below, not a log warning
        candidates = [np.nextafter(estimate, np.float32(-np.inf)), estimate,
                      np.nextafter(estimate, np.float32(np.inf))]
    if not all(np.isfinite(c) for c in candidates):
        return None

    def distance_then_odd(candidate: np.float32) -> tuple[Fraction, int]:
        return abs(Fraction(float(candidate)) - target), int(candidate.view(np.uint32)) & 1

    return min(candidates, key=distance_then_odd)
