"""One fixed loss computation per DETR family, shared by the 2-process worker
(tests/helpers/box_count_worker.py) and the one-process reference in tests/models/test_families.py.

Four 64x64 images with 3, 1, 3 and 3 boxes: split over two processes, process 0 has 4 boxes and
process 1 has 6, so a per-process box count differs from the global one (5 per process). Every
process's largest image has 3 boxes, so RT-DETR's denoising groups (num_denoising // most boxes)
are the same in both splits and in the whole batch.
"""

from __future__ import annotations

from types import SimpleNamespace

import torch
from torch import nn

from hftrain.models.registry import build_model
from hftrain.models.tiny import tiny_config

FAMILIES = ("detr", "conditional_detr", "deformable_detr", "rt_detr", "rt_detr_v2", "d_fine")
CLASSES = ["a", "b", "c"]
BOXES_PER_IMAGE = (3, 1, 3, 3)
IMAGES_PER_PROCESS = 2

# Terms that are a mean over the process's own batch by design (as in the official codes), not
# normalised by the box count: DETR's weighted cross-entropy over all queries, D-FINE's
# distillation term. The mean over processes of these is not the whole batch's value.
PER_PROCESS_MEANS = {"detr": ("loss_ce",), "d_fine": ("loss_ddf",)}


def images_and_labels() -> tuple[torch.Tensor, list[dict[str, torch.Tensor]]]:
    generator = torch.Generator().manual_seed(0)
    pixels = torch.rand(len(BOXES_PER_IMAGE), 3, 64, 64, generator=generator)
    labels = []
    for count in BOXES_PER_IMAGE:
        centres = 0.3 + 0.4 * torch.rand(count, 2, generator=generator)
        sizes = 0.1 + 0.3 * torch.rand(count, 2, generator=generator)
        labels.append({"class_labels": torch.randint(0, len(CLASSES), (count,), generator=generator),
                       "boxes": torch.cat([centres, sizes], dim=1)})
    return pixels, labels


def build(name: str):
    """The family's tiny detector with the same weights on every process, made batch-independent:
    no dropout and BatchNorm in eval mode (random masks and batch statistics would differ between
    the splits), RT-DETR-like denoising queries without noise (noise is drawn per batch)."""
    config = {**tiny_config(name), "dropout": 0.0}
    if name in ("rt_detr", "rt_detr_v2", "d_fine"):
        config.update(label_noise_ratio=0.0, box_noise_scale=0.0)
    torch.manual_seed(0)
    section = SimpleNamespace(name=name, pretrained=None, config=config, norm="default",
                              norm_scope=["backbone", "fpn", "head"])
    detector = build_model(section, CLASSES)
    batch_independent(detector.model)
    return detector


def batch_independent(model: nn.Module) -> nn.Module:
    model.train()
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.eval()
    return model


def transformers_copy(model: nn.Module) -> nn.Module:
    """The same network and weights with transformers' own loss path (none of our wrappers)."""
    raw = type(model)(model.config)
    raw.load_state_dict(model.state_dict())
    return batch_independent(raw)


def loss_terms(detector, model: nn.Module, pixels: torch.Tensor, labels: list[dict]) -> dict[str, float]:
    inputs = {"pixel_values": pixels}
    if detector.uses_pixel_mask:
        inputs["pixel_mask"] = torch.ones(pixels.shape[0], *pixels.shape[2:], dtype=torch.long)
    outputs = model(**inputs, labels=labels)
    return {"loss": float(outputs.loss.detach()), **{k: float(v.detach()) for k, v in outputs.loss_dict.items()}}
