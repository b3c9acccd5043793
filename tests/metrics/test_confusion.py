"""The confusion matrix, the confidence curves and the recommended threshold (hftrain.metrics.confusion)."""

from __future__ import annotations

import contextlib
import io

import numpy as np
import pytest

from hftrain.metrics.coco_eval import ground_truth, predictions_to_coco
from hftrain.metrics.confusion import ConfusionEvaluator, greedy_by_score

NAMES = ["cat", "dog", "bird"]
CAT, DOG, BIRD, BACKGROUND = 0, 1, 2, 3


def box(category, x, y, w, h, crowd=0):
    return {"bbox": [x, y, w, h], "category": category, "area": 0.0, "iscrowd": crowd}


def row(image_id, *objects):
    return {"image_id": image_id, "width": 400, "height": 400, "objects": list(objects)}


def xyxy(x, y, w, h):
    return [x, y, x + w, y + h]


def image(image_id, *detections):
    """``(label, score, xywh box)`` per detection."""
    return {"image_id": image_id, "labels": [d[0] for d in detections], "scores": [d[1] for d in detections],
            "boxes": [xyxy(*d[2]) for d in detections]}


ROWS = [
    row(1, box(CAT, 10, 10, 40, 40), box(DOG, 100, 100, 40, 40)),
    row(2, box(BIRD, 50, 50, 30, 30), box(DOG, 150, 10, 30, 30)),
    row(3, box(CAT, 0, 0, 100, 100, crowd=1), box(BIRD, 200, 200, 40, 40)),
    row(4, box(DOG, 300, 300, 50, 50), box(CAT, 305, 300, 50, 50)),
]
PREDICTIONS = [
    image(1, (CAT, 0.9, (10, 10, 40, 40)),  # correct
          (CAT, 0.8, (12, 12, 40, 40)),  # a duplicate of the cat: background false positive
          (CAT, 0.7, (101, 101, 40, 40))),  # a cat on the dog: wrong class
    image(2, (DOG, 0.6, (200, 200, 20, 20)),  # on nothing: background false positive; the bird is missed
          (DOG, 0.3, (150, 10, 30, 30))),  # the dog, below the threshold 0.5: the dog is missed
    image(3, (CAT, 0.95, (10, 10, 20, 20)),  # inside the cat crowd region: counted nowhere
          (DOG, 0.9, (10, 10, 20, 20)),  # a dog on the cat crowd region: background false positive (COCO: FP)
          (BIRD, 0.99, (200, 200, 40, 40))),  # correct
    image(4, (CAT, 0.9, (300, 300, 50, 50))),  # on the dog (IoU 1) and the cat (0.82): the cat, its own class, first
]


def test_the_matrix_counts_each_case_in_its_cell():
    evaluator = ConfusionEvaluator(ground_truth(ROWS, NAMES), NAMES, threshold=0.5)
    evaluator.evaluate(PREDICTIONS)
    report = evaluator.last
    # rows predicted (cat, dog, bird, background), columns true (cat, dog, bird, background)
    assert report.matrix.tolist() == [
        [2, 1, 0, 1],  # cats: 2 correct, 1 on a dog, 1 duplicate
        [0, 0, 0, 2],  # dogs: one on nothing, one on the cat crowd region
        [0, 0, 1, 0],  # birds: 1 correct
        [0, 2, 1, 0],  # missed: the dog below the threshold and the dog under the cat of image 4; the bird of image 2
    ]
    assert report.ignored == 1 and report.threshold == 0.5 and report.threshold_source == "eval.confusion_threshold"
    # columns sum to the boxes of each class (the crowd region is no box); the normalised matrix divides columns
    assert report.matrix[:3].sum(axis=0)[:3].tolist() == [2, 1, 1] and report.boxes.tolist() == [2, 3, 2]
    assert report.normalized()[:, DOG].tolist() == pytest.approx([1 / 3, 0, 0, 2 / 3])
    assert report.normalized()[:, BACKGROUND].tolist() == pytest.approx([1 / 3, 2 / 3, 0, 0])
    saved = report.to_json()
    assert saved["counts"] == report.matrix.tolist() and saved["class_names"] == NAMES + ["background"]
    assert (saved["rows"], saved["columns"], saved["iou"]) == ("predicted class", "true class", 0.5)


def test_a_lower_threshold_lets_the_low_scored_dog_in():
    report = ConfusionEvaluator(ground_truth(ROWS, NAMES), NAMES, threshold=0.25)
    report.evaluate(PREDICTIONS)
    assert report.last.matrix[DOG].tolist() == [0, 1, 0, 2] and report.last.matrix[BACKGROUND].tolist() == [0, 1, 1, 0]


def test_the_recommended_threshold_maximises_the_mean_f1():
    # class a: 2 boxes; detections 0.9 hit, 0.7 false, 0.4 hit. class b: 1 box; 0.8 hit, 0.2 false.
    # mean F1 over (a, b): (0.8, 0.9] 1/3; (0.7, 0.8] 5/6; (0.4, 0.7] 3/4; (0.2, 0.4] (0.8 + 1) / 2 = 0.9;
    # [0, 0.2] (0.8 + 2/3) / 2. Best: 0.9 for thresholds 0.201 ... 0.400, whose middle is 0.300.
    rows = [row(1, box(0, 0, 0, 50, 50), box(0, 100, 0, 50, 50), box(1, 200, 200, 50, 50))]
    predictions = [image(1, (0, 0.9, (0, 0, 50, 50)), (0, 0.7, (300, 0, 50, 50)), (0, 0.4, (100, 0, 50, 50)),
                         (1, 0.8, (200, 200, 50, 50)), (1, 0.2, (0, 300, 50, 50)))]
    evaluator = ConfusionEvaluator(ground_truth(rows, ["a", "b"]), ["a", "b"])
    metrics = evaluator.evaluate(predictions)
    assert metrics == pytest.approx({"f1_50": 0.9, "f1_threshold": 0.3})
    report = evaluator.last
    assert (report.recommended, report.threshold, report.threshold_source) == (0.3, 0.3, "recommended")
    assert report.at(0.3) == pytest.approx(((2 / 3 + 1) / 2, 1.0, 0.9))
    j = {t: int(round(t * 1000)) for t in (0.1, 0.5, 0.85, 0.95)}
    assert report.precision[0, [j[0.1], j[0.5], j[0.95]]].tolist() == pytest.approx([2 / 3, 1 / 2, 1.0])  # none: 1
    assert report.recall[1, [j[0.1], j[0.5], j[0.85]]].tolist() == [1.0, 1.0, 0.0]
    assert report.matrix.tolist() == [[2, 0, 1], [0, 1, 0], [0, 0, 0]]  # at 0.3: b's false positive (0.2) is below


def test_without_any_hit_nothing_is_recommended_and_the_matrix_uses_0_5():
    rows = [row(1, box(0, 0, 0, 50, 50))]
    evaluator = ConfusionEvaluator(ground_truth(rows, ["a"]), ["a"])
    metrics = evaluator.evaluate([image(1, (0, 0.7, (200, 200, 50, 50)), (0, 0.4, (300, 300, 50, 50)))])
    assert metrics == {"f1_50": 0.0, "f1_threshold": -1.0}
    assert evaluator.last.recommended is None and evaluator.last.threshold_source == "default"
    assert evaluator.last.matrix.tolist() == [[0, 1], [1, 0]]
    assert "no recommended score threshold" in evaluator.last.describe()


def test_no_detections_at_all_miss_every_box():
    """An evaluation without a single detection (RetinaNet early in training keeps none above its score threshold)."""
    rows = [row(1, box(0, 0, 0, 50, 50), box(1, 60, 60, 20, 20))]
    evaluator = ConfusionEvaluator(ground_truth(rows, ["a", "b"]), ["a", "b"])
    metrics = evaluator.evaluate([image(1)])
    assert metrics == {"f1_50": 0.0, "f1_threshold": -1.0}
    assert evaluator.last.matrix.tolist() == [[0, 0, 0], [0, 0, 0], [1, 1, 0]]  # both boxes missed


def test_predictions_for_an_unknown_image_are_an_error():
    evaluator = ConfusionEvaluator(ground_truth(ROWS, NAMES), NAMES)
    with pytest.raises(ValueError, match="image ids not in the evaluated ground truth, e.g. 99"):
        evaluator.evaluate([image(99, (CAT, 0.5, (0, 0, 5, 5)))])


def greedy_one_at_a_time(det, gt, overlap, rank):
    """The reference: detections in rank order, each takes its free box of highest IoU (ties: the later box)."""
    taken_by, taken = {}, set()
    for d in sorted(set(det.tolist()), key=lambda d: rank[d]):
        options = [(overlap[i], gt[i]) for i in np.flatnonzero(det == d) if gt[i] not in taken]
        if options:
            best = max(options)[1]
            taken_by[d] = best
            taken.add(best)
    return taken_by


@pytest.mark.parametrize("seed", range(5))
def test_matching_in_rounds_equals_matching_one_detection_at_a_time(seed):
    rng = np.random.default_rng(seed)
    n_det, n_gt, n_pairs = 60, 25, 300
    det, gt = rng.integers(0, n_det, n_pairs), rng.integers(0, n_gt, n_pairs)
    unique = np.unique(det * n_gt + gt)
    det, gt = unique // n_gt, unique % n_gt
    overlap = rng.choice([0.5, 0.6, 0.7, 0.8, 0.9], len(det))  # ties on purpose
    rank = rng.permutation(n_det)
    taken_by = greedy_by_score(det, gt, overlap, rank, n_gt)
    assert {d: int(g) for d, g in enumerate(taken_by) if g >= 0} == greedy_one_at_a_time(det, gt, overlap, rank)


def noisy_load(seed: int, images: int = 60, classes: int = 4):
    """Rows with crowd boxes and predictions with jittered hits, wrong classes, duplicates and noise."""
    rng = np.random.default_rng(seed)
    rows, predictions = [], []
    for image_id in range(1, images + 1):
        n = rng.integers(0, 8)
        xywh = np.c_[rng.uniform(0, 300, (n, 2)), rng.uniform(10, 100, (n, 2))]
        cats = rng.integers(0, classes, n)
        crowd = rng.random(n) < 0.1
        rows.append(row(image_id, *(box(int(c), *map(float, b), crowd=int(k)) for c, b, k in zip(cats, xywh, crowd))))
        src = rng.integers(0, max(n, 1), 2 * n) if n else np.zeros(0, int)
        jitter = xywh[src] + rng.normal(0, 0.12, (len(src), 4)) * np.c_[xywh[src, 2:], xywh[src, 2:]]
        noise = np.c_[rng.uniform(0, 300, (10, 2)), rng.uniform(10, 100, (10, 2))]
        boxes = np.concatenate([jitter, noise])
        boxes[:, 2:] = np.maximum(boxes[:, 2:], 1)
        labels = np.r_[np.where(rng.random(len(src)) < 0.8, cats[src], rng.integers(0, classes, len(src))),
                       rng.integers(0, classes, 10)]
        predictions.append({"image_id": image_id, "boxes": [xyxy(*b) for b in boxes.tolist()],
                            "scores": np.round(rng.uniform(0, 1, len(boxes)), 2).tolist(),  # ties in score too
                            "labels": labels.astype(int).tolist()})
    return rows, predictions, [f"c{i}" for i in range(classes)]


@pytest.mark.parametrize("seed", range(2))
def test_hits_and_ignored_detections_are_pycocotools_matches_at_iou_0_5(seed):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    rows, predictions, names = noisy_load(seed)
    gt_dict = ground_truth(rows, names)
    evaluator = ConfusionEvaluator(gt_dict, names, threshold=0.0)
    evaluator.evaluate(predictions)
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = gt_dict
        gt.createIndex()
        evaluation = COCOeval(gt, gt.loadRes(predictions_to_coco(predictions)), "bbox")
        evaluation.evaluate()
    hits, ignored = set(), set()
    for entry in evaluation.evalImgs:
        if entry is None or entry["aRng"] != [0, 1e10]:
            continue
        for dt_id, match, ignore in zip(entry["dtIds"], entry["dtMatches"][0], entry["dtIgnore"][0]):
            (ignored if ignore else hits if match else set()).add(dt_id)
    report = evaluator.last
    # at threshold 0 the matrix's diagonal is COCO's true positives per class, and its ignored detections COCO's
    labels = np.concatenate([p["labels"] for p in predictions])
    per_class = np.bincount(labels[np.asarray(sorted(hits)) - 1], minlength=len(names))
    assert np.diag(report.matrix)[:-1].tolist() == per_class.tolist()
    assert report.ignored == len(ignored) > 0
    # every column sums to the class's boxes; every row to the class's detections that are not ignored
    assert report.matrix[:, :-1].sum(axis=0).tolist() == report.boxes.tolist()
    k = len(names)
    counted = np.bincount(labels, minlength=k) - np.bincount(labels[np.asarray(sorted(ignored)) - 1], minlength=k)
    assert report.matrix[:-1].sum(axis=1).tolist() == counted.tolist()
    assert report.matrix[:-1, :-1].sum() - np.trace(report.matrix) > 0  # some wrong-class matches in the load
    # recall at threshold 0 is COCO's: hits over boxes
    assert report.recall[:, 0].tolist() == pytest.approx((per_class / report.boxes).tolist())


def test_a_confusion_threshold_outside_0_1_is_a_recipe_problem(tmp_path):
    from conftest import write_recipe
    from hftrain.recipe import RecipeError, load_recipe

    (tmp_path / "images").mkdir()
    (tmp_path / "labels.json").write_text("{}")
    split = {"images": str(tmp_path / "images"), "labels": str(tmp_path / "labels.json")}
    path = write_recipe(tmp_path / "r.yaml", {"data": {"train": split, "val": split}, "eval": {"confusion_threshold": 1.5}})
    with pytest.raises(RecipeError, match=r"eval\.confusion_threshold: must be in \[0, 1\] or null, got 1\.5"):
        load_recipe(path)
    assert load_recipe(path, ["eval.confusion_threshold=0.25"]).eval.confusion_threshold == 0.25


def test_the_threshold_goes_into_the_saved_config_of_the_exported_weights_and_leaves_when_none(tmp_path):
    """With the EMA on, best/ and model/ save the average (``run.export``): the attribute must be on its config."""
    from torch import nn
    from transformers import PretrainedConfig, PreTrainedModel

    from hftrain.engine.checkpoints import save_pretrained_dir
    from hftrain.engine.ema import ModelEma
    from hftrain.engine.evaluation import set_score_threshold
    from hftrain.models.detector import Detector

    class Net(PreTrainedModel):
        config_class = PretrainedConfig

        def __init__(self, config):
            super().__init__(config)
            self.linear = nn.Linear(2, 2)
            self.post_init()

    detector = Detector(model=Net(PretrainedConfig()), postprocess=None)
    export = ModelEma(detector.model, decay=0.9, warmups=2).as_detector(detector)
    set_score_threshold(export, {"map": 0.1, "f1_50": 0.6, "f1_threshold": 0.35})
    save_pretrained_dir(export, tmp_path / "best")
    assert Net.from_pretrained(tmp_path / "best").config.hftrain_score_threshold == 0.35
    assert not hasattr(detector.model.config, "hftrain_score_threshold")  # the trained copy is not what is saved
    set_score_threshold(export, {"map": 0.0, "f1_50": 0.0, "f1_threshold": -1.0})  # a later evaluation finds nothing
    save_pretrained_dir(export, tmp_path / "model")
    assert "hftrain_score_threshold" not in (tmp_path / "model" / "config.json").read_text()
