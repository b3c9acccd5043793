"""What a model builder returns: the model plus what the loop needs to feed and read it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

# postprocess(outputs, target_sizes) -> one dict per image with "scores" (N,), "labels" (N,)
# and "boxes" (N, 4) absolute xyxy in the coordinates that target_sizes (height, width) give.
PostProcess = Callable[[Any, torch.Tensor], list[dict[str, torch.Tensor]]]


@dataclass
class Detector:
    """A detection model and its contract with the loop.

    The model is called as ``model(pixel_values=..., pixel_mask=..., labels=...)`` where
    ``pixel_values`` is float (B, 3, H, W) already normalised with ``image_mean``/``image_std``
    and ``labels`` is the transformers DETR format: one dict per image with ``class_labels``
    (N,) long and ``boxes`` (N, 4) normalised ``(cx, cy, w, h)``. It returns an object with
    ``loss`` (scalar) and ``loss_dict`` (name -> scalar) when labels are given.
    """

    model: nn.Module
    postprocess: PostProcess
    image_processor: Any = None
    """Saved next to the weights so that transformers' pipeline can use the model."""
    image_mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    image_std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    uses_pixel_mask: bool = True
    """True when the model reads pixel_mask (DETR, Deformable DETR): boxes are then normalised
    by each image's own size; otherwise by the padded canvas the model sees."""
    pad_to_multiple: int = 1
    """The padded canvas is rounded up to a multiple of this many pixels."""
    find_unused_parameters: bool = False
    """Whether DDP must look for parameters that get no gradient in this family."""
    backbone_prefixes: tuple[str, ...] = field(default=("model.backbone",))
    """Parameter-name prefixes that get the backbone learning-rate multiplier."""
    loaded: str = ""
    """Where the weights came from, for the run header: pretrained checkpoint, backbone, heads
    re-initialised and their class-bias prior; or from scratch."""
    notes: list[str] = field(default_factory=list)
    """Lines printed once at the start of a run (e.g. a transformers behaviour hftrain no longer corrects)."""

    def save(self, directory) -> None:
        """Write weights, config and image processor so ``from_pretrained(directory)`` works."""
        unwrapped = self.model
        unwrapped.save_pretrained(directory)
        if self.image_processor is not None:
            self.image_processor.save_pretrained(directory)
