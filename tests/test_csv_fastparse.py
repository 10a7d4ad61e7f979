"""The strict numba CSV parser (scripts/lib/csvread/fastparse.py): every value bit-identical to polars'
Float32 parse, every input outside its grammar handed to polars (same result, same error), and
shards identical to the polars path's, byte for byte."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest
from test_bad_input import corrupt, set_field

from scripts.data import convert
from scripts.data.convert import convert_file
from scripts.lib.csvread import fastparse
from scripts.lib.featio.errors import FeatgapError
from scripts.lib.featio.shards import list_shards

pytestmark = pytest.mark.skipif(not fastparse.available(), reason="numba is not installed")

DIM = 8
PLAN = {"names": ["", "path", "label"] + [str(i) for i in range(DIM)], "index": 0, "path": 1, "label": 2,
        "features": list(range(3, 3 + DIM)), "dim": DIM}
LAYOUT = fastparse.FastLayout.of(PLAN)


def lines_of(values: list[str]) -> bytes:
    """Rows of DIM values each, in the real layout (index, path, label, features)."""
    values = values + ["0"] * (-len(values) % DIM)
    rows = [f"{r},val/n01/{r}.JPEG,{r % 7}," + ",".join(values[r * DIM : (r + 1) * DIM])
            for r in range(len(values) // DIM)]
    return ("\n".join(rows) + "\n").encode()


def polars_matrix(data: bytes) -> np.ndarray:
    schema = {f"c{i}": pl.Int64 if i in (0, 2) else pl.String if i == 1 else pl.Float32 for i in range(3 + DIM)}
    return pl.read_csv(data, has_header=False, schema=schema)[:, 3:].to_numpy()


def fast(data: bytes) -> fastparse.FastChunk | None:
    return fastparse.parse(data, LAYOUT, fastparse.MatrixPool())


def assert_bit_equal(values: list[str]) -> fastparse.FastChunk:
    data = lines_of(values)
    chunk = fast(data)
    assert chunk is not None, "the fast parser handed this to polars"
    expected = polars_matrix(data)
    differ = np.flatnonzero(chunk.matrix.view(np.uint32).ravel() != expected.view(np.uint32).ravel())
    assert not len(differ), [(values[i], chunk.matrix.ravel()[i], expected.ravel()[i]) for i in differ[:5]]
    return chunk


# ---------------------------------------------------------------- bit equality with polars
RNG_SEED = 20240615


def shortest_float32(rng: np.random.Generator, n: int) -> list[str]:
    """As the real files and generate_demo write them: polars' shortest float32 repr."""
    x = (rng.standard_normal(n) * 10.0 ** rng.integers(-6, 6, n)).astype(np.float32)
    buffer = pl.DataFrame({"x": x}).write_csv(include_header=False)
    return buffer.split()


def any_float32(rng: np.random.Generator, n: int) -> list[str]:
    """Every normal float32 magnitude, positional and scientific, shortest digits."""
    bits = rng.integers(0x00800000, 0x7F7FFFFF, n, dtype=np.uint32) | (rng.integers(0, 2, n, dtype=np.uint32) << 31)
    out = []
    for v in bits.view(np.float32):
        if 1e-12 < abs(v) < 1e12:
            out.append(np.format_float_positional(v, unique=True, trim="-"))
        else:
            out.append(np.format_float_scientific(v, unique=True, trim="-"))
    return out


def float64_17_digits(rng: np.random.Generator, n: int) -> list[str]:
    x = rng.standard_normal(n) * 10.0 ** rng.integers(-30, 30, n)
    return [f"{v:.17g}" for v in x]


def nineteen_digits(rng: np.random.Generator, n: int) -> list[str]:
    return [f"{rng.integers(0, 10**9)}.{rng.integers(0, 10**10):010d}" for _ in range(n)]


def near_midpoints(rng: np.random.Generator, n: int) -> list[str]:
    """Decimals within ~1e-17 of a point halfway between two float32s: a cast of the float64
    nearest to them can round the wrong way, so these go through the exact rounding."""
    f = (rng.standard_normal(n) * 10.0 ** rng.integers(-5, 5, n)).astype(np.float32)
    up = np.nextafter(f, np.float32(np.inf))
    return [f"{(a + b) / 2:.17e}" for a, b in zip(f.astype(np.float64), up.astype(np.float64))]


@pytest.mark.parametrize("make", [shortest_float32, any_float32, float64_17_digits, nineteen_digits])
def test_random_values_are_bit_identical_to_polars(make):
    rng = np.random.default_rng(RNG_SEED)
    assert_bit_equal(make(rng, 40_000))


def test_values_near_a_float32_midpoint_are_rounded_exactly():
    rng = np.random.default_rng(RNG_SEED)
    for _ in range(5):  # at most MAX_UNCERTAIN per chunk: several small chunks
        chunk = assert_bit_equal(near_midpoints(rng, 200))
        assert chunk.settled > 100  # the exact path really ran


@pytest.mark.parametrize("text", [
    "1.0000000596046448",   # the float64 nearest to it is just above the midpoint of 1 and 1+2^-23
    "1.0000000596046447",   # just below
    "1.00000005960464478",  # 18 digits
    "0.99999997019767761",  # under 1: half the spacing
    "16777217",             # an integer halfway between two float32s: ties to even
    "16777219",
    "3.4028235e38", "-3.4028234663852886e38",  # float32 max
    "1.1754944e-38", "1.17549436e-38",  # the smallest normal float32
    "1e5", "1E-5", "1.5e+10", "-2.5e-30", "7e0", "0e999", "12345678.5", "0.000000000027893769",
    "00.5", "007", "-0.00001", "123456789012345678", "9999999999999999999",
])
def test_crafted_values_are_bit_identical_or_handed_to_polars(text):
    data = lines_of([text])
    chunk = fast(data)
    if chunk is not None:  # a value beyond the fast path's range may go to polars, never differ
        assert chunk.matrix.view(np.uint32)[0, 0] == polars_matrix(data).view(np.uint32)[0, 0], text


def test_a_decimal_beyond_19_digits_just_above_a_midpoint_goes_to_polars():
    data = lines_of(["1.00000005960464477539062500000000001"])  # polars: 1+2^-23, a float64 cast: 1.0
    assert fast(data) is None
    assert polars_matrix(data)[0, 0] == np.nextafter(np.float32(1), np.float32(2))


@pytest.mark.parametrize("text", ["-0", "-0.0", "-0e5", "-0.000", "-00"])
def test_negative_zero(text):
    chunk = assert_bit_equal([text])
    assert chunk.matrix.view(np.uint32)[0, 0] == 0x80000000


def test_labels_index_and_paths_match_polars():
    data = lines_of(["1.5"] * DIM * 50).replace(b"val/n01/3.JPEG", "val/caf\u00e9 \u4e2d/3.JPEG".encode())
    chunk = fast(data)
    frame = pl.read_csv(data, has_header=False, new_columns=PLAN["names"],
                        schema_overrides={"": pl.Int64, "path": pl.String, "label": pl.Int64})
    assert chunk is not None and chunk.rows == frame.height == 50
    assert np.array_equal(chunk.row_ids, frame[""].to_numpy())
    assert np.array_equal(chunk.labels, frame["label"].to_numpy())
    assert chunk.paths.to_pylist() == frame["path"].to_list()
    assert chunk.paths.to_pylist()[3] == "val/caf\u00e9 \u4e2d/3.JPEG"


def test_last_line_without_newline_and_long_chunks():
    rng = np.random.default_rng(RNG_SEED)
    data = lines_of(shortest_float32(rng, DIM * 3000)).rstrip(b"\n")
    chunk = fast(data)
    assert chunk is not None and chunk.rows == 3000
    assert np.array_equal(chunk.matrix.view(np.uint32), polars_matrix(data).view(np.uint32))


def test_more_rows_than_estimated_are_counted_and_parsed():
    pool = fastparse.MatrixPool()
    long_rows = lines_of(["-0.123456789e-3"] * DIM * 20)
    short_rows = lines_of(["1"] * DIM * 400)
    assert fastparse.parse(long_rows, LAYOUT, pool).rows == 20
    assert pool.rows_estimate(len(short_rows)) < 400  # so the kernel runs out of room, then counts
    chunk = fastparse.parse(short_rows, LAYOUT, pool)
    assert chunk is not None and chunk.rows == 400 and (chunk.matrix == 1).all()


# ---------------------------------------------------------------- outside the grammar: polars decides
def edit_value(text: str) -> bytes:
    lines = lines_of(["0.25"] * DIM * 4).decode().split("\n")
    fields = lines[2].split(",")
    fields[3 + 5] = text
    lines[2] = ",".join(fields)
    return "\n".join(lines).encode()


@pytest.mark.parametrize("text", [
    " 1.5", "1.5 ", "+1.5", "1.", ".5", "-.5", "nan", "NaN", "inf", "-inf", "1_000", "0x10", "1,5", "",
    "1e39", "-1e39", "3.40282357e38", "1e-40", "1e-46", "1e00001", "1e", "1e+", "--1", "1.5.5", "\u0663",
    "12345678901234567890", "0.12345678901234567890", '"1.5"', "1.5\r", "\ufeff1.5",
])
def test_feature_text_outside_the_grammar_goes_to_polars(text):
    assert fast(edit_value(text)) is None


@pytest.mark.parametrize("line", [
    b"2,val/a.JPEG,+3," + b",".join([b"1"] * DIM),       # label with a sign
    b"2,val/a.JPEG,3.0," + b",".join([b"1"] * DIM),      # label that is not an integer
    b"2,val/a.JPEG,1234567890123456789," + b",".join([b"1"] * DIM),  # 19 digits
    b"2,," + b"3," + b",".join([b"1"] * DIM),            # empty path
    b'2,"val/a.JPEG",3,' + b",".join([b"1"] * DIM),      # quoted path
    b"2,val/a\t.JPEG,3," + b",".join([b"1"] * DIM),      # control byte in a path
    b"2,val/caf\xe9.JPEG,3," + b",".join([b"1"] * DIM),  # not UTF-8
    b"2,val/a.JPEG,3," + b",".join([b"1"] * (DIM + 1)),  # ragged: one field too many
    b"2,val/a.JPEG,3," + b",".join([b"1"] * (DIM - 1)),  # one too few
    b"",                                                  # an empty line inside the data
    b"2,val/a.JPEG,3," + b",".join([b"1"] * DIM) + b"\r",  # CRLF
])
def test_rows_outside_the_grammar_go_to_polars(line):
    good = lines_of(["0.5"] * DIM * 3)
    assert fast(good) is not None
    assert fast(good + line + b"\n" + good) is None


def test_unusual_layouts_are_left_to_polars():
    assert fastparse.FastLayout.of({**PLAN, "names": PLAN["names"] + ["extra"]}) is None


# ---------------------------------------------------------------- whole conversions: fast == polars
def convert_with(csv: Path, out: Path, fast_parse: bool, monkeypatch, **options) -> dict:
    monkeypatch.setattr(convert, "FAST_PARSE", fast_parse)
    return convert_file(csv, out, out.with_name(out.name + ".manifest.json"), num_classes=12, dim=32, **options)


@pytest.fixture
def fast_chunks_parsed(monkeypatch) -> list[int]:
    """Rows of each chunk the fast parser handled (so a test sees that it ran)."""
    seen: list[int] = []
    real_parse = fastparse.parse

    def counting(*args, **kwargs):
        chunk = real_parse(*args, **kwargs)
        if chunk is not None:
            seen.append(chunk.rows)
        return chunk

    monkeypatch.setattr(fastparse, "parse", counting)
    return seen


@pytest.mark.parametrize("options", [{"parts": 1}, {"parts": 3, "chunk_mb": 1, "row_group_rows": 100}])
@pytest.mark.parametrize("split", ["train", "test2"])
def test_shards_are_byte_identical_to_the_polars_path(tiny_csv, tmp_path, monkeypatch, fast_chunks_parsed, split,
                                                      options):
    polars_manifest = convert_with(tiny_csv[split], tmp_path / "polars", False, monkeypatch, **options)
    assert not fast_chunks_parsed
    fast_manifest = convert_with(tiny_csv[split], tmp_path / "fast", True, monkeypatch, **options)
    assert sum(fast_chunks_parsed) == fast_manifest["rows"] == polars_manifest["rows"]  # every row went fast
    polars_shards, fast_shards = list_shards(tmp_path / "polars.manifest.json"), list_shards(tmp_path / "fast.manifest.json")
    assert len(fast_shards) == len(polars_shards) == options["parts"]
    for a, b in zip(polars_shards, fast_shards):
        assert a.read_bytes() == b.read_bytes()


def test_many_chunks_in_flight_reuse_buffers_without_mixing_them(tiny_csv, tmp_path, monkeypatch,
                                                                 fast_chunks_parsed):
    """~4 MB in 1 MB chunks: parse buffers and matrices are reused while earlier chunks are still
    being written; any mix-up would show in the bytes."""
    lines = tiny_csv["train"].read_text().splitlines(keepends=True)
    csv = tmp_path / "big.csv"
    csv.write_text(lines[0] + "".join(lines[1:]) * 20)
    convert_with(csv, tmp_path / "polars", False, monkeypatch, chunk_mb=1, row_group_rows=1000)
    convert_with(csv, tmp_path / "fast", True, monkeypatch, chunk_mb=1, row_group_rows=1000)
    assert len(fast_chunks_parsed) >= 4
    for a, b in zip(list_shards(tmp_path / "polars.manifest.json"), list_shards(tmp_path / "fast.manifest.json")):
        assert a.read_bytes() == b.read_bytes()


def test_a_file_without_path_or_index_column_converts_alike(tiny_csv, tmp_path, monkeypatch, fast_chunks_parsed):
    csv = tmp_path / "bare.csv"
    pl.read_csv(tiny_csv["test1"]).drop(["", "path"]).write_csv(csv)
    options = {"parts": 2, "columns": {"index": None, "path": None}}
    convert_with(csv, tmp_path / "polars", False, monkeypatch, **options)
    convert_with(csv, tmp_path / "fast", True, monkeypatch, **options)
    assert fast_chunks_parsed
    for a, b in zip(list_shards(tmp_path / "polars.manifest.json"), list_shards(tmp_path / "fast.manifest.json")):
        assert a.read_bytes() == b.read_bytes()


def run_part(csv: Path, out: Path) -> convert.PartConverter:
    converter = convert.PartConverter(convert.plan(csv, 1, dim=32), 12)
    converter.run(0, out, row_group_rows=8192, compression="none", chunk_mb=1)
    return converter


def test_small_parts_use_polars_by_default(tiny_csv, tmp_path, monkeypatch, fast_chunks_parsed):
    monkeypatch.setattr(convert, "FAST_PARSE", None)  # the default: by part size
    assert run_part(tiny_csv["test2"], tmp_path / "a.parquet").fast_layout is None
    assert not fast_chunks_parsed


def test_large_parts_use_the_fast_parser_by_default(tiny_csv, tmp_path, monkeypatch, fast_chunks_parsed):
    monkeypatch.setattr(convert, "FAST_PARSE", None)
    monkeypatch.setattr(convert, "FAST_PARSE_MIN_BYTES", 1)
    assert run_part(tiny_csv["test2"], tmp_path / "fast.parquet").fast_layout is not None
    assert fast_chunks_parsed
    monkeypatch.setattr(convert, "FAST_PARSE", False)
    run_part(tiny_csv["test2"], tmp_path / "polars.parquet")
    assert (tmp_path / "fast.parquet").read_bytes() == (tmp_path / "polars.parquet").read_bytes()


@pytest.mark.parametrize("line_no,position,value", [
    (150, 3 + 7, "abc"), (201, 3 + 31, "nan"), (201, 3 + 31, "-inf"), (150, 3 + 9, "1e39"), (120, 3 + 4, "1.5 "),
    (120, 3 + 4, "1_000"), (33, 2, "12"), (33, 2, "-1"), (34, 2, "3.5"), (12, 3 + 2, ""), (120, 1, ""),
    (120, 1, '""'), (120, 3 + 4, '1.5"'), (77, 3 + 4, "0.1\r"), (77, 1, "val/img\r0.JPEG"),
])
def test_bad_input_gives_the_same_error_either_way(tiny_csv, tmp_path, monkeypatch, line_no, position, value):
    csv = corrupt(tiny_csv, tmp_path, line_no, set_field(position, value))
    messages = []
    for fast_parse in (False, True):
        with pytest.raises(FeatgapError) as caught:
            convert_with(csv, tmp_path / f"out{fast_parse}", fast_parse, monkeypatch, parts=2, chunk_mb=1)
        messages.append(str(caught.value))
    assert messages[0] == messages[1]
    assert f"line {line_no}" in messages[1]


def test_quoted_and_crlf_files_convert_alike_through_polars(tiny_csv, tmp_path, monkeypatch, fast_chunks_parsed):
    crlf = tmp_path / "crlf.csv"
    crlf.write_bytes(tiny_csv["test1"].read_bytes().replace(b"\n", b"\r\n"))
    convert_with(crlf, tmp_path / "polars", False, monkeypatch, parts=2)
    convert_with(crlf, tmp_path / "fast", True, monkeypatch, parts=2)
    assert not fast_chunks_parsed  # every chunk fell back
    for a, b in zip(list_shards(tmp_path / "polars.manifest.json"), list_shards(tmp_path / "fast.manifest.json")):
        assert a.read_bytes() == b.read_bytes()


def test_gzip_streams_use_the_fast_parser_too(tiny_csv, tmp_path, monkeypatch, fast_chunks_parsed):
    import gzip

    gz = tmp_path / "test1.csv.gz"
    gz.write_bytes(gzip.compress(tiny_csv["test1"].read_bytes() + b"\n\n"))
    convert_with(tiny_csv["test1"], tmp_path / "plain", False, monkeypatch, chunk_mb=1)
    convert_with(gz, tmp_path / "gz", True, monkeypatch, chunk_mb=1)
    assert fast_chunks_parsed
    for a, b in zip(list_shards(tmp_path / "plain.manifest.json"), list_shards(tmp_path / "gz.manifest.json")):
        assert a.read_bytes() == b.read_bytes()


# ---------------------------------------------------------------- the compiled code's cache
def test_kernels_compile_without_a_writable_cache_folder(monkeypatch):
    """With no folder to cache in (numba finds none writable), _jit compiles in memory instead of
    failing at import."""
    import numba
    from numba.core import caching

    monkeypatch.setattr(caching.CacheImpl, "_locator_classes", [])
    with pytest.raises(RuntimeError, match="no locator available"):
        numba.njit(cache=True)(lambda x: x + 1)

    def add_one(x):
        return x + 1

    assert fastparse._jit(add_one)(41) == 42


def test_leading_zeros_beyond_pythons_integer_limit_go_to_polars():
    """> 4,300 leading zeros before a value near a float32 midpoint: the exact redo cannot take it
    (Python's int-from-text limit), so the chunk goes to polars, which reads it, never a traceback."""
    data = lines_of(["0" * 4400 + "1.0000000596046448"])
    chunk = fast(data)
    expected = polars_matrix(data)
    assert expected[0, 0] == np.nextafter(np.float32(1), np.float32(2))
    assert chunk is None or chunk.matrix.view(np.uint32)[0, 0] == expected.view(np.uint32)[0, 0]


@pytest.mark.parametrize("text", ["3.4028235e38", "-3.4028235e38", "3.4028234663852886e38"])
def test_the_overflow_boundary_redo_is_quiet(text):
    """At float32's largest value the exact redo's neighbour is inf: no numpy RuntimeWarning in the log."""
    import warnings

    data = lines_of([text])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        chunk = fast(data)
        assert fastparse.exact_float32(text.encode(), np.float32(text)) in (None, np.float32(text))
    if chunk is not None:
        assert chunk.matrix.view(np.uint32)[0, 0] == polars_matrix(data).view(np.uint32)[0, 0]
