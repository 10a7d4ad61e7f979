"""featio: atomic outputs, shard reading (whole, subset, streamed), fingerprints, meta blocks."""
import numpy as np
import pytest

from scripts.featio import (
    atomic_path,
    fingerprint,
    iter_row_groups,
    meta_block,
    read_split,
    split_shape,
    write_json,
    write_shard,
)


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
    assert split_shape(tmp_path) == (80, 6)
    whole = read_split(tmp_path)
    assert np.array_equal(whole.features, feats) and np.array_equal(whole.row, np.arange(80))
    rows = np.array([0, 15, 16, 49, 50, 79])
    subset = read_split(tmp_path, rows=rows)
    assert np.array_equal(subset.features, feats[rows]) and list(subset.path) == [f"p{r}" for r in rows]
    labels_only = read_split(tmp_path, features=False, columns=("label",))
    assert labels_only.features is None and len(labels_only) == 80
    assert sum(t.num_rows for t in iter_row_groups(tmp_path, columns=("label",))) == 80


def test_fingerprint_changes_with_content_and_meta_block(tmp_path):
    path = tmp_path / "f.csv"
    path.write_bytes(b"a" * 3_000_000)
    first = fingerprint(path)
    path.write_bytes(b"a" * 2_999_999 + b"b")
    assert fingerprint(path)["sha256_head_tail"] != first["sha256_head_tail"]
    meta = meta_block(seed=3, inputs=[path])
    assert meta["seed"] == 3 and meta["inputs"][0]["size"] == 3_000_000 and "featgap_version" in meta
