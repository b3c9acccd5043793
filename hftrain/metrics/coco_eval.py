"""COCO-style box evaluation of predictions against a dataset in the project's schema.

The ground truth is built from the dataset rows (so every source format is evaluated the same
way); crowd boxes are COCO ignore regions, and so are VOC ``difficult`` boxes (mmdetection's
VOC-to-COCO converter writes them with ``iscrowd: 1``): a detection on one counts neither as a hit
nor as a false positive, and missing one costs nothing. The VOC metric (``voc_eval``) keeps its own
difficult handling. Backends: pycocotools (the reference) or
faster-coco-eval (same statistics, much faster).
"""

from __future__ import annotations

import contextlib
import gc
import io

import numpy as np

from hftrain.metrics.objects import per_object

STAT_NAMES = (
    "map", "map_50", "map_75", "map_small", "map_medium", "map_large",
    "mar_1", "mar_10", "mar_100", "mar_small", "mar_medium", "mar_large",
)
TABLE = (
    ("mAP@[.5:.95]", "map"), ("AP50", "map_50"), ("AP75", "map_75"),
    ("AP small", "map_small"), ("AP medium", "map_medium"), ("AP large", "map_large"), ("AR@100", "mar_100"),
)


def ground_truth(rows, class_names: list[str]) -> dict:
    """A COCO ground-truth dict from dataset rows (``image_id``, ``width``, ``height``, ``objects``);
    crowd and difficult boxes become ``iscrowd: 1`` (ignore regions)."""
    images, annotations = [], []
    for row in rows:
        images.append({"id": int(row["image_id"]), "width": int(row["width"]), "height": int(row["height"])})
        for obj in per_object(row["objects"]):
            x, y, w, h = (float(v) for v in obj["bbox"])
            annotations.append({
                "id": len(annotations) + 1,
                "image_id": int(row["image_id"]),
                "category_id": int(obj["category"]),
                "bbox": [x, y, w, h],
                "area": float(obj["area"]) if obj["area"] else w * h,
                "iscrowd": 1 if obj["iscrowd"] or obj.get("difficult", 0) else 0,
            })
    categories = [{"id": i, "name": name} for i, name in enumerate(class_names)]
    return {"images": images, "annotations": annotations, "categories": categories}


def detection_arrays(predictions: list[dict]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per-image ``{image_id, boxes (xyxy), scores, labels}`` (lists or arrays) as four arrays over
    all detections: image ids, labels (int64), boxes as COCO xywh and scores (float64, as a per-box
    loop in Python would compute them)."""
    counts = [len(pred["scores"]) for pred in predictions]
    boxes = np.concatenate([np.asarray(pred["boxes"], dtype=np.float64).reshape(-1, 4) for pred in predictions])
    if len(boxes) != sum(counts):
        raise ValueError("predictions: every image needs as many boxes as scores")
    xywh = np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1)
    image_ids = np.repeat(np.asarray([int(pred["image_id"]) for pred in predictions], dtype=np.int64), counts)
    scores = np.concatenate([np.asarray(pred["scores"], dtype=np.float64).reshape(-1) for pred in predictions])
    labels = np.concatenate([np.asarray(pred["labels"], dtype=np.int64).reshape(-1) for pred in predictions])
    return image_ids, labels, xywh, scores


def predictions_to_coco(predictions: list[dict], category_ids: list[int] | None = None) -> list[dict]:
    """Per-image ``{image_id, boxes (xyxy), scores, labels}`` to COCO result entries (xywh), the
    input of ``COCO.loadRes``. Converted in one numpy pass over all detections, then turned into
    Python numbers with ``tolist``: 500,000 detections take a fraction of a second.
    ``category_ids``: the ``category_id`` written for each label (the dataset's own ids, for a
    COCO results file); None writes the labels themselves."""
    if not predictions:
        return []
    image_ids, labels, xywh, scores = detection_arrays(predictions)
    if category_ids is not None:
        labels = np.asarray(category_ids, dtype=np.int64)[labels]
    return [
        {"image_id": image_id, "category_id": label, "bbox": bbox, "score": score}
        for image_id, label, bbox, score in zip(image_ids.tolist(), labels.tolist(), xywh.tolist(), scores.tolist())
    ]


def detections_index(coco_cls, gt, predictions: list[dict]):
    """The detections as an indexed COCO object of ``coco_cls``: what ``gt.loadRes(predictions_to_coco(
    predictions))`` builds for boxes (the same ``area`` w*h, ``id`` from 1, ``iscrowd`` 0, the ground
    truth's images and categories), made in one pass from arrays. loadRes's per-detection loop (and
    the polygon it adds to every box, which box evaluation never reads) cost about 0.7 s more of a
    5,000-image x 100-detection evaluation (bench/bench_eval.py, 2 cores)."""
    image_ids, labels, xywh, scores = detection_arrays(predictions)
    unknown = set(np.unique(image_ids).tolist()) - set(gt.imgs)
    if unknown:
        raise ValueError(f"predictions for {len(unknown)} image ids not in the evaluated ground truth, "
                         f"e.g. {min(unknown)}")
    areas = xywh[:, 2] * xywh[:, 3]
    annotations = [
        {"image_id": image_id, "category_id": label, "bbox": bbox, "score": score, "area": area, "id": number,
         "iscrowd": 0}
        for number, image_id, label, bbox, score, area in zip(
            range(1, len(scores) + 1), image_ids.tolist(), labels.tolist(), xywh.tolist(), scores.tolist(),
            areas.tolist())
    ]
    dt = coco_cls()
    dt.dataset = {"images": list(gt.dataset["images"]), "categories": list(gt.dataset["categories"]),
                  "annotations": annotations}
    dt.createIndex()
    return dt


@contextlib.contextmanager
def collector_paused():
    """Python's cyclic garbage collector off for the block: the half a million result dicts (and
    the backends' own per-box objects) form no cycles, but their creation would set off full
    collections over all of them again and again (5 to 15% of a 5,000-image evaluation, measured)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


class CocoEvaluator:
    """Evaluate predictions for the images of ``rows``; ``last`` keeps the backend's eval object
    (None when there was nothing to evaluate) and ``predictions`` the predictions it was given;
    ``gt_index`` is the backend's index of the ground truth, built by the first evaluation and reused."""

    def __init__(self, rows, class_names: list[str], backend: str = "pycocotools"):
        self.class_names = class_names
        self.backend = backend
        self.gt_dict = ground_truth(rows, class_names)
        self.gt_index = None
        self.last = None
        self.predictions: list[dict] = []

    def _classes(self):
        if self.backend == "faster_coco_eval":
            from faster_coco_eval import COCO, COCOeval_faster

            return COCO, COCOeval_faster
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval

        return COCO, COCOeval

    def evaluate(self, predictions: list[dict]) -> dict[str, float]:
        """The 12 COCO statistics plus ``ap_<class>`` per class, all in [0, 1] (-1: no such boxes)."""
        self.last, self.predictions = None, predictions
        image_ids = [p["image_id"] for p in predictions]
        if len(set(image_ids)) != len(image_ids):
            raise ValueError("predictions hold an image more than once (padding duplicates not removed?)")
        if not predictions:
            return {name: 0.0 for name in STAT_NAMES}
        coco_cls, eval_cls = self._classes()
        with contextlib.redirect_stdout(io.StringIO()), collector_paused():
            if self.gt_index is None:  # indexed once: an evaluation only sets each box's ``ignore`` (from iscrowd)
                self.gt_index = coco_cls()
                self.gt_index.dataset = {k: list(v) for k, v in self.gt_dict.items()}
                self.gt_index.createIndex()
            dt = detections_index(coco_cls, self.gt_index, predictions)
            if not dt.dataset["annotations"]:
                return {name: 0.0 for name in STAT_NAMES}
            evaluation = eval_cls(self.gt_index, dt, "bbox")
            evaluation.evaluate()
            evaluation.accumulate()
            evaluation.summarize()
        self.last = evaluation
        metrics = {name: float(v) for name, v in zip(STAT_NAMES, evaluation.stats)}
        metrics.update(self.per_class_ap(evaluation))
        return metrics

    def per_class_ap(self, evaluation) -> dict[str, float]:
        """AP@[.5:.95] per class from the accumulated precision array (area all, 100 dets)."""
        precision = np.asarray(evaluation.eval["precision"])  # T, R, K, A, M
        out = {}
        for k, name in enumerate(self.class_names):
            values = precision[:, :, k, 0, -1]
            values = values[values > -1]
            out[f"ap_{name}"] = float(values.mean()) if values.size else -1.0
        return out
