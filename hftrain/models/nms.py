"""Non-maximum suppression in plain torch (torchvision is not a dependency).

Boxes are ``(x1, y1, x2, y2)`` with ``x2 >= x1`` and ``y2 >= y1``; areas use no ``+1``.
Ties in score are broken by the original index (the earlier box is visited first), so the
result is deterministic and matches a stable sort of ``-scores``.
"""

from __future__ import annotations

import numpy as np
import torch

_COORDINATE_TRICK_MAX_BOXES = 4000
"""Above this many boxes, ``batched_nms`` loops over classes instead of building one
``N x N`` IoU matrix (the same switch torchvision makes, for the same memory reason)."""


def _exact_dtype(device: torch.device) -> torch.dtype:
    """float64 where the device has it, so the group offset costs no precision."""
    return torch.float32 if device.type == "mps" else torch.float64


def box_area(boxes: torch.Tensor) -> torch.Tensor:
    """Area of ``(N, 4)`` xyxy boxes (degenerate boxes have zero area)."""
    return (boxes[:, 2] - boxes[:, 0]).clamp(min=0) * (boxes[:, 3] - boxes[:, 1]).clamp(min=0)


def box_iou(boxes1: torch.Tensor, boxes2: torch.Tensor) -> torch.Tensor:
    """Pairwise IoU ``(N, M)`` of two sets of xyxy boxes; 0 where the union is empty."""
    area1 = box_area(boxes1)
    area2 = box_area(boxes2)
    top_left = torch.maximum(boxes1[:, None, :2], boxes2[None, :, :2])
    bottom_right = torch.minimum(boxes1[:, None, 2:], boxes2[None, :, 2:])
    wh = (bottom_right - top_left).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    union = area1[:, None] + area2[None, :] - inter
    return torch.where(union > 0, inter / union.clamp(min=torch.finfo(inter.dtype).tiny), 0.0)


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Greedy NMS: indices of kept boxes, by decreasing score.

    A box is suppressed when its IoU with an already kept, higher-ranked box is strictly
    greater than ``iou_threshold`` (torchvision's rule).
    """
    if boxes.numel() == 0:
        return torch.empty(0, dtype=torch.long, device=boxes.device)
    order = torch.sort(scores, descending=True, stable=True).indices
    sorted_boxes = boxes[order].to(_exact_dtype(boxes.device))
    overlaps = (box_iou(sorted_boxes, sorted_boxes) > iou_threshold).cpu().numpy()
    removed = np.zeros(len(order), dtype=bool)
    kept: list[int] = []
    for i in range(len(order)):
        if removed[i]:
            continue
        kept.append(i)
        removed |= overlaps[i]
    return order[torch.as_tensor(kept, dtype=torch.long, device=boxes.device)]


def batched_nms(
    boxes: torch.Tensor, scores: torch.Tensor, groups: torch.Tensor, iou_threshold: float
) -> torch.Tensor:
    """NMS done independently per group (class): indices of kept boxes, by decreasing score.

    Uses the coordinate-offset trick (each group shifted so that boxes of different groups
    never overlap) for small inputs, and a loop over groups for large ones.
    """
    if boxes.numel() == 0:
        return torch.empty(0, dtype=torch.long, device=boxes.device)
    if boxes.shape[0] > _COORDINATE_TRICK_MAX_BOXES:
        keep_mask = torch.zeros_like(scores, dtype=torch.bool)
        for group in torch.unique(groups):
            members = torch.nonzero(groups == group).flatten()
            keep_mask[members[nms(boxes[members], scores[members], iou_threshold)]] = True
        kept = torch.nonzero(keep_mask).flatten()
        return kept[torch.sort(scores[kept], descending=True, stable=True).indices]
    boxes = boxes.to(_exact_dtype(boxes.device))
    span = boxes.max() - boxes.min() + 1
    shifted = boxes - boxes.min() + (groups.to(boxes) * span)[:, None]
    return nms(shifted, scores, iou_threshold)
