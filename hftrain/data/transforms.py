"""Per-image preparation on uint8 pixels: decode, resize by shortest edge, flip.

Normalisation is not done here: images stay uint8 until they reach the device (a quarter of
the bytes of float32 through the workers, the pinned buffers and the host-to-device copy).
The output size follows transformers' DETR-family processors exactly
(``get_size_with_aspect_ratio``), so pixels match the reference preprocessing.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from transformers.image_transforms import get_size_with_aspect_ratio


@dataclass
class Resize:
    """Shortest edge to ``min_size`` unless the longest edge would exceed ``max_size``;
    with ``square``, every image to ``min_size`` x ``min_size`` (aspect ratio not kept)."""

    min_size: int
    max_size: int
    square: bool = False

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        if self.square:
            return self.min_size, self.min_size
        return get_size_with_aspect_ratio((height, width), self.min_size, self.max_size)


def prepare_image(
    image: Image.Image,
    boxes_xywh: np.ndarray,
    annotated_size: tuple[int, int],
    resize: Resize,
    hflip: float,
    rng: random.Random | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Resize (and maybe flip) ``image`` and its boxes.

    ``boxes_xywh`` are absolute pixels in the annotated frame ``annotated_size`` (height, width);
    the result is a uint8 (3, H, W) tensor and float32 absolute xywh boxes in the output frame.
    """
    ann_h, ann_w = annotated_size
    out_h, out_w = resize.output_size(image.height, image.width)
    if (out_h, out_w) != (image.height, image.width):
        image = image.resize((out_w, out_h), Image.BILINEAR)
    boxes = np.asarray(boxes_xywh, dtype=np.float32).reshape(-1, 4).copy()
    boxes[:, [0, 2]] *= out_w / ann_w
    boxes[:, [1, 3]] *= out_h / ann_h
    if hflip > 0 and (rng or random).random() < hflip:
        image = image.transpose(Image.FLIP_LEFT_RIGHT)
        boxes[:, 0] = out_w - boxes[:, 0] - boxes[:, 2]
    pixels = torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1)
    return pixels, torch.from_numpy(boxes)
