"""The confusion matrix, precision / recall / F1 against confidence at IoU 0.5, and the confidence
that maximises F1 (the recommended score threshold): what ultralytics draws after validation.

Matching, per image, one rule for the curves and the matrix:

1. **Correct detections, greedy by score as COCO matches** (``pycocotools`` ``evaluateImg`` at
   IoU 0.5, and the same numbers): detections in descending score (ties: the order given); each
   takes the not-yet-taken ground-truth box of its own class with the highest IoU, if that IoU
   is >= 0.5. A detection left over whose best box of its class is an ignore region (crowd, or VOC
   ``difficult``: ``iscrowd`` in :func:`hftrain.metrics.coco_eval.ground_truth`; IoU over the
   detection's own area, as COCO computes it for crowd boxes; a region can absorb any number of
   detections) counts nowhere: neither a hit nor a false positive, and an ignore region is never
   missed. Because the matching goes down the scores, the detections above any threshold match
   exactly as they would with the lower ones removed: the curves read off one matching.
2. **Confusions at the matrix's threshold**: the detections at or above the threshold that step 1
   left unmatched (and not ignored) and the ground-truth boxes no such detection took, matched
   again greedy by score but regardless of class (IoU >= 0.5): a pair is a wrong-class detection.
   Step 1 comes first, so a box that a detection of its own class found is never counted as
   confused with a class of a worse-placed detection.
3. Detections still unmatched are **background false positives** (duplicates of a found box among
   them); ground-truth boxes still unmatched are **missed** (predicted as background).

The matrix: **rows the predicted class, columns the true class** (ultralytics' layout), the last
row and column "background". Column c sums to the number of (non-ignored) boxes of class c; the
background column holds the false positives of each predicted class; the background row the
missed boxes. The normalised matrix divides each column by its sum (ultralytics' normalisation):
column c reads "of the boxes of class c, the share predicted as each class or missed".

Curves: for each threshold t of 0, 0.001, ..., 1 and each class with ground truth, over the
detections with score >= t: precision TP / (TP + FP) (1 when there are none, as ultralytics),
recall TP / boxes, F1 = 2PR / (P + R). "All classes" is their mean over the classes that have
ground truth (ultralytics' bold curve). The recommended threshold maximises the all-classes F1;
where a run of thresholds ties, the middle of the first run (away from the scores at either end).
No threshold is recommended when F1 is 0 everywhere.

Vectorised over all images at once (numpy; one pass of the matching in a few rounds, not one
detection at a time): 5,000 images x 100 detections take about 0.8 s of CPU, the conversion of the
per-image lists to arrays included (``bench/bench_confusion.py``, 2-core Xeon).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hftrain.metrics.coco_eval import detection_arrays

IOU = 0.5
"""The IoU at which a detection matches a box (the curves and the matrix)."""
THRESHOLDS = np.arange(1001) / 1000
"""The confidence thresholds of the curves: 0, 0.001, ..., 1 (exact decimals)."""
DEFAULT_THRESHOLD = 0.5
"""The matrix's threshold when nothing is recommended and none is set (the pipeline's default)."""


@dataclass
class GroundTruthBoxes:
    """The evaluated ground truth as arrays sorted by image: each image's boxes are contiguous."""

    image_ids: np.ndarray  # the evaluated images' ids, sorted
    start: np.ndarray  # per image (in image_ids order): index of its first box
    count: np.ndarray  # per image: number of boxes
    image: np.ndarray  # per box: its image's index in image_ids
    category: np.ndarray  # per box: class index
    boxes: np.ndarray  # per box: xyxy
    ignore: np.ndarray  # per box: crowd or difficult (an ignore region)

    @classmethod
    def from_coco(cls, gt_dict: dict) -> GroundTruthBoxes:
        """From a COCO ground-truth dict as :func:`hftrain.metrics.coco_eval.ground_truth` builds it."""
        image_ids = np.unique(np.asarray([int(i["id"]) for i in gt_dict["images"]], dtype=np.int64))
        annotations = gt_dict["annotations"]
        ann_images = np.asarray([a["image_id"] for a in annotations], dtype=np.int64)
        image = np.searchsorted(image_ids, ann_images)
        order = np.argsort(image, kind="stable")
        xywh = np.asarray([a["bbox"] for a in annotations], dtype=np.float64).reshape(-1, 4)[order]
        count = np.bincount(image, minlength=len(image_ids))
        return cls(image_ids=image_ids, start=np.cumsum(count) - count, count=count, image=image[order],
                   category=np.asarray([a["category_id"] for a in annotations], dtype=np.int64)[order],
                   boxes=np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1),
                   ignore=np.asarray([bool(a["iscrowd"]) for a in annotations], dtype=bool)[order])


@dataclass
class ConfidenceReport:
    """One evaluation's confusion matrix and curves (see the module's docstring)."""

    class_names: list[str]
    iou: float
    thresholds: np.ndarray  # (T,) the curves' confidence thresholds
    boxes: np.ndarray  # (K,) non-ignored ground-truth boxes per class
    precision: np.ndarray  # (K, T); classes without boxes are nan
    recall: np.ndarray  # (K, T)
    f1: np.ndarray  # (K, T)
    recommended: float | None  # the confidence maximising the all-classes F1; None when F1 is 0 everywhere
    threshold: float  # the matrix's threshold
    threshold_source: str  # "recommended", "default" (none recommended: 0.5) or where a given threshold came from
    matrix: np.ndarray  # (K + 1, K + 1) counts: rows predicted, columns true, the last is background
    ignored: int  # detections at or above the threshold on an ignore region of their class (counted nowhere)

    def mean(self, curve: np.ndarray) -> np.ndarray:
        """A curve's mean over the classes that have ground truth (all thresholds 0 without any)."""
        present = self.boxes > 0
        return curve[present].mean(axis=0) if present.any() else np.zeros(len(self.thresholds))

    def at(self, threshold: float) -> tuple[float, float, float]:
        """All-classes precision, recall and F1 at ``threshold`` (the grid's nearest point)."""
        j = int(np.argmin(np.abs(self.thresholds - threshold)))
        return tuple(float(self.mean(curve)[j]) for curve in (self.precision, self.recall, self.f1))

    def metrics(self) -> dict[str, float]:
        """``f1_50``: the best all-classes F1 at IoU 0.5; ``f1_threshold``: the confidence where it is
        reached, the recommended threshold (-1: none, as COCO marks a missing value)."""
        return {"f1_50": float(self.mean(self.f1).max()),
                "f1_threshold": -1.0 if self.recommended is None else float(self.recommended)}

    def normalized(self) -> np.ndarray:
        """Each column divided by its sum (a column without counts stays 0)."""
        sums = self.matrix.sum(axis=0, keepdims=True)
        return np.divide(self.matrix, sums, out=np.zeros(self.matrix.shape), where=sums > 0)

    def describe(self) -> str:
        """One log line: the recommended threshold and the matrix's."""
        if self.recommended is None:
            head = f"F1@{self.iou:g} is 0 at every confidence: no recommended score threshold"
        else:
            precision, recall, f1 = self.at(self.recommended)
            head = (f"recommended score threshold {self.recommended:.3f} (best F1@{self.iou:g} {f1:.4f}: "
                    f"precision {precision:.4f}, recall {recall:.4f}, mean over classes)")
        k = len(self.class_names)
        return (f"{head}; confusion matrix at {self.threshold:.3f} ({self.threshold_source}): "
                f"{int(np.trace(self.matrix[:k, :k]))} correct, {int(self.matrix[:k, :k].sum() - np.trace(self.matrix[:k, :k]))} "
                f"wrong class, {int(self.matrix[:k, k].sum())} background false positives, {int(self.matrix[k, :k].sum())} missed")

    def to_json(self) -> dict:
        """``confusion_matrix.json``: the raw counts and what they mean."""
        precision, recall, f1 = self.at(self.threshold)
        return {
            "iou": self.iou, "threshold": self.threshold, "threshold_source": self.threshold_source,
            "recommended_threshold": self.recommended,
            "rows": "predicted class", "columns": "true class", "background": "the last row and column",
            "class_names": list(self.class_names) + ["background"],
            "counts": self.matrix.tolist(),
            "ignored_detections": self.ignored,
            "at_threshold": {"precision": precision, "recall": recall, "f1": f1},
        }


class ConfusionEvaluator:
    """The confusion matrix and the confidence curves of predictions against ``gt_dict`` (the COCO
    evaluator's ground truth, so crowd and difficult boxes are ignore regions alike). ``threshold``:
    the matrix's confidence threshold (``eval.confusion_threshold``; ``source`` says where it comes
    from); None uses the recommended one. ``last``: the :class:`ConfidenceReport` of the last evaluation."""

    def __init__(self, gt_dict: dict, class_names: list[str], threshold: float | None = None, iou: float = IOU,
                 source: str = "eval.confusion_threshold"):
        self.truth = GroundTruthBoxes.from_coco(gt_dict)
        self.class_names = list(class_names)
        self.threshold = threshold
        self.source = source
        self.iou = iou
        self.last: ConfidenceReport | None = None

    def evaluate(self, predictions: list[dict]) -> dict[str, float]:
        """Per-image ``{image_id, boxes (xyxy), scores, labels}``: the report (``last``) and its metrics."""
        self.last = analyse(predictions, self.truth, self.class_names, self.threshold, self.iou, self.source)
        return self.last.metrics()


def analyse(predictions: list[dict], truth: GroundTruthBoxes, class_names: list[str], threshold: float | None = None,
            iou: float = IOU, source: str = "eval.confusion_threshold") -> ConfidenceReport:
    """Match, count and draw up the curves; see the module's docstring for the rules."""
    k = len(class_names)
    if predictions:
        image_ids, labels, xywh, scores = detection_arrays(predictions)
    else:
        image_ids, labels, xywh, scores = (np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((0, 4)),
                                           np.zeros(0))
    image = np.minimum(np.searchsorted(truth.image_ids, image_ids), max(len(truth.image_ids) - 1, 0))
    unknown = truth.image_ids[image] != image_ids if len(truth.image_ids) else np.ones(len(image_ids), dtype=bool)
    if unknown.any():
        raise ValueError(f"predictions for {len(np.unique(image_ids[unknown]))} image ids not in the evaluated "
                         f"ground truth, e.g. {int(image_ids[unknown].min())}")
    if ((labels < 0) | (labels >= k)).any():
        raise ValueError(f"predictions: labels outside 0..{k - 1} ({k} classes), e.g. {int(labels[(labels < 0) | (labels >= k)][0])}")
    boxes = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)
    rank = np.empty(len(scores), dtype=np.int64)
    rank[np.lexsort((np.arange(len(scores)), -scores))] = np.arange(len(scores))  # 0: the highest score

    det, gt, overlap = overlapping_pairs(image, boxes, truth, iou)
    same = labels[det] == truth.category[gt]
    region = truth.ignore[gt]
    # 1. correct detections (class-aware, greedy by score), then the leftovers on an ignore region of their class
    matched = greedy_by_score(det[same & ~region], gt[same & ~region], overlap[same & ~region], rank, len(truth.image))
    ignored = np.zeros(len(scores), dtype=bool)
    ignored[det[same & region]] = True
    ignored &= matched < 0
    hit = matched >= 0
    boxes_per_class = np.bincount(truth.category[~truth.ignore], minlength=k)[:k]
    precision, recall, f1 = curves(labels, scores, hit, ignored, boxes_per_class, k)
    present = boxes_per_class > 0
    mean_f1 = f1[present].mean(axis=0) if present.any() else np.zeros(len(THRESHOLDS))
    recommended = recommend(mean_f1)
    if threshold is not None:
        chosen = float(threshold)
    elif recommended is not None:
        chosen, source = recommended, "recommended"
    else:
        chosen, source = DEFAULT_THRESHOLD, "default"
    matrix = confusion_counts(det, gt, overlap, labels, scores >= chosen, matched, ignored, rank, truth, k)
    return ConfidenceReport(class_names=list(class_names), iou=iou, thresholds=THRESHOLDS, boxes=boxes_per_class,
                            precision=precision, recall=recall, f1=f1, recommended=recommended, threshold=chosen,
                            threshold_source=source, matrix=matrix, ignored=int((ignored & (scores >= chosen)).sum()))


def overlapping_pairs(image: np.ndarray, boxes: np.ndarray, truth: GroundTruthBoxes,
                      iou: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every (detection, ground-truth box) pair of the same image with IoU >= ``iou`` (over the
    detection's area for an ignore region, as COCO does for crowd boxes): detection and box indices
    and the IoU. All pairs of all images at once (5,000 images x 100 detections x 7 boxes: 3.5M),
    narrowed to those that overlap in x, then in y, before the rest is computed."""
    per_det = truth.count[image]
    det = np.repeat(np.arange(len(image), dtype=np.int32), per_det)
    offset = (np.cumsum(per_det) - per_det - truth.start[image]).astype(np.int64)  # pair index - box index
    gt = (np.arange(len(det), dtype=np.int64) - np.repeat(offset, per_det)).astype(np.int32)
    (dx1, dy1, dx2, dy2), (gx1, gy1, gx2, gy2) = np.ascontiguousarray(boxes.T), np.ascontiguousarray(truth.boxes.T)
    width = np.minimum(dx2[det], gx2[gt]) - np.maximum(dx1[det], gx1[gt])
    keep = width > 0
    det, gt, width = det[keep], gt[keep], width[keep]
    height = np.minimum(dy2[det], gy2[gt]) - np.maximum(dy1[det], gy1[gt])
    keep = height > 0
    det, gt = det[keep].astype(np.int64), gt[keep].astype(np.int64)
    inter = width[keep] * height[keep]
    det_area = (dx2 - dx1) * (dy2 - dy1)
    gt_area = (gx2 - gx1) * (gy2 - gy1)
    union = np.where(truth.ignore[gt], det_area[det], det_area[det] + gt_area[gt] - inter)
    overlap = np.divide(inter, union, out=np.zeros(len(inter)), where=union > 0)
    keep = overlap >= iou
    return det[keep], gt[keep], overlap[keep]


def greedy_by_score(det: np.ndarray, gt: np.ndarray, overlap: np.ndarray, rank: np.ndarray,
                    boxes: int) -> np.ndarray:
    """COCO's matching over candidate pairs: in rank order each detection takes its free box of
    highest IoU (ties: the later box, as pycocotools). Returns, per detection, the box it took or -1.

    Done in rounds instead of one detection at a time: a detection whose best free box has no
    better-ranked free detection among its candidates takes it now, because nothing ranked above
    can take that box first and the boxes it prefers are already gone. Each round settles at least
    the best-ranked detection left; a few rounds settle everything."""
    taken_by = np.full(len(rank), -1, dtype=np.int64)
    if not len(det):
        return taken_by
    by_det = np.lexsort((-gt, -overlap, det))  # per detection: its best box first
    by_gt = np.lexsort((rank[det], gt))  # per box: its best-ranked detection first
    det_a, gt_a = det[by_det], gt[by_det]
    det_b, gt_b = det[by_gt], gt[by_gt]
    settled = np.zeros(len(rank), dtype=bool)
    box_taken = np.zeros(boxes, dtype=bool)
    while True:
        live_a = ~settled[det_a] & ~box_taken[gt_a]
        if not live_a.any():
            return taken_by
        da, ga = det_a[live_a], gt_a[live_a]
        heads = np.flatnonzero(np.r_[True, da[1:] != da[:-1]])
        want = np.full(len(rank), -1, dtype=np.int64)
        want[da[heads]] = ga[heads]  # each live detection's best free box
        live_b = ~settled[det_b] & ~box_taken[gt_b]
        db, gb = det_b[live_b], gt_b[live_b]
        heads = np.flatnonzero(np.r_[True, gb[1:] != gb[:-1]])
        first = db[heads]  # each free box's best-ranked live candidate
        wins = want[first] == gb[heads]
        taken_by[first[wins]] = gb[heads][wins]
        settled[first[wins]] = True
        box_taken[gb[heads][wins]] = True
        # a detection with no free candidate left is settled unmatched on the next round's mask


def curves(labels: np.ndarray, scores: np.ndarray, hit: np.ndarray, ignored: np.ndarray, boxes_per_class: np.ndarray,
           k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Precision, recall and F1 per class (K x T) over the detections with score >= each threshold."""
    t = len(THRESHOLDS)
    step = np.searchsorted(THRESHOLDS, np.clip(scores, 0.0, 1.0), side="right") - 1  # the last threshold <= score
    counted = ~ignored
    cell = labels[counted] * t + step[counted]

    def at_or_above(weights):
        per_step = np.bincount(cell, weights=weights, minlength=k * t).reshape(k, t).astype(np.float64)  # int64 when empty
        return np.cumsum(per_step[:, ::-1], axis=1)[:, ::-1]  # detections with score >= each threshold

    tp = at_or_above(hit[counted].astype(np.float64))
    kept = at_or_above(None)
    precision = np.divide(tp, kept, out=np.ones_like(tp), where=kept > 0)
    recall = np.divide(tp, boxes_per_class[:, None], out=np.zeros_like(tp), where=boxes_per_class[:, None] > 0)
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros_like(tp), where=precision + recall > 0)
    missing = boxes_per_class == 0
    precision[missing], recall[missing], f1[missing] = np.nan, np.nan, np.nan
    return precision, recall, f1


def recommend(mean_f1: np.ndarray) -> float | None:
    """The threshold of the best all-classes F1: the middle of the first run of thresholds that reach
    it; None when F1 is 0 everywhere."""
    best = float(mean_f1.max()) if mean_f1.size else 0.0
    if not best > 0:
        return None
    top = np.flatnonzero(mean_f1 >= best)
    run = top[: int(np.argmax(np.r_[np.diff(top) > 1, True])) + 1]  # the first run of consecutive thresholds
    return float(THRESHOLDS[run[(len(run) - 1) // 2]])


def confusion_counts(det: np.ndarray, gt: np.ndarray, overlap: np.ndarray, labels: np.ndarray, above: np.ndarray,
                     matched: np.ndarray, ignored: np.ndarray, rank: np.ndarray, truth: GroundTruthBoxes,
                     k: int) -> np.ndarray:
    """The (K + 1) x (K + 1) matrix over the detections ``above`` the threshold (steps 1-3 of the
    module's docstring); ``matched``/``ignored``: step 1 over all detections."""
    matrix = np.zeros((k + 1, k + 1), dtype=np.int64)
    correct = above & (matched >= 0)  # greedy by score: the matches above a threshold are those of all detections
    np.add.at(matrix, (labels[correct], truth.category[matched[correct]]), 1)
    found = np.zeros(len(truth.image), dtype=bool)
    found[matched[correct]] = True
    open_det = above & (matched < 0) & ~ignored
    pairs = open_det[det] & ~found[gt] & ~truth.ignore[gt]
    confused = greedy_by_score(det[pairs], gt[pairs], overlap[pairs], rank, len(truth.image))
    wrong = confused >= 0
    np.add.at(matrix, (labels[wrong], truth.category[confused[wrong]]), 1)
    found[confused[wrong]] = True
    background = open_det & ~wrong
    np.add.at(matrix, (labels[background], k), 1)
    missed = ~found & ~truth.ignore
    np.add.at(matrix, (k, truth.category[missed]), 1)
    return matrix
