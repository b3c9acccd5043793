"""Builders for the transformers DETR-family detectors (RT-DETR, Deformable DETR).

Each builder takes the recipe's model section and the class names, loads pretrained weights
(a hub id or a local directory, heads re-initialised to the recipe's labels) or builds from a
config, and returns a :class:`Detector` with the family's image processor and post-processing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn
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


def sigmoid_topk(outputs, target_sizes: torch.Tensor, k: int = 100) -> list[dict[str, torch.Tensor]]:
    """Focal-style (sigmoid) detections: each image's top ``k`` (query, class) pairs, boxes as
    absolute xyxy scaled by ``target_sizes`` (height, width). transformers' RT-DETR post-processing
    keeps only ``num_queries`` of them, fewer than the 100 detections COCO evaluation counts."""
    logits, boxes = outputs.logits.float(), outputs.pred_boxes.float()
    num_classes = logits.shape[-1]
    scores, index = logits.sigmoid().flatten(1).topk(min(k, logits.shape[1] * num_classes), dim=1)
    queries = index // num_classes
    cx, cy, w, h = boxes.gather(1, queries.unsqueeze(-1).expand(-1, -1, 4)).unbind(-1)
    height, width = target_sizes.to(boxes.device).float().unbind(1)
    xyxy = torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=-1)
    xyxy = xyxy * torch.stack([width, height, width, height], dim=1)[:, None, :]
    return [{"scores": s, "labels": l, "boxes": b} for s, l, b in zip(scores, index % num_classes, xyxy)]


def reset_batchnorm_scale(model: nn.Module) -> None:
    """BatchNorm weights to 1 (PyTorch's default). transformers initialises RT-DETR's from
    N(0, 0.01): harmless when pretrained weights replace them, but from scratch every BatchNorm
    starts with a near-zero gain."""
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)


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
        reset_batchnorm_scale(model)
    processor = RTDetrImageProcessorPil()

    def postprocess(outputs, target_sizes: torch.Tensor):
        if model.config.use_focal_loss:
            return sigmoid_topk(outputs, target_sizes)
        return processor.post_process_object_detection(outputs, threshold=0.0, target_sizes=target_sizes,
                                                       use_focal_loss=False)

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

    config = model.config
    return Detector(
        model=_finish(model, fp32_criterion),
        postprocess=sigmoid_topk,
        image_processor=processor,
        image_mean=IMAGENET_MEAN,
        image_std=IMAGENET_STD,
        uses_pixel_mask=True,
        # without auxiliary loss, and with two-stage encoder outputs, some parameters get no gradient
        find_unused_parameters=not config.auxiliary_loss or config.two_stage,
        backbone_prefixes=("model.backbone",),
    )
