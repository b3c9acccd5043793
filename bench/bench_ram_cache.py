"""Benchmark: ``data.cache: ram`` against decoding every epoch, on the same dataloader settings.

Run: ``.venv/bin/python bench/bench_ram_cache.py [--images 64] [--workers 2] [--batch-size 8]
[--min-size 640] [--resize square] [--json PATH]``

Data: ``--images`` generated 1280x720 JPEGs (as bench_pipeline.py), resized to 640 x 640 by
default (RT-DETR's training size, seed 001's ``rtdetr_fast`` with ``cache: ram``). Both sides
use ``make_loader`` with the same workers and batch size; the cached side's first epoch fills
the cache (decodes, as the uncached side does every epoch), its second epoch reads it. Reported:
batches/s of the second epoch (all batches after the first, so worker start-up is excluded),
the first epoch's (the cost of filling), and the memory the cache file holds once full
(``st_blocks`` of the memory file: one copy, whatever the number of workers).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_pipeline import write_jpegs  # noqa: E402
from report import emit, row  # noqa: E402


def batches_per_second(loader) -> float:
    """Batches/s over every batch after the first (the first pays for starting the workers)."""
    start, batches = None, 0
    for _ in loader:
        if start is None:
            start = time.perf_counter()
            continue
        batches += 1
    return batches / (time.perf_counter() - start)


def run(images: int, workers: int, batch_size: int, min_size: int, resize_kind: str) -> tuple[list[dict], list[str]]:
    from hftrain.data.loader import DetectionDataset, make_loader
    from hftrain.data.ram_cache import RamCache, cache_bytes, output_sizes
    from hftrain.data.sources import load_split
    from hftrain.data.transforms import Resize
    from hftrain.recipe import DataConfig

    torch.set_num_threads(1)
    max_size = min_size if resize_kind == "square" else round(min_size * 1333 / 800)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "images"
        labels = write_jpegs(folder, images)
        split = load_split("coco", str(folder), str(labels))
        resize = Resize(min_size, max_size, square=resize_kind == "square")
        sizes = output_sizes(split.dataset, resize)
        cache = RamCache.allocate(sizes, "bench")
        cfg = DataConfig(num_workers=workers, min_size=min_size, max_size=max_size, resize=resize_kind)
        sides = {"uncached": DetectionDataset(split, resize, hflip=0.5),
                 "cached": DetectionDataset(split, resize, hflip=0.5, cache=cache)}
        rates: dict[str, list[float]] = {}
        for name, dataset in sides.items():
            loader = make_loader(dataset, batch_size, replace(cfg, cache="ram" if name == "cached" else "none"),
                                 shuffle=True, normalize_by_canvas=False, seed=0)
            rates[name] = []
            for epoch in (1, 2):
                loader.sampler.set_epoch(epoch)
                rates[name].append(batches_per_second(loader))
            del loader  # its workers stop before the other side's start
        held = os.fstat(cache.fd).st_blocks * 512
        estimate = cache_bytes(sizes)

    mib = 2 ** 20
    rows = [
        row("ram cache", f"second epoch, {images} 1280x720 JPEGs -> {sizes[0][0]}x{sizes[0][1]}, batch {batch_size}, "
            f"{workers} worker(s): batches/s", rates["cached"][1], rates["uncached"][1], "batches/s",
            higher_is_better=True, target="(informational)",
            note=f"first epoch (filling): cached {rates['cached'][0]:.2f} vs uncached {rates['uncached'][0]:.2f} "
                 "batches/s", extra={"cached": rates["cached"], "uncached": rates["uncached"]}),
    ]
    notes = [f"cache: estimate {estimate / mib:.1f} MiB, held once full {held / mib:.1f} MiB "
             f"(one copy for {workers} worker(s); {images} images x 3 x {sizes[0][0]} x {sizes[0][1]} "
             f"= {images * 3 * int(sizes[0][0]) * int(sizes[0][1]) / mib:.1f} MiB of pixels)"]
    return rows, notes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--min-size", type=int, default=640)
    parser.add_argument("--resize", choices=["square", "shortest_edge"], default="square")
    parser.add_argument("--json", help="write the rows here (for bench/run_all.py)")
    args = parser.parse_args()
    rows, notes = run(args.images, args.workers, args.batch_size, args.min_size, args.resize)
    emit(rows, args.json, notes)


if __name__ == "__main__":
    main()
