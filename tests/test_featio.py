"""featio: atomic outputs, shard reading (whole, subset, streamed), fingerprints, meta blocks."""
import itertools

import numpy as np
import pytest

from scripts.lib.featio.atomic import atomic_path
from scripts.lib.featio.jsonio import write_json
from scripts.lib.featio.provenance import meta_block
from scripts.lib.featio.reader import iter_row_groups, read_split, split_shape
from scripts.lib.featio.shards import write_shard
from scripts.lib.fingerprint import fingerprint


def listing(folder):
    """A minimal manifest for a folder of shards (readers take a split by its manifest): read by name."""
    manifest = folder.with_name(f"{folder.name}.manifest.json")
    write_json(manifest, {"folder": folder.name})
    return manifest


def make_split(folder, sizes=(50, 30), dim=6):
    rng = np.random.default_rng(0)
    start, all_feats = 0, []
    for i, n in enumerate(sizes):
        feats = rng.standard_normal((n, dim)).astype(np.float32)
        write_shard(folder / f"part-{i:05d}.parquet", row=np.arange(start, start + n), path_col=[f"p{j}" for j in
                    range(start, start + n)], label=np.arange(start, start + n) % 5, features=feats,
                    row_group_rows=16)
        all_feats.append(feats)
        start += n
    return np.concatenate(all_feats)


def test_atomic_path_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.json"
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []
    write_json(target, {"b": 1, "a": np.float32(2.5)})
    assert target.read_text() == '{\n  "a": 2.5,\n  "b": 1\n}\n'


def test_read_split_whole_subset_and_streamed(tmp_path):
    feats = make_split(tmp_path)
    assert split_shape(listing(tmp_path)) == (80, 6)
    whole = read_split(listing(tmp_path))
    assert np.array_equal(whole.features, feats) and np.array_equal(whole.row, np.arange(80))
    rows = np.array([0, 15, 16, 49, 50, 79])
    subset = read_split(listing(tmp_path), rows=rows)
    assert np.array_equal(subset.features, feats[rows]) and list(subset.path) == [f"p{r}" for r in rows]
    labels_only = read_split(listing(tmp_path), features=False, columns=("label",))
    assert labels_only.features is None and len(labels_only) == 80
    assert sum(t.num_rows for t in iter_row_groups(listing(tmp_path), columns=("label",))) == 80


def test_fingerprint_changes_with_content_and_meta_block(tmp_path):
    path = tmp_path / "f.csv"
    path.write_bytes(b"a" * 3_000_000)
    first = fingerprint(path)
    path.write_bytes(b"a" * 2_999_999 + b"b")
    assert fingerprint(path)["sha256_sampled"] != first["sha256_sampled"]
    meta = meta_block(seed=3, inputs=[path])
    assert meta["seed"] == 3 and meta["inputs"][0]["size"] == 3_000_000 and "featgap_version" in meta


# ---------------------------------------------------------------- page-by-page feature reader
def _write(path, feats, **options):
    """A shard in the contract's schema with pyarrow options the page reader must cope with."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from scripts.lib.featio.arrow import features_to_arrow
    from scripts.lib.featio.shards import shard_schema

    n, dim = feats.shape
    table = pa.Table.from_arrays([pa.array(np.arange(n), pa.int64()), pa.array([f"p{i}" for i in range(n)]),
                                  pa.array(np.arange(n) % 3, pa.int16()), features_to_arrow(feats)],
                                 schema=shard_schema(dim))
    pq.write_table(table, path, row_group_size=16, **{"use_dictionary": ["path"], **options})


@pytest.mark.parametrize("options, fast", [
    ({"compression": "none", "write_page_checksum": True}, True),
    # statistics put a Statistics struct (binaries) into every page header: skipped, still fast
    ({"compression": "none", "write_page_checksum": True, "write_statistics": True}, True),
    ({"compression": "none", "write_page_checksum": True, "data_page_size": 64}, True),  # many pages
    ({"compression": "zstd", "write_page_checksum": True}, False),  # compressed: pyarrow decodes
    ({"compression": "none", "write_page_checksum": False}, False),  # no checksum to verify: pyarrow
    ({"compression": "none", "write_page_checksum": True, "data_page_version": "2.0"}, False),
    ({"compression": "none", "write_page_checksum": True, "use_dictionary": True}, False),
])
def test_page_reader_is_exact_or_declines(tmp_path, monkeypatch, options, fast):
    import pyarrow.parquet as pq

    from scripts.lib.featio import pages, reader
    from scripts.lib.featio.reader import _features_leaf

    feats = np.random.default_rng(1).standard_normal((40, 12)).astype(np.float32)
    feats[3, 4] = -0.0
    feats[5] = np.float32(3.4e38)
    _write(tmp_path / "part-00000.parquet", feats, **options)
    pfile = pq.ParquetFile(tmp_path / "part-00000.parquet")
    out = np.full((16, 12), np.nan, np.float32)
    assert pages.features_into(tmp_path / "part-00000.parquet", pfile, 0, _features_leaf(pfile), out) is fast
    if fast:
        assert np.array_equal(out.view(np.uint32), feats[:16].view(np.uint32))
    monkeypatch.setattr(reader, "PARALLEL_READ_BYTES", 0)  # threads even for a tiny split
    rows = np.array([1, 5, 16, 31, 32, 39])
    for threads in (1, 3):  # either way read_split returns the same bits
        got = read_split(listing(tmp_path), threads=threads)
        assert np.array_equal(got.features.view(np.uint32), feats.view(np.uint32))
        assert np.array_equal(got.row, np.arange(40)) and list(got.path[:2]) == ["p0", "p1"]
        subset = read_split(listing(tmp_path), threads=threads, rows=rows)
        assert np.array_equal(subset.features.view(np.uint32), feats[rows].view(np.uint32))


def test_page_reader_declines_null_features(tmp_path):
    """A null list or element leaves fewer values than levels: pyarrow reads it (no silent shift)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from scripts.lib.featio import pages
    from scripts.lib.featio.reader import _features_leaf
    from scripts.lib.featio.shards import shard_schema

    values = pa.array([1.0, None, 3.0, 4.0, 5.0, 6.0], pa.float32())
    feats = pa.FixedSizeListArray.from_arrays(values, 2)
    table = pa.Table.from_arrays([pa.array([0, 1, 2]), pa.array(["a", "b", "c"]), pa.array([0, 1, 0], pa.int16()),
                                  feats], schema=shard_schema(2))
    pq.write_table(table, tmp_path / "x.parquet", compression="none", write_page_checksum=True)
    pfile = pq.ParquetFile(tmp_path / "x.parquet")
    assert not pages.features_into(tmp_path / "x.parquet", pfile, 0, _features_leaf(pfile),
                                         np.empty((3, 2), np.float32))


def test_parallel_subset_read_matches_serial(tmp_path, monkeypatch):
    from scripts.lib.featio import reader

    monkeypatch.setattr(reader, "PARALLEL_READ_BYTES", 0)
    feats = make_split(tmp_path, sizes=(50, 30, 41), dim=6)
    rows = np.array([0, 15, 16, 17, 49, 50, 79, 80, 120])
    for threads in (1, 2, 4):
        got = read_split(listing(tmp_path), rows=rows, threads=threads)
        assert np.array_equal(got.features, feats[rows]) and np.array_equal(got.row, rows)
    out = np.zeros((121, 6), np.float32)
    assert read_split(listing(tmp_path), columns=(), out=out, threads=2).features is out
    assert np.array_equal(out, feats)


def test_flipped_page_checksum_is_one_line(tmp_path, monkeypatch):
    from scripts.lib.featio import reader
    from scripts.lib.featio.errors import FeatgapError

    monkeypatch.setattr(reader, "PARALLEL_READ_BYTES", 0)
    feats = np.random.default_rng(2).standard_normal((40, 12)).astype(np.float32)
    shard = tmp_path / "part-00000.parquet"
    _write(shard, feats, compression="none", write_page_checksum=True)
    data = bytearray(shard.read_bytes())
    at = data.index(feats[20].tobytes())  # a value inside row group 1
    data[at + 1] ^= 0x10
    shard.write_bytes(bytes(data))
    for rows in (None, np.array([3, 20])):  # whole groups and subsets
        with pytest.raises(FeatgapError, match=r"part-00000.parquet: row group 1 is corrupt \(page at byte \d+: CRC-32"):
            read_split(listing(tmp_path), threads=2, rows=rows)


def test_fingerprint_sees_same_size_edits_in_the_middle(tmp_path):
    """A 13 GB file is not hashed whole: head, tail and 64 spread blocks. A same-size edit in a
    sampled block of the middle changes the digest (the head/tail hash did not see it)."""
    from scripts.lib.fingerprint import EDGE_BYTES, sample_offsets

    size = 40 * EDGE_BYTES
    path = tmp_path / "big.csv"
    path.write_bytes(b"1" * size)
    before = fingerprint(path)["sha256_sampled"]
    regions = sample_offsets(size)
    assert regions[0] == (0, EDGE_BYTES) and regions[-1] == (size - EDGE_BYTES, EDGE_BYTES) and len(regions) == 66
    assert all(a + n <= b for (a, n), (b, _) in itertools.pairwise(regions))  # disjoint, in order
    offset = regions[len(regions) // 2][0] + 10  # inside a block near the middle of the file
    with path.open("r+b") as handle:
        handle.seek(offset)
        handle.write(b"2")
    assert path.stat().st_size == size and fingerprint(path)["sha256_sampled"] != before


def test_a_split_is_found_through_its_manifest_only(tmp_path):
    """The manifest records its shards' folder relative to itself: moving both together keeps the
    split readable; a manifest without `folder` is one line, not a guess from its file name."""
    from scripts.lib.featio.errors import FeatgapError

    feats = make_split(tmp_path / "shards")
    write_json(tmp_path / "elsewhere" / "any-name.json", {"folder": "../shards"})
    assert np.array_equal(read_split(tmp_path / "elsewhere" / "any-name.json").features, feats)
    write_json(tmp_path / "shards.manifest.json", {"rows": 80})
    with pytest.raises(FeatgapError, match=r"shards.manifest.json: no 'folder' naming where its shards are"):
        read_split(tmp_path / "shards.manifest.json")
    with pytest.raises(FeatgapError, match=r"nothing.manifest.json: no manifest \(did convert run\?\)"):
        split_shape(tmp_path / "nothing.manifest.json")


def test_the_training_tests_shard_writer_reads_back_exactly(tmp_path):
    from scripts.data.generate_demo import DemoSpec
    from scripts.lib.featio.reader import read_split
    from tests.train_helpers import make_dataset

    data = make_dataset(tmp_path, DemoSpec(classes=3, dim=4), 5, 2)
    split = read_split(data["manifest"])
    np.testing.assert_array_equal(split.label, data["train_labels"])
    np.testing.assert_array_equal(split.features, data["train_features"])
