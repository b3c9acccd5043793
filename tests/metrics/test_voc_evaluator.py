"""VocEvaluator: the loop's glue from dataset rows and gathered predictions to VOC AP."""

from __future__ import annotations

import math

import pytest

from hftrain.metrics.voc_eval import VocEvaluator


def obj(x1, y1, x2, y2, category, difficult=0, iscrowd=0):
    return {"bbox": [x1, y1, x2 - x1, y2 - y1], "category": category, "area": (x2 - x1) * (y2 - y1),
            "iscrowd": iscrowd, "difficult": difficult}


# Image 1, class 0 ("cat"): three boxes; detections in score order hit g1, g1 again (duplicate),
# g2, and nothing:  all-point AP = 1/3 * 1 + 1/3 * 2/3 = 5/9;  11-point = (4 + 3 * 2/3) / 11 = 6/11.
# Image 2: a difficult cat (its detection counts neither way) and one dog found exactly (AP 1).
# Image 3: one dog that nobody predicts -- and the image is missing from the predictions.
ROWS = [
    {"image_id": 1, "width": 100, "height": 100,
     "objects": [obj(0, 0, 10, 10, 0), obj(20, 20, 30, 30, 0), obj(40, 40, 50, 50, 0)]},
    {"image_id": 2, "width": 100, "height": 100,
     "objects": [obj(0, 0, 20, 20, 0, difficult=1), obj(50, 50, 90, 90, 1)]},
    {"image_id": 3, "width": 100, "height": 100, "objects": [obj(10, 10, 60, 60, 1)]},
]
PREDICTIONS = [
    {"image_id": 2, "boxes": [[0, 0, 20, 20], [50, 50, 90, 90]], "scores": [0.95, 0.5], "labels": [0, 1]},
    {"image_id": 1, "boxes": [[0, 0, 10, 10], [0, 0, 10, 10], [20, 20, 30, 30], [60, 60, 70, 70]],
     "scores": [0.9, 0.8, 0.7, 0.6], "labels": [0, 0, 0, 0]},
]


def test_known_numbers_with_difficult_objects_and_an_image_without_predictions():
    metrics = VocEvaluator(ROWS, ["cat", "dog"]).evaluate(PREDICTIONS)
    assert metrics["voc_ap_cat"] == pytest.approx(5 / 9)  # the difficult cat changed nothing
    assert metrics["voc07_ap_cat"] == pytest.approx(6 / 11)
    # dog: one hit out of two boxes at precision 1 -> recall 1/2
    assert metrics["voc_ap_dog"] == pytest.approx(0.5)
    assert metrics["voc07_ap_dog"] == pytest.approx(6 / 11)  # t = 0 ... 0.5
    assert metrics["voc_map"] == pytest.approx((5 / 9 + 0.5) / 2)
    assert metrics["voc07_map"] == pytest.approx(6 / 11)


def test_continuous_boxes_match_the_devkit_widths():
    # A VOC box xmin=11..xmax=20 (inclusive pixels) is the continuous [10, 20] in the rows.
    # A prediction [10, 10, 20, 15] covers half of it: IoU 0.5 is not > 0.5, so a miss; a
    # prediction a hair larger is a hit. With the devkit's +1 on these boxes it would be a hit.
    rows = [{"image_id": 7, "width": 50, "height": 50, "objects": [obj(10, 10, 20, 20, 0)]}]
    evaluator = VocEvaluator(rows, ["a"])
    miss = evaluator.evaluate([{"image_id": 7, "boxes": [[10, 10, 20, 15]], "scores": [1.0], "labels": [0]}])
    hit = evaluator.evaluate([{"image_id": 7, "boxes": [[10, 10, 20, 15.2]], "scores": [1.0], "labels": [0]}])
    assert miss["voc_map"] == 0.0 and hit["voc_map"] == 1.0


def test_crowd_boxes_are_ignored_and_classes_without_boxes_are_nan():
    rows = [{"image_id": 1, "width": 50, "height": 50,
             "objects": [obj(0, 0, 10, 10, 0, iscrowd=1), obj(20, 20, 40, 40, 0)]}]
    preds = [{"image_id": 1, "boxes": [[0, 0, 10, 10], [20, 20, 40, 40]], "scores": [0.9, 0.8], "labels": [0, 0]}]
    metrics = VocEvaluator(rows, ["a", "b"]).evaluate(preds)
    assert metrics["voc_ap_a"] == 1.0  # the crowd match is neither a TP nor an FP
    assert math.isnan(metrics["voc_ap_b"]) and metrics["voc_map"] == 1.0


def test_duplicate_or_unknown_images_fail():
    evaluator = VocEvaluator(ROWS, ["cat", "dog"])
    with pytest.raises(ValueError, match="more than once"):
        evaluator.evaluate(PREDICTIONS + PREDICTIONS[:1])
    with pytest.raises(ValueError, match="not in the ground truth"):
        evaluator.evaluate([{"image_id": 99, "boxes": [], "scores": [], "labels": []}])
