"""What ``hftrain export`` traces into ONNX: a detector with its post-processing in the graph.

Every family keeps its raw outputs (``logits``, ``pred_boxes`` normalised cxcywh) and adds
detections computed with static shapes (no data-dependent sizes, so the graph runs in any ONNX
runtime without dynamic-shape ops):

- DETR family (:class:`DetrDetections`): ``scores``, ``labels``, ``boxes`` (xyxy, pixels of the
  input), the best ``k`` exactly as hftrain's evaluation picks them
  (:mod:`hftrain.models.postprocess`). The families that read ``pixel_mask`` normalise boxes by
  the valid (unpadded) region of each image, so pixels are counted in that region, which starts at
  the top-left corner of the input.
- RetinaNet (:class:`RetinaNetCandidates`): the candidates before NMS: each pyramid level's best
  ``topk_candidates`` (anchor, class) scores, boxes xyxy clipped to the input, in pixels. The rest
  of ``RetinaNetForObjectDetection.postprocess`` (score threshold, class-wise NMS, best
  ``detections_per_image``) depends on data-dependent sizes and runs after the graph
  (:func:`retinanet_detections`).
"""

from __future__ import annotations

import torch
from torch import nn

from hftrain.models.nms import batched_nms


def reference_points_in_float(spatial_shapes_list, valid_ratios, device):
    """Deformable DETR's ``DeformableDetrEncoder.get_reference_points`` (transformers 5.24) with
    ``arange + 0.5`` for ``linspace(0.5, n - 0.5, n)`` (the same values exactly). With a static
    input size the TorchScript exporter folds the ``linspace`` into a float64 constant, the
    sampling grid becomes float64 and ONNX Runtime has no ``GridSample`` kernel for it."""
    reference_points_list = []
    for level, (height, width) in enumerate(spatial_shapes_list):
        ref_y, ref_x = torch.meshgrid(
            torch.arange(height, device=device, dtype=torch.float32).to(valid_ratios.dtype) + 0.5,
            torch.arange(width, device=device, dtype=torch.float32).to(valid_ratios.dtype) + 0.5,
            indexing="ij",
        )
        ref_y = ref_y.reshape(-1)[None] / (valid_ratios[:, None, level, 1] * height)
        ref_x = ref_x.reshape(-1)[None] / (valid_ratios[:, None, level, 0] * width)
        reference_points_list.append(torch.stack((ref_x, ref_y), -1))
    reference_points = torch.cat(reference_points_list, 1)
    return reference_points[:, :, None] * valid_ratios[:, None]


def _xyxy_pixels(boxes: torch.Tensor, height: torch.Tensor, width: torch.Tensor) -> torch.Tensor:
    """Normalised (cx, cy, w, h) (B, N, 4) -> xyxy scaled by (B,) heights and widths."""
    cx, cy, w, h = boxes.unbind(-1)
    xyxy = torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=-1)
    return xyxy * torch.stack([width, height, width, height], dim=1)[:, None, :]


def valid_size(pixel_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(heights, widths) of the valid region of each (B, H, W) mask: rows and columns with any 1."""
    mask = pixel_mask.to(torch.float32)
    return mask.amax(2).sum(1), mask.amax(1).sum(1)


class DetrDetections(nn.Module):
    """A transformers DETR-family model with hftrain's post-processing: ``softmax`` (DETR: one
    detection per query, its best real class) or ``sigmoid`` (every (query, class) pair)."""

    output_names = ("logits", "pred_boxes", "scores", "labels", "boxes")

    def __init__(self, model: nn.Module, kind: str, uses_pixel_mask: bool, k: int):
        super().__init__()
        if kind not in ("softmax", "sigmoid"):
            raise ValueError(f"kind: 'softmax' or 'sigmoid', not {kind!r}")
        self.model, self.kind, self.uses_pixel_mask, self.k = model, kind, uses_pixel_mask, k

    def forward(self, pixel_values: torch.Tensor, pixel_mask: torch.Tensor | None = None):
        inputs = {"pixel_values": pixel_values}
        if self.uses_pixel_mask:
            inputs["pixel_mask"] = pixel_mask
        outputs = self.model(**inputs)
        logits, boxes = outputs.logits.float(), outputs.pred_boxes.float()
        num_queries, num_logits = logits.shape[1], logits.shape[2]
        if self.kind == "softmax":
            scores, labels = logits.softmax(-1)[..., :-1].max(-1)
            scores, queries = scores.topk(min(self.k, num_queries), dim=1)
            labels = labels.gather(1, queries)
        else:
            scores, index = logits.sigmoid().flatten(1).topk(min(self.k, num_queries * num_logits), dim=1)
            queries = torch.div(index, num_logits, rounding_mode="floor")
            labels = index - queries * num_logits
        if self.uses_pixel_mask:
            height, width = valid_size(pixel_mask)
        else:
            height = torch.full((pixel_values.shape[0],), float(pixel_values.shape[2]))
            width = torch.full((pixel_values.shape[0],), float(pixel_values.shape[3]))
        chosen = boxes.gather(1, queries.unsqueeze(-1).expand(-1, -1, 4))
        return logits, boxes, scores, labels, _xyxy_pixels(chosen, height, width)


class RetinaNetCandidates(nn.Module):
    """hftrain's RetinaNet with the static part of its post-processing: per level the best
    ``topk_candidates`` (anchor, class) scores, boxes xyxy clipped to the input, in pixels."""

    output_names = ("logits", "pred_boxes", "scores", "labels", "boxes")

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor):
        outputs = self.model(pixel_values=pixel_values)
        cfg = self.model.config
        logits, boxes = outputs.logits.float(), outputs.pred_boxes.float()
        height, width = pixel_values.shape[2], pixel_values.shape[3]
        level_sizes = [int(n) for n in outputs.anchors_per_level]  # constants for a fixed input size
        scores_all, labels_all, boxes_all = [], [], []
        for level_logits, level_boxes in zip(logits.split(level_sizes, 1), boxes.split(level_sizes, 1)):
            flat = level_logits.sigmoid().flatten(1)
            scores, index = flat.topk(min(cfg.topk_candidates, flat.shape[1]), dim=1)
            anchors = torch.div(index, cfg.num_labels, rounding_mode="floor")
            scores_all.append(scores)
            labels_all.append(index - anchors * cfg.num_labels)
            boxes_all.append(level_boxes.gather(1, anchors.unsqueeze(-1).expand(-1, -1, 4)))
        cx, cy, w, h = torch.cat(boxes_all, 1).unbind(-1)
        xyxy = torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=-1).clamp(0, 1)
        xyxy = xyxy * torch.tensor([width, height, width, height], dtype=xyxy.dtype)
        return logits, boxes, torch.cat(scores_all, 1), torch.cat(labels_all, 1), xyxy


def retinanet_detections(scores: torch.Tensor, labels: torch.Tensor, boxes: torch.Tensor, config) -> dict:
    """One image's detections from :class:`RetinaNetCandidates` outputs (N,), (N,), (N, 4): scores
    above ``config.score_threshold``, class-wise NMS at ``config.nms_threshold``, the best
    ``config.detections_per_image`` (what ``RetinaNetForObjectDetection.postprocess`` does)."""
    keep = scores > config.score_threshold
    scores, labels, boxes = scores[keep], labels[keep], boxes[keep]
    kept = batched_nms(boxes, scores, labels, config.nms_threshold)[: config.detections_per_image]
    return {"scores": scores[kept], "labels": labels[kept], "boxes": boxes[kept]}
