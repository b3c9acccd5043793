"""Geometric augmentation on uint8 (3, H, W) images with one resample: zoom-out, IoU crop, DETR's resize
and size crop, ultralytics' affine, each box-aware.

The operations do not touch pixels. They move a :class:`View`: a window onto the source image (integer
pixels of the image as loaded, reaching past its edges where a zoom-out or an affine shows canvas) and
the size that window has at this point of the pipeline (after DETR's intermediate resize, say). The
crops clip and drop boxes as they go (their decisions depend on the boxes); :func:`render` then cuts the
window out and resizes it once to the output size (the batch's multi-scale size, DETR's random resize, or
the recipe's resize), filling what lies outside the image. So zoom-out + IoU crop + resize, or resize +
crop + resize, is one antialiased uint8 resample of the visible part of the image, not three.

Boxes are absolute xywh in the source image while a view is being moved (``sample["boxes"]``), and in the
output after :func:`render`. Every box that reaches into a window but does not survive (its centre outside
an IoU crop, under 1 pixel once clipped, or failing ultralytics' box_candidates after the affine) is
dropped and counted in the sample's ``boxes_dropped``; a box wholly outside the window is left out
uncounted (nothing of its object is in the output), as the mosaic does. The random choices are drawn from
the sample's generator ``rng`` (``random.Random`` seeded by (seed, epoch, index)) in a fixed order.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from transformers.image_transforms import get_size_with_aspect_ratio

IOU_OPTIONS = (0.0, 0.1, 0.3, 0.5, 0.7, 0.9, 1.0)
"""torchvision v2 RandomIoUCrop's sampler options: the minimum IoU of a kept crop with some box; 1.0
(or more) leaves the image as it is."""
IOU_TRIALS = 40
IOU_MIN_SCALE, IOU_MAX_SCALE = 0.3, 1.0
IOU_ASPECT = (0.5, 2.0)
IOU_MAX_ROUNDS = 100
"""torchvision draws options until one succeeds (forever for an image without boxes unless 'leave as is'
comes up); here at most this many rounds, then the image is left as it is."""
AFFINE_FILL = 114
"""ultralytics' border value of random_perspective."""


@dataclass(frozen=True)
class View:
    """The window (x0, y0)-(x1, y1) in integer pixels of the source image (it may reach past the image:
    ``fill`` there), and its current size in pixels (``width``, ``height``: the window after the resizes
    so far). ``candidates``: filter the boxes with ultralytics' box_candidates when rendered (affine)."""

    x0: int
    y0: int
    x1: int
    y1: int
    width: float
    height: float
    fill: int = 0
    candidates: bool = False

    @staticmethod
    def whole(pixels: torch.Tensor) -> "View":
        _, h, w = pixels.shape
        return View(0, 0, w, h, float(w), float(h))

    def size(self) -> tuple[int, int]:
        """The current (height, width), rounded."""
        return max(1, round(self.height)), max(1, round(self.width))

    def factors(self) -> tuple[float, float]:
        """Current pixels per source pixel, (x, y)."""
        return self.width / (self.x1 - self.x0), self.height / (self.y1 - self.y0)

    def is_whole(self, pixels: torch.Tensor) -> bool:
        _, h, w = pixels.shape
        return (self.x0, self.y0, self.x1, self.y1) == (0, 0, w, h)

    def current_boxes(self, boxes_xywh: torch.Tensor) -> torch.Tensor:
        """Source-image xywh boxes in this view's current pixels, xyxy."""
        fx, fy = self.factors()
        xyxy = to_xyxy(boxes_xywh) - torch.tensor([self.x0, self.y0, self.x0, self.y0], dtype=torch.float32)
        return xyxy * torch.tensor([fx, fy, fx, fy])


def to_xyxy(boxes_xywh: torch.Tensor) -> torch.Tensor:
    boxes = boxes_xywh.reshape(-1, 4).float()
    return torch.cat([boxes[:, :2], boxes[:, :2] + boxes[:, 2:]], 1)


def to_xywh(boxes_xyxy: torch.Tensor) -> torch.Tensor:
    return torch.cat([boxes_xyxy[:, :2], boxes_xyxy[:, 2:] - boxes_xyxy[:, :2]], 1)


# ---------------------------------------------------------------------------- moving the view


def resize_view(view: View, size: tuple[int, int]) -> View:
    """The view resized to ``size`` (height, width) (DETR's intermediate RandomResize): no pixels move."""
    return replace(view, width=float(size[1]), height=float(size[0]))


def zoom_out(view: View, ratio: float, rx: float, ry: float, fill: int = 0) -> View:
    """torchvision's RandomZoomOut: the current image on a canvas of ``int(side * ratio)`` sides at
    ``int((canvas - side) * r)`` from the top-left (``rx``, ``ry`` uniform in [0, 1)). No box changes."""
    h, w = view.size()
    canvas_w, canvas_h = int(w * ratio), int(h * ratio)
    left, top = int((canvas_w - w) * rx), int((canvas_h - h) * ry)
    fx, fy = view.factors()
    x0, y0 = view.x0 - round(left / fx), view.y0 - round(top / fy)
    x1, y1 = x0 + max(1, round(canvas_w / fx)), y0 + max(1, round(canvas_h / fy))
    return View(x0, y0, x1, y1, float(canvas_w), float(canvas_h), fill, view.candidates)


def crop(sample: dict, view: View, left: int, top: int, width: int, height: int,
         keep: torch.Tensor | None = None) -> tuple[dict, View]:
    """Crop the current image to ``width`` x ``height`` at (``left``, ``top``) (current pixels). Boxes are
    clipped; those not in ``keep`` (a mask over the sample's boxes) and those under 1 current pixel on a
    side once clipped are dropped, counted when they reached into the crop."""
    fx, fy = view.factors()
    x0, y0 = view.x0 + round(left / fx), view.y0 + round(top / fy)
    x1, y1 = x0 + max(1, round(width / fx)), y0 + max(1, round(height / fy))
    new = View(x0, y0, x1, y1, float(width), float(height), view.fill, view.candidates)
    boxes = new.current_boxes(sample["boxes"])
    kept, mask, dropped = clip_and_filter(boxes, (width, height), min_size=1.0, keep=keep)
    fx, fy = new.factors()  # back to source pixels
    source = kept / torch.tensor([fx, fy, fx, fy]) + torch.tensor([x0, y0, x0, y0], dtype=torch.float32)
    return {**sample, "boxes": to_xywh(source), "class_labels": sample["class_labels"][mask],
            "boxes_dropped": sample.get("boxes_dropped", 0) + dropped}, new


def iou_crop_params(boxes_xyxy: torch.Tensor, size: tuple[int, int], rng) -> tuple[int, int, int, int, torch.Tensor] | None:
    """torchvision v2 RandomIoUCrop's search on an image of ``size`` (height, width) with boxes (current
    xyxy): ``(left, top, width, height, within)`` (``within``: the boxes whose centre is strictly inside,
    the only ones kept), or None to leave the image as it is. Plain Python on the few boxes (a tensor op
    per trial would cost more than the whole search)."""
    h, w = size
    boxes = [(x0, y0, x1, y1, (x1 - x0) * (y1 - y0)) for x0, y0, x1, y1 in boxes_xyxy.tolist()]
    centres = [((x0 + x1) / 2, (y0 + y1) / 2) for x0, y0, x1, y1, _ in boxes]
    for _ in range(IOU_MAX_ROUNDS):
        threshold = IOU_OPTIONS[rng.randrange(len(IOU_OPTIONS))]
        if threshold >= 1.0:
            return None
        for _ in range(IOU_TRIALS):
            r0, r1 = (IOU_MIN_SCALE + (IOU_MAX_SCALE - IOU_MIN_SCALE) * rng.random() for _ in range(2))
            new_w, new_h = int(w * r0), int(h * r1)
            if new_h == 0 or not IOU_ASPECT[0] <= new_w / new_h <= IOU_ASPECT[1]:
                continue
            left, top = int((w - new_w) * rng.random()), int((h - new_h) * rng.random())
            if new_w == 0:
                continue
            right, bottom = left + new_w, top + new_h
            within = [left < cx < right and top < cy < bottom for cx, cy in centres]
            if not any(within):
                continue
            # torchvision: max IoU over the boxes within < threshold -> next trial; "any >= threshold" stops early
            if not any(_iou(box, left, top, right, bottom) >= threshold for box, inside in zip(boxes, within) if inside):
                continue
            return left, top, new_w, new_h, torch.tensor(within, dtype=torch.bool)
    return None


def _iou(box, left: float, top: float, right: float, bottom: float) -> float:
    """IoU of ``box`` (x0, y0, x1, y1, area) with the crop; plain comparisons (no ``min``/``max`` calls)."""
    x0, y0, x1, y1, area = box
    w = (x1 if x1 < right else right) - (x0 if x0 > left else left)
    h = (y1 if y1 < bottom else bottom) - (y0 if y0 > top else top)
    inter = w * h if w > 0 and h > 0 else 0.0
    union = area + (right - left) * (bottom - top) - inter
    return inter / union if union > 0 else 0.0


def iou_crop(sample: dict, view: View, rng) -> tuple[dict, View]:
    """RandomIoUCrop on the current view (no change when its search leaves the image as it is)."""
    found = iou_crop_params(view.current_boxes(sample["boxes"]), view.size(), rng)
    if found is None:
        return sample, view
    left, top, width, height, within = found
    return crop(sample, view, left, top, width, height, keep=within)


def size_crop(sample: dict, view: View, min_side: int, max_side: int, rng) -> tuple[dict, View]:
    """DETR's RandomSizeCrop(min_side, max_side): a width in [min_side, min(w, max_side)] and a height
    likewise (the image's side when it is smaller), at a uniform position; boxes clipped, those under 1
    pixel dropped and counted."""
    h, w = view.size()
    width = rng.randint(min(min_side, w), max(min(min_side, w), min(w, max_side)))
    height = rng.randint(min(min_side, h), max(min(min_side, h), min(h, max_side)))
    top, left = rng.randint(0, h - height), rng.randint(0, w - width)
    return crop(sample, view, left, top, width, height)


def shortest_side_size(view: View, side: int, max_size: int | None) -> tuple[int, int]:
    """DETR's resize rule on the current view: shorter side ``side``, longer at most ``max_size``."""
    return get_size_with_aspect_ratio(view.size(), side, max_size)


def affine(view: View, scale: float, tx: float, ty: float) -> View:
    """ultralytics' random_perspective with only scale and translation: the output (the current size)
    shows the image scaled by ``scale`` about its centre and moved so that the centre lands at ``tx``,
    ``ty`` (fractions of the output's sides, uniform in 0.5 +- translate); gray (114) outside."""
    h, w = view.size()
    fx, fy = view.factors()
    cx0, cy0 = w / 2 - tx * w / scale, h / 2 - ty * h / scale  # the output's top-left in current pixels
    x0, y0 = view.x0 + round(cx0 / fx), view.y0 + round(cy0 / fy)
    x1, y1 = x0 + max(1, round(w / scale / fx)), y0 + max(1, round(h / scale / fy))
    return View(x0, y0, x1, y1, float(w), float(h), AFFINE_FILL, candidates=True)


# ---------------------------------------------------------------------------- boxes


def box_candidates(before: torch.Tensor, after: torch.Tensor, wh_thr: float = 2, ar_thr: float = 100,
                   area_thr: float = 0.1, eps: float = 1e-16) -> torch.Tensor:
    """ultralytics' rule, xyxy boxes in output pixels: kept when the clipped box (``after``) is over
    ``wh_thr`` pixels each side, over ``area_thr`` of the unclipped one's area (``before``) and its
    aspect ratio under ``ar_thr``."""
    w1, h1 = before[:, 2] - before[:, 0], before[:, 3] - before[:, 1]
    w2, h2 = after[:, 2] - after[:, 0], after[:, 3] - after[:, 1]
    ar = torch.maximum(w2 / (h2 + eps), h2 / (w2 + eps))
    return (w2 > wh_thr) & (h2 > wh_thr) & (w2 * h2 / (w1 * h1 + eps) > area_thr) & (ar < ar_thr)


def clip_and_filter(boxes_xyxy: torch.Tensor, size_wh: tuple[float, float], min_size: float = 1.0,
                    keep: torch.Tensor | None = None, candidates: bool = False) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Clip xyxy boxes to [0, w] x [0, h]; keep those in ``keep`` that are at least ``min_size`` on each
    side (torchvision's SanitizeBoundingBoxes) or, with ``candidates``, that pass :func:`box_candidates`.
    Returns the kept clipped boxes, the keep mask, and how many boxes that reached into the frame were dropped."""
    w, h = size_wh
    clipped = torch.stack([boxes_xyxy[:, 0].clamp(0, w), boxes_xyxy[:, 1].clamp(0, h),
                           boxes_xyxy[:, 2].clamp(0, w), boxes_xyxy[:, 3].clamp(0, h)], 1)
    sides = clipped[:, 2:] - clipped[:, :2]
    reaches = (sides > 0).all(1)
    ok = box_candidates(boxes_xyxy, clipped) if candidates else (sides >= min_size).all(1)
    ok = ok & reaches
    if keep is not None:
        ok = ok & keep
    return clipped[ok], ok, int((reaches & ~ok).sum())


# ---------------------------------------------------------------------------- pixels


def render(sample: dict, view: View, size: tuple[int, int], colour=None) -> dict:
    """The view's window of the sample's image resized to ``size`` (height, width) in one antialiased
    uint8 resample of the part inside the image (``view.fill`` elsewhere); boxes mapped to the output,
    clipped, filtered (box_candidates after an affine, at least 1 pixel otherwise) and the dropped counted.
    ``colour`` (a function of uint8 pixels): applied to the resized image part before it is pasted, so the
    fill keeps its value (as a photometric distort before the zoom-out) at the cost of the output's pixels."""
    colour = colour or (lambda pixels: pixels)
    pixels = sample["pixel_values"]
    _, ih, iw = pixels.shape
    oh, ow = size
    ww, wh = view.x1 - view.x0, view.y1 - view.y0
    fx, fy = ow / ww, oh / wh
    boxes = (to_xyxy(sample["boxes"]) - torch.tensor([view.x0, view.y0, view.x0, view.y0], dtype=torch.float32))
    boxes = boxes * torch.tensor([fx, fy, fx, fy])
    kept, mask, dropped = clip_and_filter(boxes, (ow, oh), keep=None, candidates=view.candidates)
    inside = view.x0 >= 0 and view.y0 >= 0 and view.x1 <= iw and view.y1 <= ih
    if inside:
        out = colour(resize(pixels[:, view.y0:view.y1, view.x0:view.x1], (oh, ow)))
    else:
        out = torch.full((oh, ow, 3), view.fill, dtype=torch.uint8).permute(2, 0, 1)  # channels-last like the loads
        ix0, iy0, ix1, iy1 = max(0, view.x0), max(0, view.y0), min(iw, view.x1), min(ih, view.y1)
        if ix1 > ix0 and iy1 > iy0:
            dx0, dx1 = (min(ow, max(0, round((v - view.x0) * fx))) for v in (ix0, ix1))
            dy0, dy1 = (min(oh, max(0, round((v - view.y0) * fy))) for v in (iy0, iy1))
            if dx1 > dx0 and dy1 > dy0:
                out[:, dy0:dy1, dx0:dx1] = colour(resize(pixels[:, iy0:iy1, ix0:ix1], (dy1 - dy0, dx1 - dx0)))
    return {**sample, "pixel_values": out, "boxes": to_xywh(kept), "class_labels": sample["class_labels"][mask],
            "boxes_dropped": sample.get("boxes_dropped", 0) + dropped}


def resize(pixels: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """uint8 (3, h, w) -> (3, *size), torch's antialiased bilinear on channels-last (its vectorised uint8
    path, about 6x the contiguous one). Also the resize of :func:`hftrain.data.augment.resize_sample`."""
    if tuple(pixels.shape[1:]) == tuple(size):
        return pixels
    return F.interpolate(pixels[None].contiguous(memory_format=torch.channels_last), size=tuple(size),
                         mode="bilinear", antialias=True, align_corners=False)[0]
