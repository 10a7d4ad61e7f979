"""Bad input stops convert with one message naming the file, line, column and what was expected,
and leaves no shard or manifest behind."""
import subprocess
import sys

import pytest

from scripts.data.convert import convert_file
from scripts.lib.featio.errors import FeatgapError

ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]


def corrupt(tiny_csv, tmp_path, line_no, edit):
    """Copy the tiny test1 CSV with file line `line_no` (1-based, header = 1) passed through `edit`."""
    lines = tiny_csv["test1"].read_text().splitlines(keepends=True)
    fields = lines[line_no - 1].rstrip("\n").split(",")
    lines[line_no - 1] = edit(fields) + "\n"
    path = tmp_path / "bad.csv"
    path.write_text("".join(lines))
    return path


def set_field(column_position, value):
    def edit(fields):
        fields[column_position] = value
        return ",".join(fields)
    return edit


def expect_failure(csv, tmp_path, *fragments, **kwargs):
    with pytest.raises(FeatgapError) as caught:
        convert_file(csv, tmp_path / "shards", tmp_path / "bad.manifest.json", num_classes=12, dim=32,
                     parts=kwargs.pop("parts", 2), chunk_mb=1, **kwargs)
    message = str(caught.value)
    assert str(csv) in message
    for fragment in fragments:
        assert fragment in message, message
    assert not list((tmp_path / "shards").glob("part-*.parquet*")) if (tmp_path / "shards").exists() else True
    assert not list(tmp_path.glob("*.manifest.json"))
    assert not list(tmp_path.rglob(".*tmp*"))
    return message


# Column positions in the real layout: 0 index, 1 path, 2 label, 3.. features 0..31.
@pytest.mark.parametrize("line_no", [2, 57, 240])
def test_ragged_row_too_many_fields(tiny_csv, tmp_path, line_no):
    csv = corrupt(tiny_csv, tmp_path, line_no, lambda f: ",".join(f + ["0.5"]))
    expect_failure(csv, tmp_path, f"line {line_no}", "36 fields, expected 35")


def test_ragged_row_too_few_fields(tiny_csv, tmp_path):
    csv = corrupt(tiny_csv, tmp_path, 100, lambda f: ",".join(f[:-3]))
    expect_failure(csv, tmp_path, "line 100", "32 fields, expected 35")


def test_non_numeric_feature(tiny_csv, tmp_path):
    csv = corrupt(tiny_csv, tmp_path, 150, set_field(3 + 7, "abc"))
    expect_failure(csv, tmp_path, "line 150", "column '7'", "'abc'", "expected a number")


@pytest.mark.parametrize("value", ["nan", "NaN", "inf", "-inf"])
def test_nan_or_inf(tiny_csv, tmp_path, value):
    csv = corrupt(tiny_csv, tmp_path, 201, set_field(3 + 31, value))
    expect_failure(csv, tmp_path, "line 201", "column '31'", "finite")


@pytest.mark.parametrize("value", ["12", "-1", "999"])
def test_label_out_of_range(tiny_csv, tmp_path, value):
    csv = corrupt(tiny_csv, tmp_path, 33, set_field(2, value))
    expect_failure(csv, tmp_path, "line 33", "column 'label'", f"label {value}", "0..11")


@pytest.mark.parametrize("value", ["3.5", "cat"])
def test_label_not_an_integer(tiny_csv, tmp_path, value):
    csv = corrupt(tiny_csv, tmp_path, 34, set_field(2, value))
    expect_failure(csv, tmp_path, "line 34", "column 'label'", repr(value), "expected an integer")


def test_empty_value(tiny_csv, tmp_path):
    csv = corrupt(tiny_csv, tmp_path, 12, set_field(3 + 2, ""))
    expect_failure(csv, tmp_path, "line 12", "column '2'")


def test_missing_label_column(tiny_csv, tmp_path):
    csv = corrupt(tiny_csv, tmp_path, 1, set_field(2, "klass"))
    expect_failure(csv, tmp_path, "line 1", "missing column 'label'")


def test_feature_count_differs_from_other_splits(tiny_csv, tmp_path):
    lines = tiny_csv["test1"].read_text().splitlines()
    csv = tmp_path / "narrow.csv"
    csv.write_text("\n".join(",".join(line.split(",")[:-1]) for line in lines) + "\n")
    expect_failure(csv, tmp_path, "line 1", "found 31 feature columns", "expected 32")


def test_gap_in_feature_names(tiny_csv, tmp_path):
    csv = corrupt(tiny_csv, tmp_path, 1, set_field(3 + 5, "32"))
    expect_failure(csv, tmp_path, "line 1", "missing [5]")


def test_column_that_is_neither_configured_nor_a_feature(tiny_csv, tmp_path):
    csv = corrupt(tiny_csv, tmp_path, 1, set_field(3 + 5, "x5"))
    expect_failure(csv, tmp_path, "line 1", "column 9", "unexpected column 'x5'")


def test_empty_file(tmp_path):
    csv = tmp_path / "empty.csv"
    csv.write_text("")
    expect_failure(csv, tmp_path, "empty")


def test_header_only_file(tiny_csv, tmp_path):
    csv = tmp_path / "header.csv"
    csv.write_text(tiny_csv["test1"].read_text().splitlines()[0] + "\n")
    expect_failure(csv, tmp_path, "header only", "no data rows")


def test_cli_prints_one_clear_line_without_traceback(tiny_csv, tmp_path):
    csv = corrupt(tiny_csv, tmp_path, 77, set_field(3, "oops"))
    plan = tmp_path / "p.json"
    subprocess.run([sys.executable, "-m", "scripts.data.convert", "plan", "--csv", str(csv), "--out", str(plan),
                    "--dim", "32"], cwd=ROOT, check=True, capture_output=True)
    out = tmp_path / "part-00000.parquet"
    result = subprocess.run([sys.executable, "-m", "scripts.data.convert", "part", "--plan", str(plan), "--part", "0",
                             "--out", str(out), "--num-classes", "12"], cwd=ROOT, capture_output=True, text=True, check=False)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert f"featgap error: {csv}: line 77, column '0': value 'oops', expected a number" in result.stderr
    assert not out.exists()
