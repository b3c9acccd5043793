"""From a collated uint8 batch to the model's keyword inputs, on the device."""

from __future__ import annotations

import torch


class Normalize:
    """uint8 batch -> float model input, on the device: ``(x / 255 - mean) / std``."""

    def __init__(self, mean, std, device):
        self.mean = torch.tensor(mean, device=device).view(1, 3, 1, 1) * 255.0
        self.std = torch.tensor(std, device=device).view(1, 3, 1, 1) * 255.0

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        return (pixels.float() - self.mean) / self.std


def model_inputs(batch: dict, normalize: Normalize, uses_pixel_mask: bool) -> dict:
    inputs = {"pixel_values": normalize(batch["pixel_values"])}
    if uses_pixel_mask:
        inputs["pixel_mask"] = batch["pixel_mask"]
    return inputs


def configure_processor(detector, data_cfg) -> None:
    """The saved image processor resizes as training did, so the pipeline sees the same sizes."""
    if detector.image_processor is None:
        return
    if data_cfg.resize == "square":
        detector.image_processor.size = {"height": data_cfg.min_size, "width": data_cfg.min_size}
    else:
        detector.image_processor.size = {"shortest_edge": data_cfg.min_size, "longest_edge": data_cfg.max_size}
