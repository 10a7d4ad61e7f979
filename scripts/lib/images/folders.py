"""An image split's file list and labels, in the order and with the classes of timm's folder reader.

The seed CSVs were extracted with timm's ImageFolder reader, so rows follow
`timm.data.readers.reader_image_folder.find_images_and_targets`: every image file under the split
folder (by extension, case-insensitive), the class is the leaf folder's name, classes and files in
timm's natural sort (`timm.utils.misc.natural_key`: digit runs compare as numbers, so folder `10`
comes after `9`, never after `1`). We call that function rather than re-implementing the walk, so
the order is timm's by construction.

Labels:
- folders that are all decimal numbers (ImageNetV2: `0`..`999`) are their numbers. With all of
  0..C-1 present that is also timm's natural-sort index; with some missing it stays the class id
  (timm's index would shift every later class);
- otherwise (synsets `n01440764`…) the index in timm's natural sort, or a class map
  (`{folder name: index}`, or timm's class-map file: a .txt with one folder name per line, line i
  = class i) so that a test set's indices agree with train's. A folder the map does not name stops
  the listing with one line (timm would drop its images silently).

Paths are relative to `path_root`, by default the split folder's parent, so that they read like the
seed CSVs' `path` column (`val/n01440764/ILSVRC2012_val_00000293.JPEG`).

"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from scripts.lib.featio.errors import FeatgapError
from scripts.lib.images.tv_compat import import_timm


@dataclass(frozen=True)
class ImageList:
    """An image split: `paths[i]` (relative to `path_root`) has class `labels[i]`; row id = i."""

    folder: Path
    path_root: Path
    paths: list[str]
    labels: list[int]
    class_to_idx: dict[str, int]

    def __len__(self) -> int:
        return len(self.paths)

    def part(self, start: int, stop: int) -> tuple[list[int], list[str], list[int]]:
        """Rows, paths and labels of the slice [start, stop): one independent extraction job."""
        return list(range(start, stop)), self.paths[start:stop], self.labels[start:stop]


def load_class_map(class_map: str | os.PathLike | Mapping[str, int]) -> dict[str, int]:
    """A `{folder name: index}` map, from a dict or timm's class-map file (.txt: line i = class i)."""
    import_timm()
    from timm.data.readers.class_map import load_class_map as timm_load_class_map

    if isinstance(class_map, Mapping):
        return {str(k): int(v) for k, v in class_map.items()}
    path = Path(class_map)
    if not path.is_file():
        raise FeatgapError(f"{path}: class map not found")
    try:
        loaded = timm_load_class_map(str(path))
    except (AssertionError, ValueError, OSError) as err:
        raise FeatgapError(f"{path}: not a class map (.txt, one folder name per line): {err}") from None
    return {str(k): int(v) for k, v in loaded.items()}


def _all_numeric(names) -> bool:
    return all(name.isascii() and name.isdigit() for name in names)


def list_images(
    folder: str | os.PathLike,
    *,
    class_map: str | os.PathLike | Mapping[str, int] | None = None,
    path_root: str | os.PathLike | None = None,
) -> ImageList:
    """List an image split in timm's folder-reader order, with its labels (see the module doc)."""
    import_timm()
    from timm.data.readers.reader_image_folder import find_images_and_targets

    folder = Path(folder)
    if not folder.is_dir():
        raise FeatgapError(f"{folder}: image folder not found")
    path_root = Path(path_root) if path_root is not None else folder.parent
    # One walk; timm's own map first (natural order), remapped below by folder name.
    samples, timm_map = find_images_and_targets(str(folder))
    if not samples:
        raise FeatgapError(f"{folder}: no image files (.png, .jpg, .jpeg) in its class folders")
    if "" in timm_map:
        loose = next(p for p, t in samples if t == timm_map[""])
        raise FeatgapError(f"{loose}: image directly in the split folder; expected one folder per class")
    if class_map is not None:
        wanted = load_class_map(class_map)
        unknown = sorted(set(timm_map) - set(wanted))
        if unknown:
            raise FeatgapError(f"{folder}: class folder {unknown[0]!r} is not in the class map "
                                 f"({len(unknown)} unknown folders)")
        class_to_idx = {name: wanted[name] for name in timm_map}
    elif _all_numeric(timm_map):
        class_to_idx = {name: int(name) for name in timm_map}
    else:
        class_to_idx = dict(timm_map)
    name_of = {idx: name for name, idx in timm_map.items()}
    labels = [class_to_idx[name_of[target]] for _, target in samples]
    try:
        paths = [Path(p).relative_to(path_root).as_posix() for p, _ in samples]
    except ValueError:
        raise FeatgapError(f"{folder}: not inside the image root {path_root}") from None
    return ImageList(folder, path_root, paths, labels, class_to_idx)


def class_index_map(folder: str | os.PathLike) -> dict[str, int]:
    """timm's `{class folder: index}` for a (training) split: give it to a test split as `class_map`."""
    return dict(list_images(folder).class_to_idx)


def write_class_map(class_to_idx: Mapping[str, int], out: str | os.PathLike) -> None:
    """Write timm's class-map file format (.txt, line i = name of class i); classes must be 0..C-1."""
    names = sorted(class_to_idx, key=class_to_idx.__getitem__)
    if [class_to_idx[n] for n in names] != list(range(len(names))):
        raise FeatgapError(f"{out}: class indices are not 0..{len(names) - 1}; a .txt class map cannot hold them")
    Path(out).write_text("".join(f"{n}\n" for n in names), encoding="utf-8")


def part_bounds(n: int, parts: int) -> list[tuple[int, int]]:
    """`parts` contiguous slices [start, stop) of n sorted files, sizes differing by at most one
    (exactly `parts`, some empty when there are fewer files: the workflow's jobs are fixed by the config)."""
    if parts < 1:
        raise FeatgapError(f"parts must be at least 1, got {parts}")
    base, extra = divmod(n, parts)
    bounds, start = [], 0
    for i in range(parts):
        stop = start + base + (1 if i < extra else 0)
        bounds.append((start, stop))
        start = stop
    return bounds


def class_map_of_split(manifest: str | os.PathLike) -> dict[str, int]:
    """`{class folder: label}` of an extracted or converted split (train), from its `path` and
    `label` columns: the folder is each path's parent folder name. Gives a test split the train
    split's indices whether train came from a CSV or from images; a folder with two labels stops
    with one line (QC's layout check asserts the same one-to-one relation)."""
    from scripts.lib.featio.reader import read_split

    split = read_split(manifest, features=False, columns=("path", "label"))
    mapping: dict[str, int] = {}
    for path, label in zip(split.path, split.label.tolist()):
        folder = Path(str(path)).parent.name
        if mapping.setdefault(folder, int(label)) != int(label):
            raise FeatgapError(f"{manifest}: class folder {folder!r} has labels {mapping[folder]} and {label}; "
                               "a class map needs one label per folder")
    if not mapping or "" in mapping:
        raise FeatgapError(f"{manifest}: its paths have no class folders; cannot derive a class map from it")
    return mapping
