"""Per-image preparation on uint8 pixels: decode, resize by shortest edge, flip.

Normalisation is not done here: images stay uint8 until they reach the device (a quarter of
the bytes of float32 through the workers, the pinned buffers and the host-to-device copy).
The output size follows transformers' DETR-family processors exactly
(``get_size_with_aspect_ratio``), so pixels match the reference preprocessing. The resize is
torch's uint8 antialiased bilinear (vectorised, about twice as fast as PIL's on one core and
within one uint8 level of PIL's BILINEAR); the flip is done after it, on the smaller image when
downscaling.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from transformers.image_transforms import get_size_with_aspect_ratio


@dataclass
class Resize:
    """Shortest edge to ``min_size`` unless the longest edge would exceed ``max_size``;
    with ``square``, every image to ``min_size`` x ``min_size`` (aspect ratio not kept)."""

    min_size: int
    max_size: int
    square: bool = False
    draft: bool = True
    """Decode JPEGs at 1/2, 1/4 or 1/8 scale when the output is at most half their size
    (``data.jpeg_draft``; see :func:`hftrain.data.decode.decode_for_size`)."""

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
    source_size: tuple[int, int] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Resize (and maybe flip) ``image`` and its boxes.

    ``boxes_xywh`` are absolute pixels in the annotated frame ``annotated_size`` (height, width);
    the result is a uint8 (3, H, W) tensor and float32 absolute xywh boxes in the output frame.
    ``source_size``: the full (height, width) when ``image`` was decoded at a reduced scale
    (JPEG draft mode); the output size follows it, as it would without the reduced decode.
    """
    ann_h, ann_w = annotated_size
    out_h, out_w = resize.output_size(*(source_size or (image.height, image.width)))
    pixels = torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1)  # (3, H, W) view of HWC
    if (out_h, out_w) != (image.height, image.width):
        # uint8 in, uint8 out (rounded); channels-last input takes torch's vectorised path
        pixels = F.interpolate(pixels[None], size=(out_h, out_w), mode="bilinear", antialias=True,
                               align_corners=False)[0]
    boxes = resize_boxes(boxes_xywh, (ann_h, ann_w), (out_h, out_w))
    if hflip > 0 and (rng or random).random() < hflip:
        pixels, boxes = flip_horizontal(pixels, boxes)
    return pixels, boxes


def resize_boxes(boxes_xywh: np.ndarray, annotated_size: tuple[int, int],
                 output_size: tuple[int, int]) -> torch.Tensor:
    """Absolute xywh boxes of the annotated frame (height, width) scaled to the output frame."""
    (ann_h, ann_w), (out_h, out_w) = annotated_size, output_size
    boxes = np.asarray(boxes_xywh, dtype=np.float32).reshape(-1, 4).copy()
    boxes[:, [0, 2]] *= out_w / ann_w
    boxes[:, [1, 3]] *= out_h / ann_h
    return torch.from_numpy(boxes)


def flip_horizontal(pixels: torch.Tensor, boxes_xywh: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mirror a uint8 (3, H, W) image and its absolute xywh boxes left to right."""
    boxes = boxes_xywh.clone()
    boxes[:, 0] = pixels.shape[-1] - boxes[:, 0] - boxes[:, 2]
    return pixels.flip(-1), boxes
