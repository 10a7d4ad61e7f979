"""Issue 10, items 3, 4, 5 and 10: ambiguous headers, file formats, and parse errors that name the
line and column. Every refusal is one FeatgapError line (the CLI prints it without a traceback)."""
import gzip

import numpy as np
import pytest
from test_bad_input import corrupt, expect_failure, set_field

from scripts.data.convert import convert_file
from scripts.data.convert import main as convert_main
from scripts.lib.featio.cli import run_cli
from scripts.lib.featio.reader import read_split


def converted(csv, tmp_path, name="ok", **kwargs):
    convert_file(csv, tmp_path / name, tmp_path / f"{name}.manifest.json", num_classes=12, dim=32,
                 chunk_mb=1, **kwargs)
    return read_split(tmp_path / f"{name}.manifest.json")


def with_header(tiny_csv, tmp_path, header):
    lines = tiny_csv["test1"].read_text().splitlines(keepends=True)
    path = tmp_path / "bad.csv"
    path.write_text(header + "\n" + "".join(lines[1:]))
    return path


# ---------------------------------------------------------------- item 3: headers
def test_duplicate_trailing_label_column_is_refused(tiny_csv, tmp_path):
    lines = tiny_csv["test1"].read_text().splitlines()
    csv = tmp_path / "bad.csv"
    csv.write_text("\n".join([lines[0] + ",label"] + [line + ",0" for line in lines[1:]]) + "\n")
    expect_failure(csv, tmp_path, "line 1", "duplicate column name 'label'", "columns 3, 36")


def test_second_feature_zero_column_is_refused(tiny_csv, tmp_path):
    csv = corrupt(tiny_csv, tmp_path, 1, set_field(3 + 31, "0"))
    expect_failure(csv, tmp_path, "line 1", "duplicate column name '0'", "columns 4, 35")


def test_extra_unnamed_column_is_refused(tiny_csv, tmp_path):
    lines = tiny_csv["test1"].read_text().splitlines()
    csv = tmp_path / "bad.csv"
    csv.write_text("\n".join([","+ lines[0]] + [f"{i}," + line for i, line in enumerate(lines[1:])]) + "\n")
    expect_failure(csv, tmp_path, "line 1", "duplicate column name ''", "columns 1, 2")


def test_configured_column_with_other_case_is_refused_naming_both(tiny_csv, tmp_path):
    csv = corrupt(tiny_csv, tmp_path, 1, set_field(1, "Path"))
    expect_failure(csv, tmp_path, "line 1", "missing column 'path'", "found 'Path'", "columns.path")


def test_missing_index_column_is_refused_with_the_setting_to_change(tiny_csv, tmp_path):
    csv = corrupt(tiny_csv, tmp_path, 1, set_field(0, "id"))
    expect_failure(csv, tmp_path, "line 1", "missing column ''", "columns.index: null")


def test_header_name_with_a_unicode_digit_is_refused(tiny_csv, tmp_path):
    csv = corrupt(tiny_csv, tmp_path, 1, set_field(3 + 2, "²"))
    expect_failure(csv, tmp_path, "line 1", "column 6", "unexpected column '²'")


# ---------------------------------------------------------------- item 4: formats
def test_gzip_is_streamed_and_equals_the_plain_file(tiny_csv, tmp_path):
    gz = tmp_path / "test1.csv.gz"
    gz.write_bytes(gzip.compress(tiny_csv["test1"].read_bytes() + b"\n\n"))  # trailing blank lines too
    plain, packed = converted(tiny_csv["test1"], tmp_path, "plain"), converted(gz, tmp_path, "gz")
    assert np.array_equal(plain.features.view(np.uint32), packed.features.view(np.uint32))
    assert list(plain.path) == list(packed.path) and np.array_equal(plain.row, packed.row)


def test_gzip_errors_name_the_line_and_parts_are_refused(tiny_csv, tmp_path):
    bad = corrupt(tiny_csv, tmp_path, 77, set_field(3, "oops"))
    gz = tmp_path / "bad.csv.gz"
    gz.write_bytes(gzip.compress(bad.read_bytes()))
    expect_failure(gz, tmp_path, "line 77, column '0'", "'oops'", parts=1)
    expect_failure(gz, tmp_path, "gzip stream cannot be cut", "convert.parts", parts=2)


def test_truncated_gzip_is_one_line(tiny_csv, tmp_path):
    gz = tmp_path / "cut.csv.gz"
    gz.write_bytes(gzip.compress(tiny_csv["test1"].read_bytes())[:-200])
    expect_failure(gz, tmp_path, "corrupt or truncated gzip", parts=1)


def test_other_compressions_utf16_and_cr_only_are_refused(tiny_csv, tmp_path):
    text = tiny_csv["test1"].read_text()
    cases = {
        "utf16.csv": (text.encode("utf-16"), "UTF-16"),
        "mac.csv": (text.replace("\n", "\r").encode(), "CR only"),
        "z.csv.zst": (b"\x28\xb5\x2f\xfd" + b"\0" * 20, "zstd-compressed"),
    }
    for name, (data, fragment) in cases.items():
        csv = tmp_path / name
        csv.write_bytes(data)
        expect_failure(csv, tmp_path, fragment)


def test_crlf_line_ends_are_supported(tiny_csv, tmp_path):
    crlf = tmp_path / "crlf.csv"
    crlf.write_bytes(tiny_csv["test1"].read_bytes().replace(b"\n", b"\r\n"))
    a, b = converted(tiny_csv["test1"], tmp_path, "a"), converted(crlf, tmp_path, "b", parts=3)
    assert np.array_equal(a.features, b.features) and list(a.path) == list(b.path)


@pytest.mark.parametrize("header_bytes,fragment", [
    (lambda h: h.encode("utf-16"), "UTF-16"),
    (lambda h: h.replace(",1,", ",²,").encode() + b"\r1,x\r", "CR only"),
    (lambda h: h.replace(",1,", ",²,").encode() + b"\n", "unexpected column '²'"),
    (lambda h: h.replace("path", "p\xe4th").encode("latin-1") + b"\n", "byte 0xe4 is not UTF-8"),
])
def test_plan_cli_is_one_line_for_header_problems(tiny_csv, tmp_path, capsys, header_bytes, fragment):
    csv = tmp_path / "h.csv"
    csv.write_bytes(header_bytes(tiny_csv["test1"].read_text().splitlines()[0]) + b"1,2\n")
    with pytest.raises(SystemExit) as caught:
        run_cli(convert_main, ["plan", "--csv", str(csv), "--out", str(tmp_path / "p.json"), "--dim", "32"])
    err = capsys.readouterr().err
    assert caught.value.code == 1 and len(err.strip().splitlines()) == 1, err
    assert err.startswith(f"featgap error: {csv}: ") and fragment in err, err


# ---------------------------------------------------------------- item 4: values name line and column
@pytest.mark.parametrize("position,value,fragments", [
    (1, "", ["column 'path'", "empty value, expected an image path"]),
    (1, '""', ["column 'path'", "empty value, expected an image path"]),
    (3 + 4, "1.5 ", ["column '4'", "'1.5 '", "expected a number"]),
    (3 + 4, "1_000", ["column '4'", "'1_000'"]),
    (3 + 4, "\u0663", ["column '4'", "'\u0663'"]),
    (3 + 4, '1.5"', ["column '4'", "does not close"]),
    (1, 'val/x"y', ["column 'path'", "does not close"]),
    (2, "\uff13", ["column 'label'", "expected an integer"]),
])
def test_bad_values_name_line_and_column(tiny_csv, tmp_path, position, value, fragments):
    csv = corrupt(tiny_csv, tmp_path, 120, set_field(position, value))
    expect_failure(csv, tmp_path, "line 120", *fragments)


def test_latin1_byte_names_line_and_column(tiny_csv, tmp_path):
    lines = tiny_csv["test1"].read_bytes().split(b"\n")
    fields = lines[88].split(b",")
    fields[1] = b"val/caf\xe9.JPEG"
    lines[88] = b",".join(fields)
    csv = tmp_path / "latin1.csv"
    csv.write_bytes(b"\n".join(lines))
    expect_failure(csv, tmp_path, "line 89, column 'path'", "byte 0xe9 is not UTF-8")


@pytest.mark.parametrize("position,value,column", [
    (3 + 4, "0.1\r", "'4'"),         # polars read this as 0.1
    (3 + 4, "1\r1", "'4'"),
    (1, "val/img\r0.JPEG", "'path'"),  # polars kept the CR in the path
])
@pytest.mark.parametrize("crlf", [False, True])
def test_carriage_return_inside_a_line_names_line_and_column(tiny_csv, tmp_path, position, value, column, crlf):
    csv = corrupt(tiny_csv, tmp_path, 77, set_field(position, value))
    if crlf:  # CRLF line ends are supported; a lone CR inside a line still is not
        csv.write_bytes(csv.read_bytes().replace(b"\n", b"\r\n"))
    expect_failure(csv, tmp_path, f"line 77, column {column}", "carriage return (CR) inside the line")


def test_float32_overflow_is_named_as_such(tiny_csv, tmp_path):
    csv = corrupt(tiny_csv, tmp_path, 150, set_field(3 + 9, "1e39"))
    expect_failure(csv, tmp_path, "line 150", "column '9'", "'1e39' is outside the float32 range")


# ---------------------------------------------------------------- item 5: quoted newlines
def test_quoted_newline_is_refused_at_its_line_whatever_the_parts(tiny_csv, tmp_path):
    csv = corrupt(tiny_csv, tmp_path, 150, lambda f: ",".join([f[0], '"val/a\nb.JPEG"', *f[2:]]))
    for parts in (1, 3, 7):
        expect_failure(csv, tmp_path, "line 150, column 'path'", "newline inside a quoted field", parts=parts)


def test_quoted_fields_without_newlines_convert_with_any_parts(tiny_csv, tmp_path):
    lines = tiny_csv["test1"].read_text().splitlines()
    rows = [lines[0]]
    for line in lines[1:]:
        f = line.split(",")
        rows.append(",".join([f[0], f'"{f[1]},""x"""', f[2], *[f'"{v}"' for v in f[3:]]]))
    csv = tmp_path / "quoted.csv"
    csv.write_text("\n".join(rows) + "\n")
    plain = converted(tiny_csv["test1"], tmp_path, "plain")
    for parts in (1, 7):
        quoted = converted(csv, tmp_path, f"q{parts}", parts=parts)
        assert np.array_equal(plain.features, quoted.features)
        assert quoted.path[0] == plain.path[0] + ',"x"'


# ---------------------------------------------------------------- item 10: blank lines
def test_trailing_blank_lines_are_accepted_but_not_inner_ones(tiny_csv, tmp_path):
    csv = tmp_path / "trailing.csv"
    csv.write_text(tiny_csv["test1"].read_text() + "\n\r\n\n")
    assert len(converted(csv, tmp_path, "t", parts=3)) == 240
    (tmp_path / "inner").mkdir()
    inner = tmp_path / "inner" / "inner.csv"
    lines = tiny_csv["test1"].read_text().splitlines(keepends=True)
    inner.write_text("".join(lines[:100] + ["\n"] + lines[100:]))
    expect_failure(inner, tmp_path / "inner", "line 101", "an empty line")


def test_short_reads_of_a_stream_fill_the_buffer_instead_of_growing_it(tiny_csv, monkeypatch):
    """A gzip stream may return less than asked; a read without a newline is not a line longer than
    the buffer (doubling it on each such read would take 24 GB for a 160 MB .csv.gz)."""
    import contextlib

    from scripts.data import convert
    from scripts.lib.csvread import chunks as line_chunks

    class ShortReads:
        def __init__(self, handle):
            self.handle = handle

        def readinto(self, view):
            return self.handle.readinto(view[:100])

        def __getattr__(self, name):
            return getattr(self.handle, name)

    @contextlib.contextmanager
    def short_source(path, compression):
        with open(path, "rb") as handle:
            yield ShortReads(handle)

    plan_ = convert.plan(tiny_csv["test1"], 1)
    monkeypatch.setattr(line_chunks, "open_source", short_source)
    chunks = line_chunks.chunks(tiny_csv["test1"], plan_["compression"], plan_["header_bytes"], None, 4096)
    first = next(chunks)[1]
    assert 4096 - 400 <= len(first) <= 4096  # lines are ~350 bytes
    data = tiny_csv["test1"].read_bytes()[plan_["header_bytes"]:]
    assert first + b"".join(chunk for _, chunk in chunks) == data.rstrip(b"\n")
