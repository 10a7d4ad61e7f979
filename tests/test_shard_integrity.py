"""Issue 10, items 1, 8, 9 and 10: stale, truncated and corrupted shards, leftovers after kill -9,
JSON without bare NaN, a full disk in one line. Readers take the manifest's shards only and check
them against it; the steps are called as the workflow calls them (plan → part × N → manifest)."""
import errno
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from scripts.data.convert import convert_part, plan, write_manifest
from scripts.data.validate import validate_split
from scripts.lib.featio.atomic import remove_dead_temporaries
from scripts.lib.featio.cli import run_cli
from scripts.lib.featio.errors import FeatgapError
from scripts.lib.featio.jsonio import write_json
from scripts.lib.featio.reader import iter_row_groups, read_split, split_shape
from scripts.lib.featio.shards import verify_split


def workflow_convert(csv, root, parts):
    """What the rules do: plan, one part job each into the split folder, then the manifest."""
    plan_path = root / "test1.plan.json"
    write_json(plan_path, plan(csv, parts, dim=32))
    shards = [root / "test1" / f"part-{i:05d}.parquet" for i in range(parts)]
    for i, shard in enumerate(shards):
        convert_part(plan_path, i, shard, num_classes=12, row_group_rows=64)
    write_manifest(plan_path, shards, manifest_of(root / "test1"))
    return root / "test1"


def manifest_of(folder):
    """Where workflow_convert writes the manifest of its split folder (readers take the manifest)."""
    return folder.with_name(f"{folder.name}.manifest.json")


@pytest.fixture
def split(tiny_csv, tmp_path):
    return workflow_convert(tiny_csv["test1"], tmp_path, 3)


# ---------------------------------------------------------------- item 1: stale shards
def test_fewer_parts_removes_stale_shards_and_readers_follow_the_manifest(tiny_csv, tmp_path, split):
    assert len(list(split.glob("part-*.parquet"))) == 3
    workflow_convert(tiny_csv["test1"], tmp_path, 1)
    assert [p.name for p in split.glob("part-*.parquet")] == ["part-00000.parquet"]
    assert len(read_split(manifest_of(split), features=False)) == 240 and split_shape(manifest_of(split)) == (240, 32)


def test_a_part_file_the_manifest_does_not_list_is_never_read(tmp_path, split):
    shutil.copy(split / "part-00001.parquet", split / "part-00007.parquet")  # e.g. from an older run
    assert len(read_split(manifest_of(split)).label) == 240
    assert sum(t.num_rows for t in iter_row_groups(manifest_of(split), columns=("label",))) == 240


def test_row_counts_are_checked_against_the_manifest(tmp_path, split):
    manifest = tmp_path / "test1.manifest.json"
    data = json.loads(manifest.read_text())
    data["rows"] = 200
    manifest.write_text(json.dumps(data))
    with pytest.raises(FeatgapError, match=r"240 rows in 3 shards, but test1.manifest.json records 200"):
        read_split(manifest_of(split), features=False)


def test_listed_shard_that_is_missing(split):
    (split / "part-00002.parquet").unlink()
    with pytest.raises(FeatgapError, match=r"part-00002.parquet: listed in .* but missing; run snakemake again"):
        split_shape(manifest_of(split))


# ---------------------------------------------------------------- item 8: corruption
def test_truncated_shard_is_refused_on_read_and_removed_by_the_manifest_step(tiny_csv, tmp_path, split):
    shard = split / "part-00001.parquet"
    shard.write_bytes(shard.read_bytes()[:-100])
    with pytest.raises(FeatgapError, match=r"part-00001.parquet: \d+ bytes, but test1.manifest.json records \d+ "
                                           r"\(truncated .*delete it and run snakemake again"):
        read_split(manifest_of(split))
    plan_path = tmp_path / "test1.plan.json"
    with pytest.raises(FeatgapError, match=r"not a complete Parquet shard .*removed it: run snakemake again"):
        write_manifest(plan_path, sorted(split.glob("part-*.parquet")), tmp_path / "again.manifest.json")
    assert not shard.exists()  # so Snakemake sees it missing and rebuilds it


def test_flipped_feature_bytes_are_refused_not_read(split):
    shard = split / "part-00000.parquet"
    data = bytearray(shard.read_bytes())
    data[len(data) // 3] ^= 0x40  # inside the features of a row group
    shard.write_bytes(bytes(data))  # same size: only the checksums can tell
    manifest = manifest_of(split)
    for read in (lambda: read_split(manifest), lambda: list(iter_row_groups(manifest)), lambda: verify_split(manifest)):
        with pytest.raises(FeatgapError, match=r"part-00000.parquet: .*corrupt.*delete it and run snakemake again"):
            read()


def test_qc_verifies_whole_file_checksums(tmp_path, split):
    manifest = tmp_path / "test1.manifest.json"
    qc, _ = validate_split(manifest, "test1", num_classes=12)
    assert qc["checksummed_bytes"] == sum(p.stat().st_size for p in split.glob("part-*.parquet"))
    data = json.loads(manifest.read_text())
    data["shards"][1]["crc32"] ^= 1
    manifest.write_text(json.dumps(data))
    with pytest.raises(FeatgapError, match=r"part-00001.parquet: CRC-32 differs"):
        validate_split(manifest, "test1", num_classes=12)


def test_csv_changed_after_planning_is_refused(tiny_csv, tmp_path):
    csv = tmp_path / "t.csv"
    shutil.copy(tiny_csv["test1"], csv)
    plan_path = tmp_path / "p.json"
    write_json(plan_path, plan(csv, 1, dim=32))
    csv.write_bytes(csv.read_bytes().replace(b"val/", b"VAL/", 1))  # same size
    with pytest.raises(FeatgapError, match=r"changed since its conversion was planned; run snakemake again"):
        convert_part(plan_path, 0, tmp_path / "part-00000.parquet", num_classes=12)


# ---------------------------------------------------------------- item 9: leftovers
def dead_pid():
    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                           text=True, check=True)
    return int(child.stdout)


def test_temporaries_of_killed_jobs_are_removed(tmp_path, split):
    dead = split / f".part-00001.parquet.tmp-{dead_pid()}"
    dead.write_bytes(b"x" * 1000)
    alive = split / f".part-00002.parquet.tmp-{os.getppid()}"
    alive.write_bytes(b"x")
    assert remove_dead_temporaries(split) == [dead] and alive.exists()
    target = tmp_path / "out.json"
    stale = tmp_path / f".out.json.tmp-{dead_pid()}"
    stale.write_text("half")
    write_json(target, {"a": 1})  # the next attempt at the same output cleans up
    assert not stale.exists() and target.exists()


# ---------------------------------------------------------------- item 10: JSON and disk full
def test_json_has_null_not_bare_nan(tmp_path):
    out = tmp_path / "s.json"
    write_json(out, {"a": float("nan"), "b": [np.float32("inf"), 1.5], "c": np.array([np.nan, 2.0])})
    assert json.loads(out.read_text(), parse_constant=lambda name: pytest.fail(f"bare {name}")) == {
        "a": None, "b": [None, 1.5], "c": [None, 2.0]}


def test_disk_full_is_one_line(capsys):
    def main(argv):
        raise OSError(errno.ENOSPC, "No space left on device", "results/parquet/train/part-00003.parquet")

    with pytest.raises(SystemExit) as caught:
        run_cli(main, [])
    err = capsys.readouterr().err
    assert caught.value.code == 1 and len(err.strip().splitlines()) == 1
    assert "results/parquet/train/part-00003.parquet: No space left on device (the disk is full" in err
