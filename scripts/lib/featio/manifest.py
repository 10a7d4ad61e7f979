"""A split's manifest, written once its shards exist: the one writer for every way a split is made
(convert from a CSV, extract from images), so the keys readers rely on (docs/data-contract.md) have
one source.

After the manifest is written, part files of the same folder that it does not list are removed
(left by an earlier run with more parts: Snakemake never deletes files that stopped being
outputs), and so are temporaries of killed jobs; readers never see a folder without its manifest.
"""
from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from scripts.lib.featio.atomic import remove_dead_temporaries
from scripts.lib.featio.errors import FeatgapError
from scripts.lib.featio.jsonio import write_json
from scripts.lib.featio.provenance import meta_block
from scripts.lib.featio.shards import SHARD_GLOB


def shared_folder(shards: Sequence[Path], out: str | os.PathLike) -> Path:
    """The one folder a split's shards share (the rule passes them; the manifest records it)."""
    folders = {Path(shard).parent for shard in shards}
    if len(folders) != 1:
        raise FeatgapError(f"{out}: the shards of one split must share a folder, got {sorted(map(str, folders))}")
    return folders.pop()


def write_split_manifest(out: str | os.PathLike, *, shards: Sequence[Path], entries: list[dict[str, Any]],
                         labels_seen: Iterable[int], dim: int, source: str, source_fingerprint: dict[str, Any],
                         started: float, made_by: str, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write {split}.manifest.json (`entries`: shard_record of each shard) and tidy its folder.
    The folder is recorded relative to the manifest, which is how every reader finds it
    (shards.split_folder). `made_by` names the job in the log lines ("conversion", "extraction")."""
    folder = shared_folder(shards, out)
    labels = sorted(set(labels_seen))
    listed = {entry["file"] for entry in entries}
    stale = sorted(p for p in folder.glob(SHARD_GLOB) if p.name not in listed) if folder.is_dir() else []
    manifest = {
        "source": source,
        "source_fingerprint": source_fingerprint,
        "folder": os.path.relpath(folder, Path(out).parent),
        "rows": sum(int(entry["rows"]) for entry in entries),
        "dim": int(dim),
        "classes_seen": len(labels),
        "label_min": labels[0],
        "label_max": labels[-1],
        **(extra or {}),
        "shards": entries,
        "meta": meta_block(started=started, input_fingerprints=[source_fingerprint]),
    }
    write_json(out, manifest)
    for path in stale:  # after the manifest exists: readers never see a folder without one
        path.unlink()
        print(f"removed {path}: not a part of this {made_by}")
    if folder.is_dir():
        for path in remove_dead_temporaries(folder):
            print(f"removed {path}: left by a killed job")
    return manifest
