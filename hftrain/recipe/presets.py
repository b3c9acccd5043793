"""The augmentation presets (``data.augment.preset``): the values each official pipeline gives the null
fields of :class:`~hftrain.recipe.schema.AugmentConfig`, and :func:`resolve_augment`, which fills them."""

from __future__ import annotations

from dataclasses import replace

from hftrain.recipe.schema import AugmentConfig


RTDETR_SCALES = [480, 512, 544, 576, 608, 640, 640, 640, 672, 704, 736, 768, 800]
"""RT-DETR's multi-scale sides (``rtdetrv2_pytorch/configs/rtdetrv2/include/dataloader.yml``), at its 640."""
DETR_SCALES = [480, 512, 544, 576, 608, 640, 672, 704, 736, 768, 800]
"""DETR's random-resize shorter sides (``datasets/coco.py``), at its 800."""

AUGMENT_PRESETS: dict[str, dict] = {
    "none": {"mosaic": 0.0, "mixup": 0.0, "photometric": 0.0, "zoom_out": 0.0, "iou_crop": 0.0, "random_resize": [],
             "size_crop": 0.0, "size_crop_resize": [], "size_crop_range": [384, 600], "hsv": 0.0, "affine": 0.0,
             "multiscale": []},
    "rtdetr": {"photometric": 0.5, "zoom_out": 0.5, "iou_crop": 0.8, "multiscale": ("rtdetr", RTDETR_SCALES)},
    "detr": {"random_resize": ("detr", DETR_SCALES), "size_crop": 0.5, "size_crop_resize": ("detr", [400, 500, 600]),
             "size_crop_range": ("detr", [384, 600])},
    "yolo": {"mosaic": 1.0, "mixup": 0.0, "hsv": 1.0, "affine": 1.0},
}
"""The values each preset gives the null fields of :class:`AugmentConfig` (the ``none`` entry fills what a
preset leaves out). A ``(family, sides)`` pair is a list of sides at the family's reference size
(:data:`PRESET_REFERENCE_SIZE`), scaled to data.min_size."""

PRESET_REFERENCE_SIZE = {"rtdetr": 640, "detr": 800}
"""The data.min_size at which each family's official lists apply as they are."""


def resolve_augment(augment: AugmentConfig, min_size: int) -> AugmentConfig:
    """``augment`` with every null field set from its preset (lists scaled to ``min_size``); idempotent."""
    values = {**AUGMENT_PRESETS["none"], **AUGMENT_PRESETS[augment.preset]}
    filled = {}
    for key, value in values.items():
        if getattr(augment, key) is not None:
            continue  # the recipe's own value wins
        if isinstance(value, tuple):  # sides at the family's reference size
            family, sides = value
            ratio = min_size / PRESET_REFERENCE_SIZE[family]
            value = [side if ratio == 1 else max(32, round(side * ratio / 32) * 32) for side in sides]
        filled[key] = list(value) if isinstance(value, list) else value
    return replace(augment, **filled) if filled else augment
