"""Optional (extract.csv): an extracted split as a CSV in the seed files' schema (`,path,label,0,…,D-1`).

For users who want the features outside featgap, or to compare with a seed file. Written row group
by row group (bounded memory); floats by polars' shortest round-trip formatting of float32, so the
CSV converts back to the same float32 values (scripts.data.convert reads it back exactly). The
header is written by hand: polars would quote the empty name of the index column (`""`), the seed
files do not.
"""
from __future__ import annotations

import os
from pathlib import Path

import polars as pl

from scripts.lib.featio.arrow import arrow_to_numpy, features_to_numpy
from scripts.lib.featio.atomic import atomic_path
from scripts.lib.featio.shards import list_shards, open_shard


def split_to_csv(manifest: str | os.PathLike, out: str | os.PathLike) -> int:
    """Write the split's rows (its manifest's shards, in order) as one CSV; returns the rows written."""
    rows, header_dim = 0, None
    with atomic_path(out) as tmp, Path(tmp).open("w", encoding="utf-8", newline="") as handle:
        for shard in list_shards(manifest):
            pfile = open_shard(shard)
            dim = pfile.schema_arrow.field("features").type.list_size
            if header_dim is None:
                header_dim = dim
                handle.write(",path,label," + ",".join(map(str, range(dim))) + "\n")
            for g in range(pfile.num_row_groups):
                t = pfile.read_row_group(g)
                feats = features_to_numpy(t.column("features"), dim)
                frame = pl.DataFrame({"": arrow_to_numpy(t.column("row")), "path": t.column("path").to_pylist(),
                                      "label": arrow_to_numpy(t.column("label"))})
                frame = frame.hstack(pl.DataFrame(feats, schema=[str(i) for i in range(dim)]))
                handle.write(frame.write_csv(include_header=False))
                rows += t.num_rows
    return rows
