"""VOC AP on hand-computed cases, and against pycocotools where the two must agree."""

from __future__ import annotations

import contextlib
import io
import math
import random

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from hftrain.metrics.voc_eval import pairwise_iou, voc_evaluate

# One image, class 0: three ground-truth boxes and four detections, in score order:
#   0.9 on g1 -> TP          tp 1 fp 0   recall 1/3 precision 1
#   0.8 on g1 again -> FP    tp 1 fp 1   recall 1/3 precision 1/2   (duplicate)
#   0.7 on g2 -> TP          tp 2 fp 1   recall 2/3 precision 2/3
#   0.6 on nothing -> FP     tp 2 fp 2   recall 2/3 precision 1/2
# g3 is never found.
# All-point: envelope 1 up to recall 1/3, 2/3 up to 2/3, then 0:  1/3 * 1 + 1/3 * 2/3 = 5/9.
# 11-point: t = 0, .1, .2, .3 -> 1; t = .4, .5, .6 -> 2/3; t = .7 ... 1 -> 0:  (4 + 3 * 2/3) / 11 = 6/11.
GT = {
    "boxes": [[0, 0, 10, 10], [20, 20, 30, 30], [40, 40, 50, 50]],
    "labels": [0, 0, 0],
    "difficult": [False, False, False],
}
PRED = {
    "boxes": [[0, 0, 10, 10], [0, 0, 10, 10], [20, 20, 30, 30], [60, 60, 70, 70]],
    "scores": [0.9, 0.8, 0.7, 0.6],
    "labels": [0, 0, 0, 0],
}


def _with(base: dict, **extra: list) -> dict:
    return {key: list(base[key]) + list(extra.get(key, [])) for key in base}


def test_hand_computed_all_point_and_11_point() -> None:
    result = voc_evaluate([GT], [PRED], ["cat"], use_07_metric=False)
    assert result.ap["cat"] == pytest.approx(5 / 9)
    np.testing.assert_allclose(result.recall["cat"], [1 / 3, 1 / 3, 2 / 3, 2 / 3])
    np.testing.assert_allclose(result.precision["cat"], [1, 1 / 2, 2 / 3, 1 / 2])
    assert result.npos["cat"] == 3
    assert voc_evaluate([GT], [PRED], ["cat"], use_07_metric=True).ap["cat"] == pytest.approx(6 / 11)


def test_difficult_boxes_count_neither_way() -> None:
    # a difficult box, found by the best detection and by a duplicate: both are ignored
    gt = _with(GT, boxes=[[80, 80, 90, 90]], labels=[0], difficult=[True])
    pred = _with(PRED, boxes=[[80, 80, 90, 90], [81, 80, 90, 90]], scores=[0.95, 0.5], labels=[0, 0])
    result = voc_evaluate([gt], [pred], ["cat"], use_07_metric=False)
    assert result.npos["cat"] == 3
    assert result.ap["cat"] == pytest.approx(5 / 9)
    # the same box not difficult: npos 4 and the 0.95 detection is a TP, the 0.5 one a duplicate
    #   recall .25 .5 .5 .75 .75 .75, precision 1 1 2/3 3/4 3/5 1/2 -> AP .25 + .25 + .25 * .75
    gt["difficult"][-1] = False
    assert voc_evaluate([gt], [pred], ["cat"], use_07_metric=False).ap["cat"] == pytest.approx(0.6875)


def test_plus_one_convention_decides_borderline_matches() -> None:
    gt = {"boxes": [[0, 0, 9, 9]], "labels": [0]}
    pred = {"boxes": [[3, 0, 12, 9]], "scores": [0.9], "labels": [0]}
    # inclusive pixels: 10x10 boxes overlapping 7x10 -> 70 / 130 = 0.538 > 0.5: a TP
    # continuous: 9x9 boxes overlapping 6x9 -> 54 / 108 = 0.5, not > 0.5: a FP
    box, others = np.array(pred["boxes"][0], float), np.array(gt["boxes"], float)
    assert pairwise_iou(box, others, plus_one=True)[0] == pytest.approx(70 / 130)
    assert pairwise_iou(box, others, plus_one=False)[0] == pytest.approx(0.5)
    assert voc_evaluate([gt], [pred], ["a"], use_07_metric=False).ap["a"] == 1.0
    assert voc_evaluate([gt], [pred], ["a"], use_07_metric=False, plus_one=False).ap["a"] == 0.0


def test_ranking_across_images_and_classes_without_data() -> None:
    gts = [
        {"boxes": [[0, 0, 10, 10]], "labels": [0]},
        {"boxes": [[0, 0, 10, 10], [50, 50, 60, 60]], "labels": [0, 2]},
    ]
    preds = [
        {"boxes": [[30, 30, 40, 40]], "scores": [0.9], "labels": [0]},  # FP ranked first
        {"boxes": [[0, 0, 10, 10], [0, 0, 10, 10]], "scores": [0.8, 0.7], "labels": [0, 1]},
    ]
    # class 0 in rank order: FP (image 0), TP (image 1); g of image 0 missed
    #   recall 0, 1/2; precision 0, 1/2 -> all-point AP = 1/2 * 1/2 = 1/4
    # class 1: one FP, no ground truth -> AP undefined, left out of the mean
    # class 2: ground truth but no detection -> AP 0
    result = voc_evaluate(gts, preds, ["a", "b", "c"], use_07_metric=False)
    assert result.ap["a"] == pytest.approx(0.25)
    assert math.isnan(result.ap["b"])
    assert result.ap["c"] == 0.0
    assert result.mean_ap == pytest.approx(0.125)


def _separated_case(seed: int, num_images: int = 25, num_classes: int = 3):
    """Ground truth on a 4x4 grid of 100-pixel cells (at most one box per cell), detections
    jittered around them or placed in empty cells, so that no detection overlaps two boxes
    and VOC's and COCO's matching rules (best box vs best free box) cannot differ."""
    rng = random.Random(seed)
    gts, preds = [], []
    for _ in range(num_images):
        cells = rng.sample(range(16), 8)
        gt = {"boxes": [], "labels": []}
        pred = {"boxes": [], "scores": [], "labels": []}
        for n, cell in enumerate(cells):
            x0, y0 = 100 * (cell % 4), 100 * (cell // 4)
            w, h = rng.uniform(30, 70), rng.uniform(30, 70)
            box = [x0 + 10, y0 + 10, x0 + 10 + w, y0 + 10 + h]
            label = rng.randrange(num_classes)
            if n < 5:  # a real object, found 0-2 times (duplicates), sometimes badly
                gt["boxes"].append(box)
                gt["labels"].append(label)
                for _ in range(rng.choice([0, 1, 1, 1, 2])):
                    jitter = rng.uniform(-15, 15)
                    pred["boxes"].append([box[0] + jitter, box[1], box[2] + jitter, box[3] + rng.uniform(-10, 10)])
                    pred["scores"].append(rng.random())
                    pred["labels"].append(label if rng.random() < 0.9 else (label + 1) % num_classes)
            elif n < 7:  # a detection on background
                pred["boxes"].append(box)
                pred["scores"].append(rng.random())
                pred["labels"].append(label)
        gts.append(gt)
        preds.append(pred)
    return gts, preds


def _coco_eval(gts, preds, num_classes: int) -> COCOeval:
    images = [{"id": i + 1, "width": 400, "height": 400} for i in range(len(gts))]
    annotations, results = [], []
    for i, (gt, pred) in enumerate(zip(gts, preds)):
        for (x1, y1, x2, y2), label in zip(gt["boxes"], gt["labels"]):
            annotations.append(
                {"id": len(annotations) + 1, "image_id": i + 1, "category_id": label + 1,
                 "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1), "iscrowd": 0}
            )
        for (x1, y1, x2, y2), score, label in zip(pred["boxes"], pred["scores"], pred["labels"]):
            results.append(
                {"image_id": i + 1, "category_id": label + 1, "bbox": [x1, y1, x2 - x1, y2 - y1], "score": score}
            )
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = {"images": images, "annotations": annotations,
                        "categories": [{"id": k + 1, "name": str(k)} for k in range(num_classes)]}
        coco.createIndex()
        evaluator = COCOeval(coco, coco.loadRes(results), "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return evaluator


def _coco_101_point(recall: np.ndarray, precision: np.ndarray) -> float:
    """COCOeval.accumulate's interpolation applied to our curve."""
    envelope = np.maximum.accumulate(precision[::-1])[::-1]
    thresholds = np.linspace(0.0, 1.00, int(np.round((1.00 - 0.0) / 0.01)) + 1, endpoint=True)
    index = np.searchsorted(recall, thresholds, side="left")
    return float(np.mean([envelope[i] if i < len(envelope) else 0.0 for i in index]))


@pytest.mark.parametrize("seed", range(3))
def test_all_point_ap_agrees_with_coco_ap50(seed: int) -> None:
    num_classes = 3
    gts, preds = _separated_case(seed, num_classes=num_classes)
    ours = voc_evaluate(gts, preds, ["0", "1", "2"], use_07_metric=False, plus_one=False)
    coco = _coco_eval(gts, preds, num_classes)
    # precision[T=IoU .5, R=101 recall points, K, A=all areas, M=100 detections]
    coco_ap50 = coco.eval["precision"][0, :, :, 0, 2].mean(axis=0)
    coco_recall = coco.eval["recall"][0, :, 0, 2]
    for k, name in enumerate(["0", "1", "2"]):
        # the same precision/recall curve: identical final recall and identical 101-point AP
        assert ours.recall[name][-1] == pytest.approx(coco_recall[k], abs=1e-12)
        assert _coco_101_point(ours.recall[name], ours.precision[name]) == pytest.approx(coco_ap50[k], abs=1e-12)
        # the all-point area and the 101-point average of the same non-increasing envelope on
        # [0, 1] differ by at most 1/100 (a Riemann-sum bound): a genuine, not tuned, tolerance
        assert abs(ours.ap[name] - coco_ap50[k]) <= 0.01
    assert abs(ours.mean_ap - coco.stats[1]) <= 0.01
    assert 0.2 < ours.mean_ap < 0.95  # a non-trivial case


def test_perfect_detections_score_one_in_both() -> None:
    gts, _ = _separated_case(5, num_images=5)
    preds = [
        {"boxes": g["boxes"], "scores": [0.5 + 0.01 * i for i in range(len(g["boxes"]))], "labels": g["labels"]}
        for g in gts
    ]
    assert voc_evaluate(gts, preds, ["0", "1", "2"], use_07_metric=False, plus_one=False).mean_ap == 1.0
    assert voc_evaluate(gts, preds, ["0", "1", "2"], use_07_metric=True).mean_ap == pytest.approx(1.0)
    assert _coco_eval(gts, preds, 3).stats[1] == pytest.approx(1.0)


def test_mismatched_image_counts_fail() -> None:
    with pytest.raises(ValueError, match="prediction images"):
        voc_evaluate([GT], [], ["cat"], use_07_metric=False)
