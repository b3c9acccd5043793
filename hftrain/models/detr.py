"""Builders for DETR, Conditional DETR and Deformable DETR (transformers).

These read the pixel mask (boxes normalised by each image's own size), take ImageNet-normalised
input and need no size multiple. A ``model.config`` ``backbone_config`` dict is a transformers
``ResNetConfig`` (no timm needed); without one transformers builds a timm ResNet-50.
"""

from __future__ import annotations

from transformers import (
    ConditionalDetrConfig,
    ConditionalDetrForObjectDetection,
    DeformableDetrConfig,
    DeformableDetrForObjectDetection,
    DetrConfig,
    DetrForObjectDetection,
    PreTrainedModel,
    ResNetBackbone,
)
from transformers.models.conditional_detr.image_processing_pil_conditional_detr import (
    ConditionalDetrImageProcessorPil,
)
from transformers.models.deformable_detr.image_processing_pil_deformable_detr import (
    DeformableDetrImageProcessorPil,
)
from transformers.models.detr.image_processing_pil_detr import DetrImageProcessorPil

from hftrain.models.detector import Detector
from hftrain.models.detr_family import IMAGENET_MEAN, IMAGENET_STD, backbone_tail_unused, build_or_load, finish
from hftrain.models.postprocess import sigmoid_topk, softmax_per_query

TRAINED_RESNET_STAGES = ("encoder.stages.1.", "encoder.stages.2.", "encoder.stages.3.")
"""ResNet layer2-4 (0-based stages 1-3): what the original DETR trains; stem and layer1 stay frozen."""


def train_later_resnet_stages(model: PreTrainedModel) -> None:
    """Make ResNet layer2-4 trainable, as the original DETR (and transformers' timm path) does.

    transformers 5.23 means to freeze only the stem and layer1, but for its own ResNet
    (``use_timm_backbone=False``) it looks for ``"stage.1"`` in names spelt ``"stages.1"``, which
    freezes the whole backbone. Other backbones are left as transformers built them."""
    backbone = model.model.backbone.model
    if not isinstance(backbone, ResNetBackbone):
        return
    for name, parameter in backbone.named_parameters():
        if name.startswith(TRAINED_RESNET_STAGES):
            parameter.requires_grad_(True)


def _detector(model: PreTrainedModel, processor, postprocess, fp32_criterion: bool,
              find_unused_parameters: bool) -> Detector:
    train_later_resnet_stages(model)
    return Detector(
        model=finish(model, fp32_criterion),
        postprocess=postprocess,
        image_processor=processor,
        image_mean=IMAGENET_MEAN,
        image_std=IMAGENET_STD,
        uses_pixel_mask=True,
        pad_to_multiple=1,
        find_unused_parameters=find_unused_parameters,
        backbone_prefixes=("model.backbone",),
    )


def build_detr(cfg, class_names: list[str], fp32_criterion: bool = True) -> Detector:
    """DETR: softmax classification with a "no object" class; one detection per query. Every
    trainable parameter gets a gradient, with or without ``auxiliary_loss``."""
    model = build_or_load(cfg, class_names, DetrConfig, DetrForObjectDetection, "resnet")
    return _detector(model, DetrImageProcessorPil(), softmax_per_query, fp32_criterion,
                     find_unused_parameters=backbone_tail_unused(model.config))


def build_conditional_detr(cfg, class_names: list[str], fp32_criterion: bool = True) -> Detector:
    """Conditional DETR: sigmoid focal classification (Deformable DETR's loss in transformers).
    Every trainable parameter gets a gradient, with or without ``auxiliary_loss``."""
    model = build_or_load(cfg, class_names, ConditionalDetrConfig, ConditionalDetrForObjectDetection, "resnet")
    return _detector(model, ConditionalDetrImageProcessorPil(), sigmoid_topk, fp32_criterion,
                     find_unused_parameters=backbone_tail_unused(model.config))


def build_deformable_detr(cfg, class_names: list[str], fp32_criterion: bool = True) -> Detector:
    """Deformable DETR; ``with_box_refine`` and ``two_stage`` (which needs box refinement) through
    ``model.config``. With ``two_stage`` the encoder's proposal head (``enc_output``, the last
    class/box embeddings) gets no gradient: transformers computes no encoder loss, so DDP must look
    for unused parameters. Auxiliary loss and box refinement alone leave none unused."""
    model = build_or_load(cfg, class_names, DeformableDetrConfig, DeformableDetrForObjectDetection, "resnet")
    config = model.config
    return _detector(model, DeformableDetrImageProcessorPil(), sigmoid_topk, fp32_criterion,
                     find_unused_parameters=bool(config.two_stage) or backbone_tail_unused(config))
