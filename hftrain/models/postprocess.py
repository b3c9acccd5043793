"""Post-processing of DETR-family outputs into detections: absolute xyxy boxes per image.

Two kinds, after the loss each family trains its scores with:

- :func:`sigmoid_topk` for the focal-loss families (Conditional DETR, Deformable DETR, RT-DETR,
  RT-DETRv2, D-FINE): every (query, class) pair is a candidate, the best ``k`` are kept.
- :func:`softmax_per_query` for DETR (softmax cross-entropy with a "no object" class): one
  detection per query, its best real class, the best ``k`` queries kept.

``target_sizes`` is (height, width) per image; boxes come back scaled to it.
"""

from __future__ import annotations

import torch

MAX_DETECTIONS = 100
"""Detections kept per image: what COCO evaluation counts (maxDets=100)."""


def _absolute_xyxy(boxes: torch.Tensor, target_sizes: torch.Tensor) -> torch.Tensor:
    """Normalised (cx, cy, w, h) (B, N, 4) -> absolute (x1, y1, x2, y2) scaled by (height, width)."""
    cx, cy, w, h = boxes.unbind(-1)
    height, width = target_sizes.to(boxes.device).float().unbind(1)
    xyxy = torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=-1)
    return xyxy * torch.stack([width, height, width, height], dim=1)[:, None, :]


def sigmoid_topk(outputs, target_sizes: torch.Tensor, k: int = MAX_DETECTIONS) -> list[dict[str, torch.Tensor]]:
    """Focal-style (sigmoid) detections: each image's top ``k`` (query, class) pairs, boxes as
    absolute xyxy scaled by ``target_sizes`` (height, width). transformers' RT-DETR post-processing
    keeps only ``num_queries`` of them, fewer than the 100 detections COCO evaluation counts."""
    logits, boxes = outputs.logits.float(), outputs.pred_boxes.float()
    num_classes = logits.shape[-1]
    scores, index = logits.sigmoid().flatten(1).topk(min(k, logits.shape[1] * num_classes), dim=1)
    queries = index // num_classes
    xyxy = _absolute_xyxy(boxes.gather(1, queries.unsqueeze(-1).expand(-1, -1, 4)), target_sizes)
    return [{"scores": s, "labels": l, "boxes": b} for s, l, b in zip(scores, index % num_classes, xyxy)]


def softmax_per_query(outputs, target_sizes: torch.Tensor, k: int = MAX_DETECTIONS) -> list[dict[str, torch.Tensor]]:
    """DETR's detections: per query the most probable real class (softmax over the classes and
    "no object", which is the last logit), the ``k`` best queries by that probability."""
    logits, boxes = outputs.logits.float(), outputs.pred_boxes.float()
    scores, labels = logits.softmax(-1)[..., :-1].max(-1)
    scores, queries = scores.topk(min(k, scores.shape[1]), dim=1)
    labels = labels.gather(1, queries)
    xyxy = _absolute_xyxy(boxes.gather(1, queries.unsqueeze(-1).expand(-1, -1, 4)), target_sizes)
    return [{"scores": s, "labels": l, "boxes": b} for s, l, b in zip(scores, labels, xyxy)]
