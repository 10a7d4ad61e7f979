"""convert: the Parquet contract, exact float round trip, column handling, parts, manifest."""
import json

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from scripts.data.convert import convert_file, plan
from scripts.lib.featio.reader import read_split
from scripts.lib.featio.shards import list_shards


def csv_features(path, dim):
    frame = pl.read_csv(path, schema_overrides={str(i): pl.Float32 for i in range(dim)})
    return frame, frame.select([str(i) for i in range(dim)]).to_numpy()


def test_contract_schema_and_manifest(tiny_parquet):
    shard = min(list_shards(tiny_parquet["train"]))
    schema = pq.read_schema(shard)
    assert schema.field("row").type == pa.int64()
    assert schema.field("path").type == pa.string()
    assert schema.field("label").type == pa.int16()
    assert schema.field("features").type == pa.list_(pa.float32(), 32)
    meta = pq.ParquetFile(shard).metadata
    for group in range(meta.num_row_groups):
        column = meta.row_group(group).column(3)
        assert "DICTIONARY" not in str(column.encodings) and "RLE_DICTIONARY" not in str(column.encodings)
    manifest = json.loads(tiny_parquet["train"].read_text())
    assert manifest["folder"] == "train"  # relative to the manifest: the split moves as one
    assert manifest["rows"] == sum(tiny_parquet["truth"]["train_counts"])
    assert manifest["dim"] == 32 and manifest["classes_seen"] == 12
    assert [s["file"] for s in manifest["shards"]] == ["part-00000.parquet", "part-00001.parquet"]
    assert {"size", "mtime", "sha256_sampled"} <= set(manifest["source_fingerprint"])
    assert "meta" in manifest


@pytest.mark.parametrize("split", ["train", "test1", "test2"])
def test_exact_round_trip(tiny_csv, tiny_parquet, split):
    frame, features = csv_features(tiny_csv[split], 32)
    data = read_split(tiny_parquet[split])
    assert data.features.dtype == np.float32
    assert np.array_equal(data.features.view(np.uint32), features.view(np.uint32))
    assert np.array_equal(data.row, frame[""].to_numpy())
    assert np.array_equal(data.label, frame["label"].to_numpy())
    assert list(data.path) == frame["path"].to_list()


def test_parts_and_chunks_do_not_change_the_data(tiny_csv, tmp_path):
    one = convert_file(tiny_csv["train"], tmp_path / "a", tmp_path / "a.manifest.json", num_classes=12, parts=1)
    many = convert_file(tiny_csv["train"], tmp_path / "b", tmp_path / "b.manifest.json", num_classes=12, parts=5,
                        chunk_mb=1, row_group_rows=100)
    assert one["rows"] == many["rows"] and len(many["shards"]) == 5
    a, b = read_split(tmp_path / "a.manifest.json"), read_split(tmp_path / "b.manifest.json")
    assert np.array_equal(a.features, b.features) and np.array_equal(a.row, b.row)


def test_plan_cuts_at_line_starts(tiny_csv):
    result = plan(tiny_csv["train"], 7)
    data = tiny_csv["train"].read_bytes()
    for rng in result["ranges"]:
        assert data[rng["start"] - 1 : rng["start"]] == b"\n"
    assert result["ranges"][-1]["end"] == len(data) - 1  # the final newline ends the data


def test_index_column_is_never_a_feature(tiny_csv, tmp_path):
    # Rename the index column to "7" would be ambiguous; instead name it "id" and configure it.
    text = tiny_csv["test2"].read_text().replace(",path,label,", "id,path,label,", 1)
    csv = tmp_path / "ids.csv"
    csv.write_text(text)
    manifest = convert_file(csv, tmp_path / "s", tmp_path / "s.manifest.json", num_classes=12, dim=32,
                            columns={"index": "id"})
    assert manifest["dim"] == 32
    assert read_split(tmp_path / "s.manifest.json").row[0] == 0


def test_file_without_path_or_index_column(tiny_csv, tmp_path):
    frame = pl.read_csv(tiny_csv["test2"]).drop(["", "path"])
    csv = tmp_path / "bare.csv"
    frame.write_csv(csv)
    convert_file(csv, tmp_path / "s", tmp_path / "s.manifest.json", num_classes=12, dim=32, parts=3,
                 columns={"index": None, "path": None})
    data = read_split(tmp_path / "s.manifest.json")
    assert np.array_equal(data.row, np.arange(frame.height))  # row ids are line positions across parts
    assert np.array_equal(data.label, frame["label"].to_numpy())


def test_configurable_label_column(tiny_csv, tmp_path):
    csv = tmp_path / "renamed.csv"
    csv.write_text(tiny_csv["test2"].read_text().replace(",path,label,", ",file,class_id,", 1))
    convert_file(csv, tmp_path / "s", tmp_path / "s.manifest.json", num_classes=12, dim=32,
                 columns={"path": "file", "label": "class_id"})
    assert read_split(tmp_path / "s.manifest.json").path[0].startswith("imagenetv2-matched-frequency-format-val/")


@pytest.mark.parametrize("chunk_bytes", [100, 1000, 4096])
def test_plain_chunks_are_whole_lines_of_the_range(tiny_csv, chunk_bytes):
    """Exact-size reads: every chunk ends at a line end inside its range, a line longer than the
    chunk size is one chunk of its own, and the chunks are the range, byte for byte."""
    from scripts.lib.csvread.chunks import chunks as line_chunks

    plan_ = plan(tiny_csv["test2"], 3)
    data = tiny_csv["test2"].read_bytes()
    for rng in plan_["ranges"]:
        chunks = list(line_chunks(tiny_csv["test2"], "none", rng["start"], rng["end"], chunk_bytes))
        assert b"".join(c for _, c in chunks) == data[rng["start"] : rng["end"]]
        assert [o for o, _ in chunks] == list(np.cumsum([rng["start"]] + [len(c) for _, c in chunks[:-1]]))
        for _, chunk in chunks[:-1]:
            assert chunk.endswith(b"\n") and (len(chunk) <= chunk_bytes or chunk.count(b"\n") == 1)


def test_features_in_any_header_order(tiny_csv, tmp_path):
    """Feature columns out of order in the header (no contiguous run to slice): selected by name."""
    frame, features = csv_features(tiny_csv["test2"], 32)
    order = ["", "path", "label"] + [str(i) for i in reversed(range(32))]
    csv = tmp_path / "reversed.csv"
    frame.select(order).write_csv(csv)
    convert_file(csv, tmp_path / "r", tmp_path / "r.manifest.json", num_classes=12, dim=32)
    assert np.array_equal(read_split(tmp_path / "r.manifest.json").features.view(np.uint32), features.view(np.uint32))
