"""Benchmark: RetinaNet learns the shapes demo on a CPU (target: mAP@0.5 above 0.5 in a few minutes).

    python bench/bench_retinanet_shapes.py [--threads N] [key=value ...]

Trains ``recipes/retinanet_shapes.yaml`` (overrides apply, e.g. ``train.epochs=8 model.norm=bn``)
through the ordinary loop into a temporary run directory, then prints the final VOC AP@0.5
(11-point and all-point), COCO AP50 and mAP@[.5:.95], the training wall time, and inference
images/s on the validation set. The figures depend on the machine: say which one you ran on.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("overrides", nargs="*", help="recipe overrides, key=value")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads (default 1: on a CPU shared with other jobs, two threads "
                             "fighting for a busy core can make a step 10-20x slower)")
    parser.add_argument("--recipe", default=str(REPO / "recipes" / "retinanet_shapes.yaml"))
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from hftrain.recipe import load_recipe
    from hftrain.tools.throughput import measure_inference
    from hftrain.train import train

    with tempfile.TemporaryDirectory(prefix="bench_retinanet_") as tmp:
        overrides = [f"output_dir={tmp}/run", f"data.synthetic.out_dir={tmp}/shapes", "log.tensorboard=false",
                     *args.overrides]
        recipe = load_recipe(args.recipe, overrides)
        start = time.perf_counter()
        metrics = train(recipe)
        seconds = time.perf_counter() - start
        speed = measure_inference(f"{tmp}/run", "model")
    cpu = platform.processor() or platform.machine()
    print("\n== bench_retinanet_shapes")
    print(f"machine        : {cpu}, {os.cpu_count()} logical CPUs, torch threads {torch.get_num_threads()}, "
          f"load average {os.getloadavg()[0]:.1f}")
    print(f"recipe         : {args.recipe} {' '.join(args.overrides)}")
    print(f"model          : norm={recipe.model.norm}, epochs={recipe.train.epochs}, batch={recipe.train.batch_size}, "
          f"image {recipe.data.min_size}px")
    print(f"VOC07 mAP@0.5  : {metrics['voc07_map']:.4f} (11-point)")
    print(f"VOC mAP@0.5    : {metrics['voc_map']:.4f} (all-point)")
    print(f"COCO AP50      : {metrics['map_50']:.4f}   mAP@[.5:.95] {metrics['map']:.4f}")
    print(f"training time  : {seconds:.0f} s (evaluations included)")
    print(f"inference      : {speed['images_per_s']:.1f} images/s (batch {speed['inference_batch_size']}, "
          f"{speed['inference_device']})")
    print(f"target         : mAP@0.5 > 0.5 -> {'met' if metrics['voc_map'] > 0.5 else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
