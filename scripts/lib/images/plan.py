"""An image split's plan (the sorted file list, cut into parts) and its manifest: the image route's
counterpart of convert's plan / part / manifest (docs/data-contract.md).

`plan_images` walks the folder once (a 1.28 M-file train folder should not be walked by every part
job) and records the paths, labels, class map and part bounds; each part job reads the plan and
extracts its slice (`extract_plan_part`); `write_image_manifest` records the shards with the keys
of convert's manifest, so every reader takes the split unchanged, plus how many listed images were
skipped as unreadable (and which).

The plan's fingerprint hashes every file's relative path, size and mtime, so a changed folder
gives a new plan (as the sampled hash does for a CSV).
"""
from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from scripts.lib.featio.arrow import arrow_to_numpy
from scripts.lib.featio.errors import FeatgapError
from scripts.lib.featio.jsonio import read_json
from scripts.lib.featio.manifest import shared_folder, write_split_manifest
from scripts.lib.featio.shards import open_shard, shard_record
from scripts.lib.images.extraction import PartResult, extract_part
from scripts.lib.images.folders import list_images, part_bounds
from scripts.lib.images.model import ModelSpec

SKIPPED_LISTED = 20  # paths of skipped images named in the manifest (all of them are in the part logs)


def listing_fingerprint(path_root: Path, paths: Sequence[str]) -> dict:
    digest = hashlib.sha256()
    for rel in paths:
        st = (path_root / rel).stat()
        digest.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return {"path": str(path_root), "files": len(paths), "sha256_listing": digest.hexdigest()}


def plan_images(folder: str | os.PathLike, *, parts: int = 1,
                class_map: str | os.PathLike | Mapping[str, int] | None = None,
                path_root: str | os.PathLike | None = None, num_classes: int | None = None) -> dict:
    """The plan of an image split: its listing in timm's order, labels, part bounds, fingerprint."""
    listing = list_images(folder, class_map=class_map, path_root=path_root)
    if num_classes is not None:
        bad = sorted({k: v for k, v in listing.class_to_idx.items() if not 0 <= v < num_classes}.items())
        if bad:
            raise FeatgapError(f"{listing.folder}: class folder {bad[0][0]!r} has label {bad[0][1]}, outside "
                               f"0..{num_classes - 1} (num_classes: {num_classes}); give extract.class_map")
    return {
        "folder": str(listing.folder),
        "path_root": str(listing.path_root),
        "class_to_idx": listing.class_to_idx,
        "paths": listing.paths,
        "labels": listing.labels,
        "parts": [list(b) for b in part_bounds(len(listing), parts)],
        "fingerprint": listing_fingerprint(listing.path_root, listing.paths),
    }


def extract_plan_part(plan_path: str | os.PathLike, part: int, out: str | os.PathLike, *, spec: ModelSpec,
                      **options) -> PartResult:
    plan = read_json(plan_path)
    if not 0 <= part < len(plan["parts"]):
        raise FeatgapError(f"{plan_path}: part {part} does not exist (plan has {len(plan['parts'])} parts)")
    start, stop = plan["parts"][part]
    return extract_part(plan["path_root"], range(start, stop), plan["paths"][start:stop], plan["labels"][start:stop],
                        out, spec=spec, **options)


def write_image_manifest(plan_path: str | os.PathLike, shards: Sequence[str | os.PathLike],
                         out: str | os.PathLike, *, model: ModelSpec) -> dict:
    """The split's manifest (convert's keys), then remove part files it does not list."""
    started = time.perf_counter()
    plan = read_json(plan_path)
    shards = sorted(map(Path, shards))
    if len(shards) != len(plan["parts"]):
        raise FeatgapError(f"{plan_path}: {len(plan['parts'])} parts planned, {len(shards)} shards given")
    shared_folder(shards, out)  # before any shard is read
    entries, labels, dims, row_ids = [], set(), set(), []
    for shard in shards:
        entries.append(shard_record(shard))
        pfile = open_shard(shard)
        table = pfile.read(columns=["row", "label"])
        labels.update(np.unique(arrow_to_numpy(table.column("label"))).tolist())
        row_ids.append(arrow_to_numpy(table.column("row")))
        dims.add(pfile.schema_arrow.field("features").type.list_size)
    rows = sum(e["rows"] for e in entries)
    if rows == 0:
        raise FeatgapError(f"{plan['folder']}: no image could be read; nothing extracted")
    if len(dims) != 1:
        raise FeatgapError(f"{out}: the shards differ in dim ({sorted(dims)})")
    present = np.concatenate(row_ids)
    skipped = np.setdiff1d(np.arange(len(plan["paths"])), present)
    extra = {"images_listed": len(plan["paths"]),
             "images_skipped": len(skipped),  # unreadable, with extract.on_bad_image: skip
             "images_skipped_paths": [plan["paths"][i] for i in skipped[:SKIPPED_LISTED]],
             "path_root": plan["path_root"],
             "model": {"name": model.name, "checkpoint": model.checkpoint, "pretrained": model.pretrained,
                       "img_size": model.img_size}}
    return write_split_manifest(out, shards=shards, entries=entries, labels_seen=labels, dim=dims.pop(),
                                source=plan["folder"], source_fingerprint=plan["fingerprint"], started=started,
                                made_by="extraction", extra=extra)
