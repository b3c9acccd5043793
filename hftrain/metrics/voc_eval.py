"""PASCAL VOC detection AP: the 11-point VOC2007 metric and the all-point VOC2010+ metric.

Follows the VOC devkit as ported by py-faster-rcnn (``voc_eval.py``) and detectron2
(``pascal_voc_evaluation.py``):

- detections of a class are ranked by score over all images (a stable sort: ties keep
  image order, then the order within an image);
- a detection is matched to the ground-truth box of its class with the highest IoU in its
  image; it is a true positive if that IoU is > ``iou_threshold`` (strictly) and the box is
  not yet taken, a false positive if the box is taken (a duplicate) or the IoU is too low;
- a detection whose best box is *difficult* counts neither way, and difficult boxes are not
  in the number of positives ``npos``;
- VOC2007 AP averages, over recall thresholds ``np.arange(0, 1.1, 0.1)`` (the devkit's
  ``0:0.1:1``, float quirks included), the best precision at recall >= t; all-point AP is
  the area under the precision envelope at every recall step.

Pixel convention: VOC annotations are inclusive pixel indices, so the devkit computes widths
as ``x2 - x1 + 1``. ``plus_one=True`` (the default) does the same and is what to use to
compare with the devkit or py-faster-rcnn on VOC-style integer boxes; ``plus_one=False`` uses
continuous coordinates (``x2 - x1``, as COCO and detectron2's IoU do).

Classes without any non-difficult ground truth have an undefined AP (``nan``) and are left
out of the mean.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from hftrain.metrics.objects import per_object


@dataclass
class VOCResult:
    """Per-class AP (``nan`` without positives), their mean, and the curves behind them."""

    ap: dict[str, float]
    mean_ap: float
    npos: dict[str, int]
    recall: dict[str, np.ndarray] = field(repr=False)
    precision: dict[str, np.ndarray] = field(repr=False)


def _array(value: Any, shape_tail: tuple[int, ...] = (), dtype: Any = np.float64) -> np.ndarray:
    """A numpy array from a tensor, array or list (an empty input gets the right shape)."""
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    array = np.asarray(value, dtype=dtype)
    if array.size == 0:
        return array.reshape((0, *shape_tail))
    return array


def pairwise_iou(box: np.ndarray, boxes: np.ndarray, plus_one: bool) -> np.ndarray:
    """IoU of one xyxy box with (N, 4) boxes; ``plus_one`` adds 1 to widths and heights."""
    one = 1.0 if plus_one else 0.0
    iw = np.maximum(np.minimum(boxes[:, 2], box[2]) - np.maximum(boxes[:, 0], box[0]) + one, 0.0)
    ih = np.maximum(np.minimum(boxes[:, 3], box[3]) - np.maximum(boxes[:, 1], box[1]) + one, 0.0)
    inter = iw * ih
    area = (box[2] - box[0] + one) * (box[3] - box[1] + one)
    areas = (boxes[:, 2] - boxes[:, 0] + one) * (boxes[:, 3] - boxes[:, 1] + one)
    return inter / (area + areas - inter)


def average_precision(recall: np.ndarray, precision: np.ndarray, use_07_metric: bool) -> float:
    """AP from a recall/precision curve (detections in rank order)."""
    if use_07_metric:
        ap = 0.0
        for t in np.arange(0.0, 1.1, 0.1):
            above = precision[recall >= t]
            ap += (above.max() if above.size else 0.0) / 11.0
        return float(ap)
    mrec = np.concatenate(([0.0], recall, [1.0]))
    mpre = np.concatenate(([0.0], precision, [0.0]))
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]  # precision envelope
    steps = np.where(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[steps + 1] - mrec[steps]) * mpre[steps + 1]))


def _class_curve(
    gts: Sequence[Mapping[str, Any]],
    preds: Sequence[Mapping[str, Any]],
    label: int,
    iou_threshold: float,
    plus_one: bool,
) -> tuple[np.ndarray, np.ndarray, int]:
    """(recall, precision, npos) of one class."""
    gt_boxes, gt_difficult, taken = [], [], []
    npos = 0
    for gt in gts:
        labels = _array(gt["labels"], dtype=np.int64)
        difficult = _array(gt.get("difficult", np.zeros(len(labels))), dtype=bool)
        mine = labels == label
        gt_boxes.append(_array(gt["boxes"], (4,))[mine])
        gt_difficult.append(difficult[mine])
        taken.append(np.zeros(int(mine.sum()), dtype=bool))
        npos += int((~difficult[mine]).sum())

    det_image, det_score, det_box = [], [], []
    for image, pred in enumerate(preds):
        mine = _array(pred["labels"], dtype=np.int64) == label
        scores = _array(pred["scores"])[mine]
        det_image.extend([image] * len(scores))
        det_score.append(scores)
        det_box.append(_array(pred["boxes"], (4,))[mine])
    if not det_image:
        return np.zeros(0), np.zeros(0), npos
    scores = np.concatenate(det_score)
    boxes = np.concatenate(det_box)
    order = np.argsort(-scores, kind="stable")

    tp = np.zeros(len(order))
    fp = np.zeros(len(order))
    for rank, d in enumerate(order):
        image = det_image[d]
        candidates = gt_boxes[image]
        if len(candidates) == 0:
            fp[rank] = 1
            continue
        overlaps = pairwise_iou(boxes[d], candidates, plus_one)
        best = int(np.argmax(overlaps))
        if overlaps[best] > iou_threshold:
            if gt_difficult[image][best]:
                continue
            if taken[image][best]:
                fp[rank] = 1
            else:
                tp[rank] = 1
                taken[image][best] = True
        else:
            fp[rank] = 1
    tp, fp = np.cumsum(tp), np.cumsum(fp)
    recall = tp / npos if npos > 0 else np.full(len(tp), np.nan)
    precision = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
    return recall, precision, npos


def voc_evaluate(
    gts: Sequence[Mapping[str, Any]],
    preds: Sequence[Mapping[str, Any]],
    class_names: Sequence[str],
    use_07_metric: bool,
    iou_threshold: float = 0.5,
    plus_one: bool = True,
) -> VOCResult:
    """VOC AP per class and their mean.

    Args:
        gts: per image ``{"boxes": (N, 4) xyxy, "labels": (N,) class indices, "difficult": (N,)}``
            (``difficult`` optional, all False when missing).
        preds: per image, same order, ``{"boxes": (M, 4) xyxy, "scores": (M,), "labels": (M,)}``.
        class_names: names of class indices 0..C-1.
        use_07_metric: 11-point VOC2007 AP (True) or all-point VOC2010+ AP (False).
        iou_threshold: a match needs IoU strictly above it.
        plus_one: the devkit's inclusive-pixel ``+1`` in widths and heights (see module docs).
    """
    if len(gts) != len(preds):
        raise ValueError(f"{len(gts)} ground-truth images but {len(preds)} prediction images")
    ap, npos, recall, precision = {}, {}, {}, {}
    for label, name in enumerate(class_names):
        rec, prec, n = _class_curve(gts, preds, label, iou_threshold, plus_one)
        recall[name], precision[name], npos[name] = rec, prec, n
        if n == 0:
            ap[name] = float("nan")
        elif rec.size == 0:
            ap[name] = 0.0
        else:
            ap[name] = average_precision(rec, prec, use_07_metric)
    defined = [v for v in ap.values() if not np.isnan(v)]
    mean_ap = float(np.mean(defined)) if defined else float("nan")
    return VOCResult(ap=ap, mean_ap=mean_ap, npos=npos, recall=recall, precision=precision)


def ground_truth_from_rows(rows) -> list[dict[str, np.ndarray]]:
    """Per image (in row order) ``{"boxes" xyxy, "labels", "difficult"}`` from dataset rows.

    Rows hold continuous COCO ``[x, y, w, h]`` boxes (the VOC reader already turned the
    devkit's 1-based inclusive corners into them), so evaluation uses ``plus_one=False``: the
    same widths as the devkit's ``x2 - x1 + 1`` on the raw corners. Crowd boxes (COCO sources)
    are treated like difficult ones: matching them counts neither way.
    """
    out = []
    for row in rows:
        objects = per_object(row["objects"])
        boxes = np.array([o["bbox"] for o in objects], dtype=np.float64).reshape(-1, 4)
        boxes[:, 2:] += boxes[:, :2]
        difficult = np.array([bool(o.get("difficult", 0)) or bool(o.get("iscrowd", 0)) for o in objects], dtype=bool)
        labels = np.array([int(o["category"]) for o in objects], dtype=np.int64)
        out.append({"boxes": boxes, "labels": labels, "difficult": difficult})
    return out


class VocEvaluator:
    """VOC AP at IoU 0.5 of gathered predictions for the images of ``rows`` (mirrors ``CocoEvaluator``).

    ``evaluate`` takes the loop's per-image ``{image_id, boxes (xyxy), scores, labels}`` dicts
    and returns ``voc07_map`` (11-point), ``voc_map`` (all-point) and per class
    ``voc07_ap_<name>`` / ``voc_ap_<name>`` (``nan`` for a class without non-difficult boxes,
    left out of the means). An image without predictions counts as detecting nothing.
    """

    def __init__(self, rows, class_names: list[str], iou_threshold: float = 0.5):
        self.class_names = list(class_names)
        self.iou_threshold = iou_threshold
        self.image_ids = [int(row["image_id"]) for row in rows]
        self.gts = ground_truth_from_rows(rows)

    def evaluate(self, predictions: list[dict]) -> dict[str, float]:
        by_id: dict[int, dict] = {}
        for pred in predictions:
            image_id = int(pred["image_id"])
            if image_id in by_id:
                raise ValueError(f"predictions hold image {image_id} more than once (padding duplicates not removed?)")
            by_id[image_id] = pred
        unknown = set(by_id) - set(self.image_ids)
        if unknown:
            raise ValueError(f"predictions for {len(unknown)} image ids not in the ground truth, e.g. {min(unknown)}")
        empty = {"boxes": np.zeros((0, 4)), "scores": np.zeros(0), "labels": np.zeros(0, dtype=np.int64)}
        preds = [by_id.get(image_id, empty) for image_id in self.image_ids]
        metrics: dict[str, float] = {}
        for prefix, use_07 in (("voc07", True), ("voc", False)):
            result = voc_evaluate(self.gts, preds, self.class_names, use_07_metric=use_07,
                                  iou_threshold=self.iou_threshold, plus_one=False)
            metrics[f"{prefix}_map"] = result.mean_ap
            metrics.update({f"{prefix}_ap_{name}": value for name, value in result.ap.items()})
        return metrics
