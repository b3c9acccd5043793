"""Benchmark: the confusion matrix, the P/R/F1-against-confidence curves and the recommended threshold
(``hftrain.metrics.confusion.ConfusionEvaluator``) on bench_eval.py's load.

Run: ``.venv/bin/python bench/bench_confusion.py [--images 5000] [--detections 100] [--json PATH]``

Timed from the per-image prediction dicts a training run gathers (``evaluate(predictions)``,
the conversion to arrays inside); the best of ``--repeats`` runs, one thread. No baseline: the
target is an absolute time (well under the COCO evaluation it follows).
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_eval import CLASSES, make_load, timed  # noqa: E402
from report import emit, row  # noqa: E402


def run(images: int, detections: int, repeats: int) -> tuple[list[dict], list[str]]:
    from hftrain.metrics.coco_eval import ground_truth
    from hftrain.metrics.confusion import ConfusionEvaluator

    rows, predictions = make_load(images, detections)
    evaluator, _, init_s = timed(lambda: ConfusionEvaluator(ground_truth(rows, CLASSES), CLASSES))
    walls, cpus = [], []
    for _ in range(repeats):
        metrics, wall, cpu = timed(lambda: evaluator.evaluate(predictions))
        walls.append(wall)
        cpus.append(cpu)
    load = f"{images:,} images x {detections} detections"
    out = [row("3 evaluation", f"confusion matrix + F1 curve, {load}: wall time", min(walls), None, "s",
               higher_is_better=False, target="< 2 s", met=min(walls) < 2.0,
               note=f"best of {repeats} ({', '.join(f'{w:.2f}' for w in walls)}; CPU s "
                    f"{', '.join(f'{c:.2f}' for c in cpus)}); {evaluator.last.describe()}",
               extra={"init_s": init_s, "cpu_s": min(cpus), **metrics})]
    return out, [f"load: {load}, {sum(len(r['objects']) for r in rows):,} ground-truth boxes, 80 classes"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--detections", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", help="write the rows here (for bench/run_all.py)")
    args = parser.parse_args()
    rows, notes = run(args.images, args.detections, args.repeats)
    emit(rows, args.json, notes)


if __name__ == "__main__":
    main()
