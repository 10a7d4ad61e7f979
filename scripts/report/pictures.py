"""The report's pictures: thumbnails of the most-dropped classes in both test sets, side by side,
marked correct / wrong with the predicted class's name, and the test-2 images most likely
mislabelled; one JSON (thumbnails as data URIs within a page budget) that the report embeds.

Inputs (named by the rule): each test set's predictions.parquet of the report's primary head, the
ranked per-class table of the most-dropped classes (`--classes`), optionally a table of ranked
mislabelling suspects (`--mislabelled`: path, label, pred), and each test set's image root (where
its `path` column resolves). Library: scripts/lib/images/pictures.py, thumbnails.py.

CLI: python -m scripts.report.pictures --predictions test1=P --predictions test2=P --root test1=DIR ...
     --classes CSV [--mislabelled CSV] --options JSON --head-name H --output pictures=OUT.json
"""
from __future__ import annotations

import argparse
import os
import time
from collections.abc import Mapping, Sequence

from scripts.lib.featio.cli import run_cli
from scripts.lib.featio.jsonio import parse_json_arg, write_json
from scripts.lib.featio.provenance import meta_block
from scripts.lib.images.pictures import build_pictures
from scripts.lib.options import merge_options
from scripts.lib.step_outputs import add_output_args, output_paths, parse_outputs

OUTPUTS = {"pictures": ".json"}


def pictures(*, predictions: Mapping[str, str | os.PathLike], roots: Mapping[str, str | os.PathLike],
             classes: str | os.PathLike, outputs: Mapping[str, str | os.PathLike],
             mislabelled: str | os.PathLike | None = None, options: dict | None = None,
             head_name: str) -> dict:
    started = time.perf_counter()
    files = output_paths(outputs, OUTPUTS, "pictures")
    opts = merge_options(options, "images")
    result = build_pictures(predictions=predictions, roots=roots, classes_table=classes, mislabelled=mislabelled,
                            classes=opts["classes"], per_class=opts["per_class"],
                            mislabelled_count=opts["mislabelled"], max_side=opts["max_side"],
                            budget_bytes=int(opts["budget_mb"] * 1_000_000))
    result.update(head=head_name, meta=meta_block(started=started, inputs=[*predictions.values(), classes]))
    write_json(files["pictures"], result)
    return result


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--predictions", action="append", default=[], metavar="TEST=PATH", required=True)
    parser.add_argument("--root", action="append", default=[], metavar="TEST=DIR",
                        help="where a test set's paths resolve (none: its pictures are placeholders)")
    parser.add_argument("--classes", required=True, help="ranked per-class table (class, name, …)")
    parser.add_argument("--mislabelled", help="ranked suspects (path, label, pred)")
    parser.add_argument("--options", default="{}", help="JSON: the config's images section")
    parser.add_argument("--head-name", required=True)
    add_output_args(parser, OUTPUTS)
    args = parser.parse_args(argv)
    result = pictures(predictions=parse_outputs(args.predictions, "--predictions"),
                      roots=parse_outputs(args.root, "--root"), classes=args.classes, mislabelled=args.mislabelled,
                      options=parse_json_arg(args.options, "options"), head_name=args.head_name,
                      outputs=parse_outputs(args.output))
    print(f"{result['images']} thumbnails ({result['bytes'] / 1e6:.2f} MB), {result['missing']} missing, "
          f"{result['over_budget']} over the page budget")


if __name__ == "__main__":
    run_cli(main)
