"""RetinaNet's anchors, their matching to ground truth and the box coding (detectron2's rules): the
parts DETR keeps apart from its model as ``matcher.py`` and ``box_ops.py``. Used by
:mod:`hftrain.models.retinanet`."""

from __future__ import annotations

import math

import torch


def cell_anchors(size: float, scales_per_octave: int, ratios: list[float] | tuple[float, ...]) -> torch.Tensor:
    """(S * R, 4) xyxy anchors centred at 0: sizes ``size * 2**(i / S)``, height/width ratio r.

    Ordered size-major (all ratios of the first size, then the next), as detectron2.
    """
    boxes = []
    for i in range(scales_per_octave):
        area = (size * 2 ** (i / scales_per_octave)) ** 2
        for ratio in ratios:
            w = math.sqrt(area / ratio)
            h = ratio * w
            boxes.append([-w / 2, -h / 2, w / 2, h / 2])
    return torch.tensor(boxes)


def grid_anchors(cell: torch.Tensor, stride: int, height: int, width: int, offset: float) -> torch.Tensor:
    """(H * W * A, 4) anchors of one level, ordered (y, x, anchor) like the flattened head output."""
    ys = (torch.arange(height, dtype=torch.float32) + offset) * stride
    xs = (torch.arange(width, dtype=torch.float32) + offset) * stride
    cy, cx = torch.meshgrid(ys, xs, indexing="ij")
    shifts = torch.stack([cx, cy, cx, cy], dim=-1).reshape(-1, 1, 4)
    return (shifts + cell.reshape(1, -1, 4)).reshape(-1, 4)


LOW_QUALITY_MIN_IOU = 1e-6
"""A ground-truth box whose best anchor overlaps it less than this gets no low-quality match."""


def match_anchors(
    iou: torch.Tensor, fg_threshold: float, bg_threshold: float, allow_low_quality: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Assign anchors to ground truth from an (G, A) IoU matrix.

    Returns ``(matched_gt, label)``, both (A,): the index of the best ground-truth box, and
    1 (positive, IoU >= fg), 0 (negative, IoU < bg) or -1 (ignored, in between). With
    ``allow_low_quality``, every anchor whose IoU with some box equals that box's best IoU is
    positive too (detectron2's rule, ties included), so that no box goes unmatched.
    """
    num_anchors = iou.shape[1]
    if iou.shape[0] == 0:
        return (
            torch.zeros(num_anchors, dtype=torch.long, device=iou.device),
            torch.zeros(num_anchors, dtype=torch.long, device=iou.device),
        )
    best_iou, matched_gt = iou.max(dim=0)
    label = torch.full_like(matched_gt, -1)
    label[best_iou < bg_threshold] = 0
    label[best_iou >= fg_threshold] = 1
    if allow_low_quality:
        best_per_gt = iou.max(dim=1, keepdim=True).values
        is_best = (iou == best_per_gt) & (best_per_gt >= LOW_QUALITY_MIN_IOU)
        label[is_best.any(dim=0)] = 1
    return matched_gt, label


def encode_boxes(boxes: torch.Tensor, anchors: torch.Tensor, weights: tuple[float, ...]) -> torch.Tensor:
    """(dx, dy, dw, dh) regression targets of xyxy ``boxes`` relative to xyxy ``anchors``."""
    wx, wy, ww, wh = weights
    aw, ah = anchors[:, 2] - anchors[:, 0], anchors[:, 3] - anchors[:, 1]
    ax, ay = anchors[:, 0] + 0.5 * aw, anchors[:, 1] + 0.5 * ah
    bw = (boxes[:, 2] - boxes[:, 0]).clamp(min=1e-3)
    bh = (boxes[:, 3] - boxes[:, 1]).clamp(min=1e-3)
    bx, by = boxes[:, 0] + 0.5 * bw, boxes[:, 1] + 0.5 * bh
    return torch.stack([wx * (bx - ax) / aw, wy * (by - ay) / ah, ww * torch.log(bw / aw), wh * torch.log(bh / ah)], 1)


DELTA_CLAMP = math.log(1000.0 / 16)
"""Largest dw/dh used when decoding (detectron2's scale clamp)."""


def decode_boxes(deltas: torch.Tensor, anchors: torch.Tensor, weights: tuple[float, ...]) -> torch.Tensor:
    """Inverse of ``encode_boxes``: xyxy boxes from (..., 4) deltas and matching anchors."""
    wx, wy, ww, wh = weights
    aw, ah = anchors[..., 2] - anchors[..., 0], anchors[..., 3] - anchors[..., 1]
    ax, ay = anchors[..., 0] + 0.5 * aw, anchors[..., 1] + 0.5 * ah
    cx = deltas[..., 0] / wx * aw + ax
    cy = deltas[..., 1] / wy * ah + ay
    w = torch.exp((deltas[..., 2] / ww).clamp(max=DELTA_CLAMP)) * aw
    h = torch.exp((deltas[..., 3] / wh).clamp(max=DELTA_CLAMP)) * ah
    return torch.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], dim=-1)
