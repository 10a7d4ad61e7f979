"""Images/s of extract_part against its peer, a plain timm DataLoader loop, in the same run.

Same work on both sides: the same images (generated, ImageNetV2 layout), the same model and
weights, the same timm eval preprocessing, batch size, DataLoader workers and torch threads.
extract_part does in addition what the step must do: its own dataset with per-image error
capture, and writing the Parquet shard. Runs alternate (peer, ours, peer, ours, …) so that load
from other processes on the shared machine falls on both; the report is the ratio of medians,
never an absolute threshold.

    .venv/bin/python tests/benchmarks/bench_extract.py --images 480 --model test_vit --img-size 64 \
        --threads 1 --workers 0 --json tests/benchmarks/results/extract.json

Not a test: no asserts. Raw results: tests/benchmarks/results/extract.json; docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import image_fixtures as make_images

from scripts.lib.images.extraction import extract_part
from scripts.lib.images.folders import list_images
from scripts.lib.images.model import ModelSpec
from scripts.lib.images.tv_compat import import_timm

plain_timm_features = make_images.plain_timm_features


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=240)
    ap.add_argument("--size", type=int, default=64, help="side of the generated images")
    ap.add_argument("--model", default="test_vit")
    ap.add_argument("--img-size", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", help="write the result here")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    spec = ModelSpec(args.model, pretrained=False, img_size=args.img_size)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        classes = 12
        make_images.make_v2(root, classes=classes, per_class=-(-args.images // classes), size=args.size)
        folder = root / make_images.V2_FOLDER
        listing = list_images(folder)
        n = len(listing)
        timm = import_timm()

        def peer() -> float:
            t = time.perf_counter()
            # A job starts from the model's name on both sides: create it, resolve its data config.
            torch.manual_seed(0)
            try:
                model = timm.create_model(args.model, img_size=args.img_size)
            except TypeError:  # a CNN: the size is the preprocessing's only
                model = timm.create_model(args.model)
            model = model.eval().to(args.device)
            config = timm.data.resolve_model_data_config(model, args={"input_size": (3, args.img_size, args.img_size)})
            plain_timm_features(folder, model, config, batch_size=args.batch_size, workers=args.workers,
                                device=args.device)
            return time.perf_counter() - t

        def ours() -> float:
            t = time.perf_counter()
            listing = list_images(folder)  # the peer's ImageDataset walks the folder too
            extract_part(listing.path_root, *listing.part(0, n), root / "out" / "part-00000.parquet", spec=spec,
                         batch_size=args.batch_size, workers=args.workers, device=args.device,
                         progress=False)
            return time.perf_counter() - t

        peer(), ours()  # warm-up: page cache, lazy imports, allocator
        times: dict[str, list[float]] = {"peer": [], "ours": []}
        for _ in range(args.repeats):
            times["peer"].append(peer())
            times["ours"].append(ours())
    med = {k: statistics.median(v) for k, v in times.items()}
    result = {
        "images": n, "model": args.model, "img_size": args.img_size, "batch_size": args.batch_size,
        "workers": args.workers, "threads": args.threads, "device": args.device, "repeats": args.repeats,
        "images_per_s": {k: round(n / v, 1) for k, v in med.items()},
        "ratio_ours_over_peer": round(med["peer"] / med["ours"], 3),  # >1: extract_part faster
        "seconds": {k: [round(x, 3) for x in v] for k, v in times.items()},
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                    "load_avg_at_end": os.getloadavg(), "torch": torch.__version__},
        "note": "both list the folder, create the model and resolve its data config; ours also writes the shard",
    }
    print(json.dumps(result, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1, sort_keys=True))
    return result


if __name__ == "__main__":
    main()
