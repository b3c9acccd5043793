"""The model registry: an explicit dict from ``model.name`` to its builder. No import magic."""

from __future__ import annotations

from typing import Callable

from hftrain.models.detector import Detector
from hftrain.models.detr import build_conditional_detr, build_deformable_detr, build_detr
from hftrain.models.retinanet import build_retinanet
from hftrain.models.rt_detr import build_d_fine, build_rt_detr, build_rt_detr_v2

Builder = Callable[..., Detector]

MODELS: dict[str, Builder] = {
    "detr": build_detr,
    "conditional_detr": build_conditional_detr,
    "deformable_detr": build_deformable_detr,
    "rt_detr": build_rt_detr,
    "rt_detr_v2": build_rt_detr_v2,
    "d_fine": build_d_fine,
    "retinanet": build_retinanet,
}


def build_model(cfg, class_names: list[str], fp32_criterion: bool = True) -> Detector:
    """Build the detector named by ``cfg.name`` (the recipe's model section)."""
    return MODELS[cfg.name](cfg, class_names, fp32_criterion=fp32_criterion)
