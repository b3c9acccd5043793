"""Training augmentation on uint8 images: mosaic, mixup and scale jitter (the flip is in transforms.py).

A sample is what :meth:`hftrain.data.loader.DetectionDataset.load` returns: ``pixel_values`` uint8
(3, H, W), ``boxes`` float32 absolute xywh in that image, ``class_labels`` int64, plus ``image_id``,
``orig_size`` and ``failed``. Each function here returns a new sample and never writes into the ones
it is given (``load`` may hand out tensors that a RAM cache shares between workers). The random
choices (which images, the centre, the ratio, the factor) are arguments: the dataset draws them from
the sample's (seed, epoch, index) generator, so the functions themselves are deterministic.

Everything stays uint8 and vectorised: the mosaic is four slice copies onto a canvas, the mixup an
int16 blend with a 7-bit weight (half the bytes of a float blend, and faster), the resizes torch's
antialiased bilinear on channels-last uint8 (its fast path).

Boxes that a mosaic cuts so much that they are no longer useful targets are dropped and counted in
the sample's ``boxes_dropped`` (the collate sums it per batch, the loop logs it per window).
"""

from __future__ import annotations

import torch

from hftrain.data.geometric import resize

FILL = 114
"""Canvas value where no tile reaches (ultralytics' gray; about the ImageNet mean, so ~0 once normalised)."""

MIXUP_BETA = 32.0
"""Mixup ratio ~ Beta(32, 32), as ultralytics draws it (mean 0.5, standard deviation 0.06)."""

MOSAIC_CENTRE = (0.25, 0.75)
"""The mosaic centre is drawn uniformly in this fraction of the canvas on each axis (ultralytics'
range on its 2x canvas, whose middle it then crops)."""


def mosaic(tiles: list[dict], size: tuple[int, int], centre: tuple[float, float],
           min_box_size: float = 2.0, min_visible: float = 0.1) -> dict:
    """Four samples on one ``size`` (height, width) canvas meeting at ``centre`` (fractions of the width
    and height): tile 0 top-left (its bottom-right corner at the centre), 1 top-right, 2 bottom-left,
    3 bottom-right, each at its own resolution (not rescaled), cut by the canvas edges and the centre
    lines; gray (:data:`FILL`) where a tile does not reach.

    Each box is clipped to the visible part of its tile. A box that was partly visible but whose
    clipped part is narrower or lower than ``min_box_size`` pixels, or covers less than ``min_visible``
    of the box's area, is dropped and counted in ``boxes_dropped``. Boxes wholly outside the visible
    part are left out uncounted: nothing of their object is on the canvas. The other keys
    (``image_id``, ``orig_size``) are tile 0's; ``failed`` adds up the tiles'.
    """
    if len(tiles) != 4:
        raise ValueError(f"mosaic: needs 4 samples, got {len(tiles)}")
    height, width = size
    cx, cy = round(centre[0] * width), round(centre[1] * height)
    # channels-last like the loaded images (a permuted HWC array): the copies and a later resize stay fast
    canvas = torch.full((height, width, 3), FILL, dtype=torch.uint8).permute(2, 0, 1)
    boxes, labels, dropped = [], [], 0
    for k, tile in enumerate(tiles):
        pixels = tile["pixel_values"]
        _, th, tw = pixels.shape
        right, below = k in (1, 3), k in (2, 3)
        ox, oy = (cx if right else cx - tw), (cy if below else cy - th)  # the tile's origin on the canvas
        x0, x1 = (cx, min(width, cx + tw)) if right else (max(0, cx - tw), cx)  # its visible part
        y0, y1 = (cy, min(height, cy + th)) if below else (max(0, cy - th), cy)
        if x1 <= x0 or y1 <= y0:
            continue  # a centre on the canvas edge leaves no room for this tile
        canvas[:, y0:y1, x0:x1] = pixels[:, y0 - oy:y1 - oy, x0 - ox:x1 - ox]
        shifted = tile["boxes"] + torch.tensor([ox, oy, 0.0, 0.0])
        kept, keep, lost = clip_boxes(shifted, (x0, y0, x1, y1), min_box_size, min_visible)
        boxes.append(kept)
        labels.append(tile["class_labels"][keep])
        dropped += lost
    first = tiles[0]
    return {
        **first,
        "pixel_values": canvas,
        "boxes": torch.cat(boxes) if boxes else torch.zeros((0, 4)),
        "class_labels": torch.cat(labels) if labels else torch.zeros((0,), dtype=torch.long),
        "failed": sum(t.get("failed", 0) for t in tiles),
        "boxes_dropped": dropped + sum(t.get("boxes_dropped", 0) for t in tiles),
    }


def clip_boxes(boxes_xywh: torch.Tensor, window: tuple[int, int, int, int], min_box_size: float,
               min_visible: float) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Clip absolute xywh boxes to ``window`` (x0, y0, x1, y1). Returns the kept boxes (clipped), the
    keep mask over the input, and how many boxes reached into the window but were dropped (their
    visible part narrower or lower than ``min_box_size`` or under ``min_visible`` of their area)."""
    low = torch.tensor(window[:2], dtype=torch.float32)
    high = torch.tensor(window[2:], dtype=torch.float32)
    start, end = boxes_xywh[:, :2], boxes_xywh[:, :2] + boxes_xywh[:, 2:]
    inside = (end > low).all(1) & (start < high).all(1)  # reaches into the window
    clipped_start = torch.maximum(start, low)
    clipped_size = (torch.minimum(end, high) - clipped_start).clamp(min=0)
    area = boxes_xywh[:, 2] * boxes_xywh[:, 3]
    keep = inside & (clipped_size >= min_box_size).all(1) & (clipped_size.prod(1) >= min_visible * area)
    return torch.cat([clipped_start, clipped_size], 1)[keep], keep, int((inside & ~keep).sum())


def mixup(sample: dict, other: dict, ratio: float) -> dict:
    """``ratio * sample + (1 - ratio) * other`` in pixels (``other`` first resized to ``sample``'s size if
    it differs, its boxes scaled with it), the boxes and labels of both. An int16 blend with the ratio
    rounded to w / 128: ``(w * sample + (128 - w) * other + 64) >> 7``, within 1.5 uint8 levels of the
    float blend. ``image_id`` and ``orig_size`` are ``sample``'s; ``failed`` and ``boxes_dropped`` add up."""
    _, height, width = sample["pixel_values"].shape
    if tuple(other["pixel_values"].shape[1:]) != (height, width):
        other = resize_sample(other, (height, width))
    weight = round(min(max(ratio, 0.0), 1.0) * 128)
    blend = sample["pixel_values"].to(torch.int16).mul_(weight)  # a new tensor: the input is not touched
    blend.add_(other["pixel_values"].to(torch.int16).mul_(128 - weight)).add_(64).bitwise_right_shift_(7)
    return {
        **sample,
        "pixel_values": blend.to(torch.uint8),
        "boxes": torch.cat([sample["boxes"], other["boxes"]]),
        "class_labels": torch.cat([sample["class_labels"], other["class_labels"]]),
        "failed": sample.get("failed", 0) + other.get("failed", 0),
        "boxes_dropped": sample.get("boxes_dropped", 0) + other.get("boxes_dropped", 0),
    }


def scale(sample: dict, factor: float) -> dict:
    """The sample rescaled by ``factor`` (each side rounded, at least 1 pixel), boxes with it."""
    _, height, width = sample["pixel_values"].shape
    return resize_sample(sample, (max(1, round(height * factor)), max(1, round(width * factor))))


def resize_sample(sample: dict, size: tuple[int, int]) -> dict:
    """The sample's image resized to ``size`` (height, width) and its boxes scaled per axis."""
    pixels = sample["pixel_values"]
    _, height, width = pixels.shape
    if (height, width) == tuple(size):
        return sample
    resized = resize(pixels, size)  # uint8 in and out, on torch's channels-last uint8 path
    factors = torch.tensor([size[1] / width, size[0] / height, size[1] / width, size[0] / height])
    return {**sample, "pixel_values": resized, "boxes": sample["boxes"] * factors}
