"""The evaluator's numbers equal pycocotools run directly on the same predictions."""

from __future__ import annotations

import contextlib
import gc
import io
import json

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from helpers.fixtures_path import fixtures_dir
from hftrain.metrics.coco_eval import STAT_NAMES, CocoEvaluator
from hftrain.data.formats.coco import read_coco
from hftrain.data.schema import class_names_of


def noisy_predictions(gt: dict, seed: int) -> list[dict]:
    """Jittered copies of the ground-truth boxes, some missed, plus false positives, in COCO results format."""
    rng = np.random.default_rng(seed)
    results = []
    cat_ids = [c["id"] for c in gt["categories"]]
    for ann in gt["annotations"]:
        if rng.random() < 0.2:
            continue
        x, y, w, h = ann["bbox"]
        jitter = rng.normal(0, 0.08, 4) * [w, h, w, h]
        results.append({"image_id": ann["image_id"], "category_id": ann["category_id"],
                        "bbox": [x + jitter[0], y + jitter[1], max(1, w + jitter[2]), max(1, h + jitter[3])],
                        "score": float(rng.uniform(0.3, 1.0))})
    for image in gt["images"]:
        for _ in range(5):
            w, h = rng.uniform(10, 100, 2)
            results.append({"image_id": image["id"], "category_id": int(rng.choice(cat_ids)),
                            "bbox": [float(rng.uniform(0, image["width"] - w)), float(rng.uniform(0, image["height"] - h)),
                                     float(w), float(h)], "score": float(rng.uniform(0, 0.5))})
    return results


def pycocotools_stats(annotation_file, results) -> np.ndarray:
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(annotation_file))
        dt = gt.loadRes(results)
        evaluation = COCOeval(gt, dt, "bbox")
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    return evaluation.stats


def to_our_predictions(results: list[dict], label_of_category: dict[int, int]) -> list[dict]:
    per_image: dict[int, dict] = {}
    for r in results:
        entry = per_image.setdefault(r["image_id"], {"image_id": r["image_id"], "boxes": [], "scores": [], "labels": []})
        x, y, w, h = r["bbox"]
        entry["boxes"].append([x, y, x + w, y + h])
        entry["scores"].append(r["score"])
        entry["labels"].append(label_of_category[r["category_id"]])
    return list(per_image.values())


@pytest.mark.parametrize("backend", ["pycocotools", "faster_coco_eval"])
def test_equals_pycocotools_on_the_real_coco_fixture(backend):
    annotation_file = fixtures_dir() / "coco" / "test_coco.json"
    gt = json.loads(annotation_file.read_text())
    dataset, _ = read_coco(fixtures_dir() / "coco", annotation_file)
    results = noisy_predictions(gt, seed=0)
    label_of_category = {c["id"]: i for i, c in enumerate(sorted(gt["categories"], key=lambda c: c["id"]))}
    ours = CocoEvaluator(dataset, ["person"], backend=backend).evaluate(to_our_predictions(results, label_of_category))
    reference = pycocotools_stats(annotation_file, results)
    assert 0.2 < reference[0] < 0.95  # a case where the numbers mean something
    for name, value in zip(STAT_NAMES, reference):
        assert ours[name] == pytest.approx(value, abs=1e-12), name


def test_non_contiguous_categories_and_crowd_regions(tmp_path):
    # category ids 3 and 7 (not contiguous), one crowd box that a detection falls into
    gt = {
        "images": [{"id": 1, "file_name": "a.jpg", "width": 200, "height": 100},
                   {"id": 2, "file_name": "b.jpg", "width": 200, "height": 100}],
        "categories": [{"id": 7, "name": "truck"}, {"id": 3, "name": "car"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 3, "bbox": [10, 10, 50, 40], "area": 2000, "iscrowd": 0},
            {"id": 2, "image_id": 1, "category_id": 7, "bbox": [100, 20, 60, 60], "area": 3600, "iscrowd": 0},
            {"id": 3, "image_id": 2, "category_id": 3, "bbox": [0, 0, 120, 90], "area": 10800, "iscrowd": 1},
            {"id": 4, "image_id": 2, "category_id": 7, "bbox": [130, 10, 60, 80], "area": 4800, "iscrowd": 0},
        ],
    }
    for name in ("a.jpg", "b.jpg"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    dataset, _ = read_coco(tmp_path, tmp_path / "gt.json")
    names = class_names_of(dataset)
    assert names == ["car", "truck"]  # ordered by category id
    results = [
        {"image_id": 1, "category_id": 3, "bbox": [12, 11, 48, 40], "score": 0.9},
        {"image_id": 1, "category_id": 7, "bbox": [100, 20, 30, 60], "score": 0.8},
        {"image_id": 2, "category_id": 3, "bbox": [20, 20, 30, 30], "score": 0.95},  # inside the crowd region
        {"image_id": 2, "category_id": 7, "bbox": [131, 12, 58, 77], "score": 0.7},
        {"image_id": 2, "category_id": 3, "bbox": [150, 50, 20, 20], "score": 0.6},  # a false positive
    ]
    ours = CocoEvaluator(dataset, names).evaluate(to_our_predictions(results, {3: 0, 7: 1}))
    reference = pycocotools_stats(tmp_path / "gt.json", results)
    for name, value in zip(STAT_NAMES, reference):
        assert ours[name] == pytest.approx(value, abs=1e-12), name
    assert ours["ap_car"] != ours["ap_truck"]


def test_duplicate_images_are_refused():
    dataset, _ = read_coco(fixtures_dir() / "coco", fixtures_dir() / "coco" / "test_coco.json")
    image_id = dataset[0]["image_id"]
    pred = {"image_id": image_id, "boxes": [[0, 0, 10, 10]], "scores": [0.5], "labels": [0]}
    with pytest.raises(ValueError, match="more than once"):
        CocoEvaluator(dataset, ["person"]).evaluate([pred, dict(pred)])


def test_predictions_to_coco_converts_every_box_and_refuses_mismatched_lengths():
    from hftrain.metrics.coco_eval import predictions_to_coco

    predictions = [
        {"image_id": 7, "boxes": [[10.0, 20.0, 40.0, 60.0], [0.5, 1.5, 2.5, 4.0]], "scores": [0.9, 0.1], "labels": [2, 0]},
        {"image_id": 8, "boxes": [], "scores": [], "labels": []},  # an image without detections
        {"image_id": 9, "boxes": [[1.0, 1.0, 2.0, 3.0]], "scores": [0.5], "labels": [1]},
    ]
    assert predictions_to_coco(predictions) == [
        {"image_id": 7, "category_id": 2, "bbox": [10.0, 20.0, 30.0, 40.0], "score": 0.9},
        {"image_id": 7, "category_id": 0, "bbox": [0.5, 1.5, 2.0, 2.5], "score": 0.1},
        {"image_id": 9, "category_id": 1, "bbox": [1.0, 1.0, 1.0, 2.0], "score": 0.5},
    ]
    assert predictions_to_coco([]) == []
    with pytest.raises(ValueError, match="as many boxes as scores"):
        predictions_to_coco([{"image_id": 1, "boxes": [[0, 0, 1, 1]], "scores": [0.1, 0.2], "labels": [0, 0]}])


@pytest.mark.parametrize("backend", ["pycocotools", "faster_coco_eval"])
def test_detections_index_holds_what_loadres_builds(backend):
    """Our one-pass detections object carries, for every box, the fields and values loadRes gives it."""
    from hftrain.metrics.coco_eval import detections_index, predictions_to_coco

    dataset, _ = read_coco(fixtures_dir() / "coco", fixtures_dir() / "coco" / "test_coco.json")
    evaluator = CocoEvaluator(dataset, ["person"], backend=backend)
    coco_cls, _ = evaluator._classes()
    gt = coco_cls()
    gt.dataset = evaluator.gt_dict
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
        gt_json = json.loads((fixtures_dir() / "coco" / "test_coco.json").read_text())
        predictions = to_our_predictions(noisy_predictions(gt_json, seed=1), {1: 0})
        ours = detections_index(coco_cls, gt, predictions)
        reference = gt.loadRes(predictions_to_coco(predictions))
    assert len(ours.anns) == len(reference.anns) > 20
    fields = ("image_id", "category_id", "bbox", "score", "area", "id", "iscrowd")
    for ann_id, ref in reference.anns.items():
        assert {k: ours.anns[ann_id][k] for k in fields} == {k: ref[k] for k in fields}
    assert sorted(ours.imgs) == sorted(reference.imgs) and sorted(ours.cats) == sorted(reference.cats)


def test_repeated_evaluations_and_unknown_images():
    """The ground truth is indexed once per evaluator: evaluating other predictions in between changes
    nothing; predictions for an image outside the ground truth are refused with the id named."""
    dataset, _ = read_coco(fixtures_dir() / "coco", fixtures_dir() / "coco" / "test_coco.json")
    gt_json = json.loads((fixtures_dir() / "coco" / "test_coco.json").read_text())
    first = to_our_predictions(noisy_predictions(gt_json, seed=2), {1: 0})
    second = to_our_predictions(noisy_predictions(gt_json, seed=3), {1: 0})
    evaluator = CocoEvaluator(dataset, ["person"], backend="faster_coco_eval")
    a, b, again = evaluator.evaluate(first), evaluator.evaluate(second), evaluator.evaluate(first)
    assert a == again and b == CocoEvaluator(dataset, ["person"], backend="faster_coco_eval").evaluate(second)
    assert a["map"] != b["map"]
    stray = {"image_id": 987654321, "boxes": [[0, 0, 10, 10]], "scores": [0.5], "labels": [0]}
    with pytest.raises(ValueError, match="not in the evaluated ground truth, e.g. 987654321"):
        evaluator.evaluate(first + [stray])
    assert gc.isenabled()  # the garbage collector, paused during an evaluation, is back on after a failed one


@pytest.mark.parametrize("backend", ["pycocotools", "faster_coco_eval"])
def test_voc_difficult_boxes_are_ignore_regions(backend):
    # mmdetection's VOC-to-COCO convention: a difficult box is a crowd (ignore) region. A detector that
    # finds every non-difficult box of the VOC fixtures exactly scores 1, whether or not it also
    # finds the difficult ones (before: AP50 0.944, the difficult boxes counted as missed).
    from hftrain.data.formats.voc import VOC_CLASSES, read_voc
    from hftrain.data.schema import objects_of

    dataset, _ = read_voc(fixtures_dir() / "voc" / "VOCdevkit", ["2007/trainval", "2012/trainval"])
    rows = list(dataset)
    assert sum(o["difficult"] for row in rows for o in objects_of(row)) >= 2

    def perfect(with_difficult: bool) -> list[dict]:
        out = []
        for row in rows:
            kept = [o for o in objects_of(row) if with_difficult or not o["difficult"]]
            out.append({"image_id": row["image_id"], "scores": [1.0] * len(kept), "labels": [o["category"] for o in kept],
                        "boxes": [[x, y, x + w, y + h] for x, y, w, h in (o["bbox"] for o in kept)]})
        return out

    evaluator = CocoEvaluator(dataset, VOC_CLASSES, backend=backend)
    for with_difficult in (False, True):
        metrics = evaluator.evaluate(perfect(with_difficult))
        assert metrics["map_50"] == pytest.approx(1.0) and metrics["map"] == pytest.approx(1.0), with_difficult
