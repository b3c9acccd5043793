"""Builders for DETR, Conditional DETR and Deformable DETR (transformers).

These read the pixel mask (boxes normalised by each image's own size), take ImageNet-normalised
input and need no size multiple. A ``model.config`` ``backbone_config`` dict is a transformers
``ResNetConfig``; without one transformers' default (timm's ResNet-50) becomes the same network in
transformers' ResNet (:mod:`hftrain.models.timm_resnet`), as do the timm ResNets of hub checkpoints.
The ResNet's stem and layer1 stay frozen, as in DETR (:func:`freeze_like_detr`).
"""

from __future__ import annotations

import transformers
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
from hftrain.models.pretrained import Loaded

TRAINED_RESNET_STAGES = ("encoder.stages.1.", "encoder.stages.2.", "encoder.stages.3.")
"""ResNet layer2-4 (0-based stages 1-3): what the original DETR trains; stem and layer1 stay frozen."""
TRAINED_TIMM_LAYERS = ("layer2.", "layer3.", "layer4.")
"""The same for timm's ResNet (transformers builds it where timm is installed and the backbone has
no transformers equivalent, e.g. DETR's dilated DC5)."""


def freeze_like_detr(model: PreTrainedModel) -> str | None:
    """Train ResNet layer2-4 and freeze the stem and layer1, as the original DETR and Deformable DETR do.

    transformers 5.24 means to, but for its own ResNet looks for ``"stage.1"`` in names spelt
    ``"stages.1"`` (the whole backbone freezes), for timm's only when the backbone's model type
    contains "resnet" (``timm_backbone`` does not: nothing freezes), and ``from_pretrained``
    loads parameters that all train. This checks what transformers left: already DETR's freezing
    (a newer transformers) gives a note and changes nothing; otherwise it is corrected. Returns the
    note. Other backbones are left as transformers built them."""
    backbone = model.model.backbone.model
    if isinstance(backbone, ResNetBackbone):
        trained = TRAINED_RESNET_STAGES
    elif all(hasattr(backbone, name) for name in ("conv1", "bn1", "layer4")):  # timm's ResNet
        trained = TRAINED_TIMM_LAYERS
    else:
        return None
    parameters = dict(backbone.named_parameters())
    wanted = {name: name.startswith(trained) for name in parameters}
    if all(parameters[name].requires_grad == train for name, train in wanted.items()):
        return (f"backbone freezing: transformers {transformers.__version__} already trains only ResNet layer2-4 of "
                f"{type(model).__name__}; hftrain's correction is off")
    for name, train in wanted.items():
        parameters[name].requires_grad_(train)
    return None


def _detector(model: PreTrainedModel, loaded: Loaded, processor, postprocess, fp32_criterion: bool,
              find_unused_parameters: bool) -> Detector:
    notes = [note for note in [freeze_like_detr(model)] if note]
    return Detector(
        model=model,
        postprocess=postprocess,
        image_processor=processor,
        image_mean=IMAGENET_MEAN,
        image_std=IMAGENET_STD,
        uses_pixel_mask=True,
        pad_to_multiple=1,
        find_unused_parameters=find_unused_parameters,
        backbone_prefixes=("model.backbone",),
        loaded=loaded.summary,
        notes=loaded.notes + notes + finish(model, fp32_criterion),
    )


def build_detr(cfg, class_names: list[str], fp32_criterion: bool = True) -> Detector:
    """DETR: softmax classification with a "no object" class; one detection per query. Every
    trainable parameter gets a gradient, with or without ``auxiliary_loss``."""
    model, loaded = build_or_load(cfg, class_names, DetrConfig, DetrForObjectDetection, "resnet")
    return _detector(model, loaded, DetrImageProcessorPil(), softmax_per_query, fp32_criterion,
                     find_unused_parameters=backbone_tail_unused(model.config))


def build_conditional_detr(cfg, class_names: list[str], fp32_criterion: bool = True) -> Detector:
    """Conditional DETR: sigmoid focal classification (Deformable DETR's loss in transformers).
    Every trainable parameter gets a gradient, with or without ``auxiliary_loss``."""
    model, loaded = build_or_load(cfg, class_names, ConditionalDetrConfig, ConditionalDetrForObjectDetection, "resnet")
    return _detector(model, loaded, ConditionalDetrImageProcessorPil(), sigmoid_topk, fp32_criterion,
                     find_unused_parameters=backbone_tail_unused(model.config))


def build_deformable_detr(cfg, class_names: list[str], fp32_criterion: bool = True) -> Detector:
    """Deformable DETR; ``with_box_refine`` and ``two_stage`` (which needs box refinement) through
    ``model.config``. With ``two_stage`` the encoder's proposal head (``enc_output``, the last
    class/box embeddings) gets no gradient: transformers computes no encoder loss, so DDP must look
    for unused parameters. Auxiliary loss and box refinement alone leave none unused."""
    model, loaded = build_or_load(cfg, class_names, DeformableDetrConfig, DeformableDetrForObjectDetection, "resnet")
    config = model.config
    return _detector(model, loaded, DeformableDetrImageProcessorPil(), sigmoid_topk, fp32_criterion,
                     find_unused_parameters=bool(config.two_stage) or backbone_tail_unused(config))
