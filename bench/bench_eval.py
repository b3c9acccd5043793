"""Benchmark: COCO box evaluation, ours (``hftrain.metrics.coco_eval.CocoEvaluator``) against pycocotools.

Run: ``.venv/bin/python bench/bench_eval.py [--images 5000] [--detections 100] [--json PATH]``

The load: ``--images`` images (640x480) with about 7 ground-truth boxes each (COCO's average;
80 classes, 1% crowd), and ``--detections`` detections per image (jittered copies of the
ground truth plus random boxes, random scores), as a detector's top-100 output. Ours is timed
from the per-image prediction dicts a training run gathers (``evaluate(predictions)``: the
conversion to COCO results is inside the timing); pycocotools is called directly on the
already-converted result list (conversion not timed): ``COCO`` from the ground-truth dict,
``loadRes``, ``COCOeval`` evaluate / accumulate / summarize. The 12 statistics must be
identical; the table gives the largest absolute difference.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from report import emit, row  # noqa: E402

CLASSES = [f"class{i}" for i in range(80)]


def make_load(images: int, detections: int, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """Dataset rows in the project's schema and per-image predictions (xyxy boxes)."""
    rng = np.random.default_rng(seed)
    rows, predictions = [], []
    width, height = 640, 480
    for image_id in range(1, images + 1):
        n = rng.poisson(7)
        w = np.clip(rng.gamma(1.5, 60, n), 2, width - 1)
        h = np.clip(rng.gamma(1.5, 50, n), 2, height - 1)
        x = rng.uniform(0, width - w)
        y = rng.uniform(0, height - h)
        cats = rng.integers(0, len(CLASSES), n)
        crowd = rng.random(n) < 0.01
        rows.append({"image_id": image_id, "width": width, "height": height, "objects": [
            {"bbox": [float(x[i]), float(y[i]), float(w[i]), float(h[i])], "category": int(cats[i]),
             "area": 0.0, "iscrowd": int(crowd[i])} for i in range(n)]})
        # detections: up to 3 jittered copies of each box (some with the wrong class), then random boxes
        copies = min(detections, 3 * n)
        src = rng.integers(0, max(n, 1), copies) if n else np.zeros(0, dtype=int)
        jitter = rng.normal(0, 0.1, (copies, 4))
        bx = np.stack([x[src] + jitter[:, 0] * w[src], y[src] + jitter[:, 1] * h[src],
                       w[src] * (1 + jitter[:, 2]), h[src] * (1 + jitter[:, 3])], 1) if copies else np.zeros((0, 4))
        labels = np.where(rng.random(copies) < 0.8, cats[src], rng.integers(0, len(CLASSES), copies)) if copies \
            else np.zeros(0, dtype=int)
        rest = detections - copies
        rw, rh = rng.uniform(4, 300, rest), rng.uniform(4, 250, rest)
        rb = np.stack([rng.uniform(0, width - rw), rng.uniform(0, height - rh), rw, rh], 1)
        boxes = np.concatenate([bx, rb]) if copies else rb
        boxes[:, 2:] = np.maximum(boxes[:, 2:], 1.0)
        xyxy = np.concatenate([boxes[:, :2], boxes[:, :2] + boxes[:, 2:]], 1)
        scores = np.concatenate([rng.uniform(0.3, 1.0, copies), rng.uniform(0.0, 0.5, rest)])
        predictions.append({"image_id": image_id, "boxes": xyxy.tolist(), "scores": scores.tolist(),
                            "labels": np.concatenate([labels, rng.integers(0, len(CLASSES), rest)]).astype(int).tolist()})
    return rows, predictions


def timed(fn):
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - wall, time.process_time() - cpu


def pycocotools_direct(gt_dict: dict, results: list[dict]) -> np.ndarray:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = gt_dict
        gt.createIndex()
        dt = gt.loadRes(results)
        evaluation = COCOeval(gt, dt, "bbox")
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    return np.asarray(evaluation.stats)


def run(images: int, detections: int) -> tuple[list[dict], list[str]]:
    from hftrain.metrics.coco_eval import STAT_NAMES, CocoEvaluator, collector_paused, detections_index, ground_truth, \
        predictions_to_coco

    rows, predictions = make_load(images, detections)
    evaluator, _, init_s = timed(lambda: CocoEvaluator(rows, CLASSES, backend="faster_coco_eval"))
    ours, ours_wall, ours_cpu = timed(lambda: evaluator.evaluate(predictions))
    with collector_paused():  # where ours' time goes: the conversion to the backend's detections, again alone
        _, convert_s, _ = timed(lambda: detections_index(evaluator._classes()[0], evaluator.gt_index, predictions))
    reference = CocoEvaluator(rows, CLASSES, backend="pycocotools")  # our wrapper, reference backend
    results = predictions_to_coco(predictions)
    gt_dict = ground_truth(rows, CLASSES)
    stats, base_wall, base_cpu = timed(lambda: pycocotools_direct(gt_dict, results))
    ours_stats = np.array([ours[name] for name in STAT_NAMES])
    max_diff = float(np.abs(ours_stats - stats).max())
    load = f"{images:,} images x {detections} detections"
    out = [
        row("3 evaluation", f"COCO eval, {load}: wall time", ours_wall, base_wall, "s", higher_is_better=False,
            target=">= 10x faster, 12 stats identical", target_ratio=10.0,
            note=f"ours: faster-coco-eval backend incl. conversion from per-image dicts ({convert_s:.2f} s of it; "
                 f"the rest is faster-coco-eval's evaluate/accumulate); CPU s ours {ours_cpu:.1f} vs {base_cpu:.1f}",
            extra={"cpu_s_ours": ours_cpu, "cpu_s_baseline": base_cpu, "init_s": init_s, "convert_s": convert_s}),
        row("3 evaluation", "12 COCO statistics: max |ours - pycocotools|", max_diff, None, "", higher_is_better=False,
            target="0 (identical)", met=max_diff <= 1e-12,
            note="stats: " + ", ".join(f"{v:.4f}" for v in stats)),
    ]
    notes = [f"evaluation load: {load}, {sum(len(r['objects']) for r in rows):,} ground-truth boxes; "
             f"ground truth converted from the dataset rows once per run ({init_s:.2f} s, not in the timing; the "
             f"backend indexes it in the timed first evaluation, as pycocotools does in its timing)"]
    del reference
    return out, notes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--detections", type=int, default=100)
    parser.add_argument("--json", help="write the rows here (for bench/run_all.py)")
    args = parser.parse_args()
    rows, notes = run(args.images, args.detections)
    emit(rows, args.json, notes)


if __name__ == "__main__":
    main()
