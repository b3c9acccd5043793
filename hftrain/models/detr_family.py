"""Builders for the transformers DETR-family detectors (RT-DETR, Deformable DETR).

Each builder takes the recipe's model section and the class names, loads pretrained weights
(a hub id or a local directory, heads re-initialised to the recipe's labels) or builds from a
config, and returns a :class:`Detector` with the family's image processor and post-processing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoModelForObjectDetection,
    DeformableDetrConfig,
    DeformableDetrForObjectDetection,
    PreTrainedModel,
    RTDetrConfig,
    RTDetrForObjectDetection,
)
from transformers.models.deformable_detr.image_processing_pil_deformable_detr import (
    DeformableDetrImageProcessorPil,
)
from transformers.models.rt_detr.image_processing_pil_rt_detr import RTDetrImageProcessorPil

from hftrain.models.criterion import run_loss_in_fp32
from hftrain.models.detector import Detector

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class PretrainedNotFound(OSError):
    """Pretrained weights could not be loaded (no network, wrong id, missing directory)."""


def _labels(class_names: list[str]) -> dict[str, Any]:
    id2label = dict(enumerate(class_names))
    return {
        "num_labels": len(class_names),
        "id2label": id2label,
        "label2id": {name: i for i, name in id2label.items()},
    }


def load_pretrained(name: str, class_names: list[str], overrides: dict[str, Any]) -> PreTrainedModel:
    """``from_pretrained`` with the recipe's labels; mismatched heads are re-initialised."""
    try:
        return AutoModelForObjectDetection.from_pretrained(
            name, ignore_mismatched_sizes=True, **_labels(class_names), **overrides
        )
    except OSError as err:
        where = "local directory" if Path(name).exists() else "hub id"
        raise PretrainedNotFound(
            f"model.pretrained: could not load {where} {name!r} ({err.__class__.__name__}: {str(err)[:300]}). "
            "Without network access, download the weights elsewhere (save_pretrained) and pass the local "
            "directory as model.pretrained."
        ) from None


def _finish(model: PreTrainedModel, fp32_criterion: bool) -> PreTrainedModel:
    if fp32_criterion:
        run_loss_in_fp32(model)
    return model


def build_rt_detr(cfg, class_names: list[str], fp32_criterion: bool = True) -> Detector:
    """RT-DETR: no pixel mask, focal-style sigmoid scores, images rescaled to [0, 1] only."""
    if cfg.pretrained:
        model = load_pretrained(cfg.pretrained, class_names, cfg.config)
    else:
        overrides = dict(cfg.config)
        backbone = overrides.pop("backbone_config", None)
        if isinstance(backbone, dict):
            backbone = {"model_type": "rt_detr_resnet", **backbone}
        config = RTDetrConfig(**overrides, **({"backbone_config": backbone} if backbone else {}), **_labels(class_names))
        model = RTDetrForObjectDetection(config)
    processor = RTDetrImageProcessorPil()

    def postprocess(outputs, target_sizes: torch.Tensor):
        return processor.post_process_object_detection(
            outputs, threshold=0.0, target_sizes=target_sizes, use_focal_loss=model.config.use_focal_loss
        )

    return Detector(
        model=_finish(model, fp32_criterion),
        postprocess=postprocess,
        image_processor=processor,
        image_mean=(0.0, 0.0, 0.0),
        image_std=(1.0, 1.0, 1.0),
        uses_pixel_mask=False,
        pad_to_multiple=32,  # the encoder's FPN adds stride-8/16/32 maps: sizes must divide evenly
        find_unused_parameters=False,
        backbone_prefixes=("model.backbone",),
    )


def build_deformable_detr(cfg, class_names: list[str], fp32_criterion: bool = True) -> Detector:
    """Deformable DETR (with_box_refine / two_stage via ``model.config``): reads the pixel mask."""
    if cfg.pretrained:
        model = load_pretrained(cfg.pretrained, class_names, cfg.config)
    else:
        overrides = dict(cfg.config)
        backbone = overrides.pop("backbone_config", None)
        if isinstance(backbone, dict):
            backbone = {"model_type": "resnet", **backbone}
            overrides.setdefault("use_timm_backbone", False)
        config = DeformableDetrConfig(
            **overrides, **({"backbone_config": backbone} if backbone else {}), **_labels(class_names)
        )
        model = DeformableDetrForObjectDetection(config)
    processor = DeformableDetrImageProcessorPil()

    def postprocess(outputs, target_sizes: torch.Tensor):
        return processor.post_process_object_detection(outputs, threshold=0.0, target_sizes=target_sizes, top_k=100)

    config = model.config
    return Detector(
        model=_finish(model, fp32_criterion),
        postprocess=postprocess,
        image_processor=processor,
        image_mean=IMAGENET_MEAN,
        image_std=IMAGENET_STD,
        uses_pixel_mask=True,
        # without auxiliary loss, and with two-stage encoder outputs, some parameters get no gradient
        find_unused_parameters=not config.auxiliary_loss or config.two_stage,
        backbone_prefixes=("model.backbone",),
    )
