"""COCO-style box evaluation of predictions against a dataset in the project's schema.

The ground truth is built from the dataset rows (so every source format is evaluated the same
way); crowd boxes are COCO ignore regions. Backends: pycocotools (the reference) or
faster-coco-eval (same statistics, much faster).
"""

from __future__ import annotations

import contextlib
import io

import numpy as np

STAT_NAMES = (
    "map", "map_50", "map_75", "map_small", "map_medium", "map_large",
    "mar_1", "mar_10", "mar_100", "mar_small", "mar_medium", "mar_large",
)
TABLE = (
    ("mAP@[.5:.95]", "map"), ("AP50", "map_50"), ("AP75", "map_75"),
    ("AP small", "map_small"), ("AP medium", "map_medium"), ("AP large", "map_large"), ("AR@100", "mar_100"),
)


def ground_truth(rows, class_names: list[str]) -> dict:
    """A COCO ground-truth dict from dataset rows (``image_id``, ``width``, ``height``, ``objects``)."""
    images, annotations = [], []
    for row in rows:
        images.append({"id": int(row["image_id"]), "width": int(row["width"]), "height": int(row["height"])})
        for obj in row["objects"]:
            x, y, w, h = (float(v) for v in obj["bbox"])
            annotations.append({
                "id": len(annotations) + 1,
                "image_id": int(row["image_id"]),
                "category_id": int(obj["category"]),
                "bbox": [x, y, w, h],
                "area": float(obj["area"]) if obj["area"] else w * h,
                "iscrowd": int(obj["iscrowd"]),
            })
    categories = [{"id": i, "name": name} for i, name in enumerate(class_names)]
    return {"images": images, "annotations": annotations, "categories": categories}


def predictions_to_coco(predictions: list[dict]) -> list[dict]:
    """Per-image ``{image_id, boxes (xyxy), scores, labels}`` to COCO result entries (xywh)."""
    results = []
    for pred in predictions:
        boxes = np.asarray(pred["boxes"], dtype=np.float64).reshape(-1, 4)
        for (x1, y1, x2, y2), score, label in zip(boxes, pred["scores"], pred["labels"]):
            results.append({
                "image_id": int(pred["image_id"]),
                "category_id": int(label),
                "bbox": [float(x1), float(y1), float(x2 - x1), float(y2 - y1)],
                "score": float(score),
            })
    return results


class CocoEvaluator:
    """Evaluate predictions for the images of ``rows``; ``last`` keeps the backend's eval object."""

    def __init__(self, rows, class_names: list[str], backend: str = "pycocotools"):
        self.class_names = class_names
        self.backend = backend
        self.gt_dict = ground_truth(rows, class_names)
        self.last = None

    def _classes(self):
        if self.backend == "faster_coco_eval":
            from faster_coco_eval import COCO, COCOeval_faster

            return COCO, COCOeval_faster
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval

        return COCO, COCOeval

    def evaluate(self, predictions: list[dict]) -> dict[str, float]:
        """The 12 COCO statistics plus ``ap_<class>`` per class, all in [0, 1] (-1: no such boxes)."""
        image_ids = [p["image_id"] for p in predictions]
        if len(set(image_ids)) != len(image_ids):
            raise ValueError("predictions hold an image more than once (padding duplicates not removed?)")
        coco_cls, eval_cls = self._classes()
        with contextlib.redirect_stdout(io.StringIO()):
            gt = coco_cls()
            gt.dataset = {k: list(v) for k, v in self.gt_dict.items()}
            gt.createIndex()
            results = predictions_to_coco(predictions)
            if not results:
                return {name: 0.0 for name in STAT_NAMES}
            dt = gt.loadRes(results)
            evaluation = eval_cls(gt, dt, "bbox")
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
