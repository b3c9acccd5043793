"""The model registry: an explicit dict from ``model.name`` to its builder. No import magic."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from hftrain.models.detector import Detector
from hftrain.models.pretrained import PretrainedNotFound, check_pretrained
from hftrain.models.detr import build_conditional_detr, build_deformable_detr, build_detr
from hftrain.models.retinanet_builder import build_retinanet
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


def check_model(cfg) -> str | None:
    """Whether the recipe's pretrained checkpoint can load, checked before any data is read
    (:func:`hftrain.models.pretrained.check_pretrained`); its description, or None without one.
    Raises :class:`hftrain.models.pretrained.PretrainedError` naming the checkpoint and what to do."""
    if not cfg.pretrained:
        return None
    if cfg.name == "retinanet":  # a local directory: a transformers ResNet or a saved hftrain_retinanet
        if not (Path(cfg.pretrained) / "config.json").is_file():
            raise PretrainedNotFound(f"model.pretrained: no config.json in {cfg.pretrained!r}; RetinaNet loads a local "
                                     "directory written by save_pretrained (a transformers ResNet or a RetinaNet run's model/)")
        return f"{cfg.pretrained} (local directory)"
    return check_pretrained(cfg.pretrained).describe()
