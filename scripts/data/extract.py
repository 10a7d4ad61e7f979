"""Image folder → Parquet shards of a timm model's pooled pre-logits, in parts that run as
independent jobs: the image route into the data contract (docs/data-contract.md), beside convert.

Sub-steps (one rule each, as convert's plan / part / manifest):
  check     `dim` against the model's feature width, on the meta device (the workflow runs it when
            it reads the config, before any job);
  plan      list the split folder in timm's folder-reader order with its labels (numeric folders
            are their numbers, others timm's natural-sort index, or a class map: a file, or the
            train split's {folder: label}), cut the sorted list into `parts` slices
            (scripts/lib/images/folders.py, plan.py);
  part      extract one slice into one shard (scripts/lib/images/extraction.py): the model's eval
            transform, forward_head(pre_logits=True), bf16 autocast and workers on CUDA, float32
            on the CPU; an unreadable image is one line naming it, or skipped and counted;
  manifest  record the shards as convert does (plus images_listed / images_skipped), so
            validate, train, evaluate and the analyses read the split unchanged;
  csv       (extract.csv) the split as a CSV in the seed files' schema.

timm is imported through scripts/lib/images/tv_compat.py (why: see there and requirements.txt).
"""
from __future__ import annotations

import argparse
import time
from collections.abc import Sequence

from scripts.lib.featio.cli import run_cli
from scripts.lib.featio.jsonio import parse_json_arg, write_json
from scripts.lib.options import merge_options
from scripts.lib.threads import add_threads_arg, limit_threads

__all__ = ["check", "extract_options", "main", "manifest", "part", "plan"]


def extract_options(options: dict | None) -> dict:
    """The config's `extract:` section over its schema defaults."""
    return merge_options(options, "extract")


def check(options: dict | None, dim: int) -> int:
    from scripts.lib.images.model import ModelSpec, check_dim

    return check_dim(ModelSpec.of(extract_options(options)), dim)


def plan(folder: str, out: str, *, parts: int, options: dict | None = None, dim: int | None = None,
         num_classes: int | None = None, class_map: str | None = None, class_map_split: str | None = None) -> dict:
    """Write the split's plan: its listing, labels and part bounds (and check `dim` first)."""
    from scripts.lib.images.folders import class_map_of_split
    from scripts.lib.images.plan import plan_images

    started = time.perf_counter()
    if dim is not None:
        check(options, dim)
    mapping = class_map_of_split(class_map_split) if class_map_split else class_map
    result = plan_images(folder, parts=parts, class_map=mapping, num_classes=num_classes)
    result["seconds"] = round(time.perf_counter() - started, 3)
    write_json(out, result)
    return result


def part(plan_path: str, index: int, out: str, *, options: dict | None = None, seed: int = 0,
         progress: bool = True):
    from scripts.lib.device import resolve_device
    from scripts.lib.images.model import ModelSpec
    from scripts.lib.images.plan import extract_plan_part

    opts = extract_options(options)
    return extract_plan_part(plan_path, index, out, spec=ModelSpec.of(opts), batch_size=opts["batch_size"],
                             workers=opts["workers"], device=resolve_device(opts["device"]), bf16=opts["bf16"],
                             on_bad_image=opts["on_bad_image"], row_group_rows=opts["row_group_rows"],
                             progress=progress, seed=seed)


def manifest(plan_path: str, shards: Sequence[str], out: str, *, options: dict | None = None) -> dict:
    from scripts.lib.images.model import ModelSpec
    from scripts.lib.images.plan import write_image_manifest

    return write_image_manifest(plan_path, shards, out, model=ModelSpec.of(extract_options(options)))


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p_check = sub.add_parser("check")
    p_check.add_argument("--options", default="{}", help="JSON: the config's extract section")
    p_check.add_argument("--dim", type=int, required=True)
    p_plan = sub.add_parser("plan")
    p_plan.add_argument("--folder", required=True, help="the split's image folder (one folder per class)")
    p_plan.add_argument("--out", required=True)
    p_plan.add_argument("--parts", type=int, default=1)
    p_plan.add_argument("--options", default="{}")
    p_plan.add_argument("--dim", type=int, help="checked against the model's feature width first")
    p_plan.add_argument("--num-classes", type=int)
    p_plan.add_argument("--class-map", help="timm's class-map file (.txt, line i = folder of class i)")
    p_plan.add_argument("--class-map-split", help="a split's manifest whose path/label columns give {folder: label}")
    p_part = sub.add_parser("part")
    p_part.add_argument("--plan", required=True)
    p_part.add_argument("--part", type=int, required=True)
    p_part.add_argument("--out", required=True)
    p_part.add_argument("--options", default="{}")
    p_part.add_argument("--seed", type=int, default=0)
    add_threads_arg(p_part, default=2)
    p_man = sub.add_parser("manifest")
    p_man.add_argument("--plan", required=True)
    p_man.add_argument("--out", required=True)
    p_man.add_argument("--options", default="{}")
    p_man.add_argument("shards", nargs="+")
    p_csv = sub.add_parser("csv")
    p_csv.add_argument("--manifest", required=True)
    p_csv.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    options = parse_json_arg(args.options, "options") if hasattr(args, "options") else None
    if args.command == "check":
        print(f"dim {check(options, args.dim)}: matches extract.model")
    elif args.command == "plan":
        result = plan(args.folder, args.out, parts=args.parts, options=options, dim=args.dim,
                      num_classes=args.num_classes, class_map=args.class_map, class_map_split=args.class_map_split)
        print(f"{args.folder}: {len(result['paths'])} images in {len(result['class_to_idx'])} classes, "
              f"{len(result['parts'])} parts")
    elif args.command == "part":
        limit_threads(args.threads)
        result = part(args.plan, args.part, args.out, options=options, seed=args.seed)
        print(f"{args.out}: {result.rows} rows × {result.dim} features in {result.seconds:.1f} s"
              + (f", {len(result.skipped)} unreadable images skipped" if result.skipped else ""))
    elif args.command == "manifest":
        written = manifest(args.plan, args.shards, args.out, options=options)
        print(f"{args.out}: {written['rows']} rows in {len(written['shards'])} shards"
              + (f", {written['images_skipped']} unreadable images skipped" if written["images_skipped"] else ""))
    else:
        from scripts.lib.images.seed_csv import split_to_csv

        print(f"{args.out}: {split_to_csv(args.manifest, args.out)} rows")


if __name__ == "__main__":
    try:
        run_cli(main)
    except ImportError as err:  # timm or torchvision not installed: one line, not a traceback
        raise SystemExit(f"featgap error: {err}; install the pinned requirements (pip install -r requirements.txt)") from None
