"""timm ResNet backbones of hub DETR-family checkpoints, loaded into transformers' own ResNet.

``SenseTime/deformable-detr``, ``facebook/detr-resnet-50`` / ``-101``, the Conditional DETR
checkpoints and their fine-tuned descendants were published with ``use_timm_backbone=True``: the
config names timm's ``resnet50`` and transformers 5.24 builds a ``TimmBackbone`` for it, which
raises ``ImportError`` without timm. The weights are timm's, under the conv encoder:
``model.backbone.conv_encoder.model.conv1.weight``, ``...bn1.*``, ``...layer1.0.conv1.weight``,
``...layer1.0.downsample.0.weight`` (the projection) and ``...downsample.1.*`` (its BatchNorm).

timm's ResNet-18/34/50/101/152 and transformers' ``ResNetModel`` (``downsample_in_bottleneck``
False, the default) are the same network: a 7x7/2 stem and 3x3/2 max-pool, blocks with the stride
in the 3x3 convolution and a strided 1x1 projection shortcut with BatchNorm where the shape
changes. :func:`resnet_config` gives the transformers config of the same network and
:func:`key_mapping` the renaming ``from_pretrained(key_mapping=...)`` applies to the checkpoint's
keys, so no timm is needed. A model loaded this way saves (and reloads) as a plain transformers
ResNet checkpoint.

timm's dilated variant (``dilation: true``, DETR's "DC5": layer4 without stride) has no
transformers ResNet equivalent; :class:`UnsupportedTimmBackbone` says what to do.
"""

from __future__ import annotations

import importlib.util
import re
from typing import Any

from transformers import PreTrainedConfig, ResNetConfig

TIMM_BACKBONE = "timm_backbone"

TIMM_RESNETS: dict[str, tuple[str, tuple[int, ...], tuple[int, ...]]] = {
    # timm name: (transformers layer_type, blocks per stage, output channels per stage)
    "resnet18": ("basic", (2, 2, 2, 2), (64, 128, 256, 512)),
    "resnet34": ("basic", (3, 4, 6, 3), (64, 128, 256, 512)),
    "resnet50": ("bottleneck", (3, 4, 6, 3), (256, 512, 1024, 2048)),
    "resnet101": ("bottleneck", (3, 4, 23, 3), (256, 512, 1024, 2048)),
    "resnet152": ("bottleneck", (3, 8, 36, 3), (256, 512, 1024, 2048)),
}

STAGE_NAMES = ("stem", "stage1", "stage2", "stage3", "stage4")
"""timm's feature index i (0: the stem after its activation, 1-4: layer1-4) is transformers' STAGE_NAMES[i]."""

BACKBONE_PREFIX = r"backbone\.(?:conv_encoder\.)?model\."
"""Where a DETR-family checkpoint keeps the backbone's weights: ``model.backbone.conv_encoder.model.``
as published (and as transformers 5.x saves it), ``model.backbone.model.`` once renamed."""


class UnsupportedTimmBackbone(ValueError):
    """A timm backbone that transformers' ResNet cannot reproduce."""


def timm_installed() -> bool:
    return importlib.util.find_spec("timm") is not None


def is_timm_backbone(config: PreTrainedConfig) -> bool:
    """Whether a DETR-family config builds timm's backbone (``use_timm_backbone`` checkpoints)."""
    backbone = getattr(config, "backbone_config", None)
    return getattr(backbone, "model_type", None) == TIMM_BACKBONE


def timm_name(backbone_config: PreTrainedConfig) -> str:
    """``resnet50`` for ``resnet50``, ``timm/resnet50.a1_in1k`` or ``resnet50.tv_in1k``."""
    return str(backbone_config.backbone or "").split("/")[-1].split(".")[0]


def resnet_config(backbone_config: PreTrainedConfig, source: str) -> ResNetConfig:
    """The transformers ``ResNetConfig`` of the network a ``timm_backbone`` config builds, with the
    same outputs (timm's ``out_indices`` become ``out_features``). ``source`` (e.g. ``model.pretrained
    'SenseTime/deformable-detr'``) starts the error for a backbone transformers' ResNet cannot reproduce."""
    name = timm_name(backbone_config)
    if name not in TIMM_RESNETS:
        raise UnsupportedTimmBackbone(
            f"{source}: its backbone is timm's {backbone_config.backbone!r}; hftrain maps only "
            f"timm's {', '.join(TIMM_RESNETS)} to transformers' ResNet. Install timm (pip install timm, which needs "
            f"torchvision) to load it as published, or choose a checkpoint with one of these backbones.")
    if getattr(backbone_config, "output_stride", None) not in (None, 32):
        raise UnsupportedTimmBackbone(
            f"{source}: its backbone is timm's dilated {name} (dilation: true, DETR's DC5, "
            f"output stride {backbone_config.output_stride}); transformers' ResNet has no dilation. Install timm "
            f"(pip install timm, which needs torchvision) to load it as published, or choose the checkpoint without "
            f"DC5 (e.g. facebook/detr-resnet-50 instead of facebook/detr-resnet-50-dc5).")
    layer_type, depths, widths = TIMM_RESNETS[name]
    indices = list(backbone_config.out_indices or [-1])
    return ResNetConfig(
        num_channels=backbone_config.num_channels,
        embedding_size=64,
        hidden_sizes=list(widths),
        depths=list(depths),
        layer_type=layer_type,
        hidden_act="relu",
        downsample_in_first_stage=False,
        downsample_in_bottleneck=False,
        out_features=[STAGE_NAMES[i] for i in indices],
    )


def timm_to_transformers(config: ResNetConfig) -> dict[str, str]:
    """Module names inside the backbone, timm's -> transformers', for the ResNet ``config`` describes
    (each ends with a dot: the parameter and buffer names follow unchanged)."""
    names = {"conv1.": "embedder.embedder.convolution.", "bn1.": "embedder.embedder.normalization."}
    convs = 3 if config.layer_type == "bottleneck" else 2
    for stage, blocks in enumerate(config.depths):
        for block in range(blocks):
            timm = f"layer{stage + 1}.{block}."
            ours = f"encoder.stages.{stage}.layers.{block}."
            for conv in range(convs):
                names[f"{timm}conv{conv + 1}."] = f"{ours}layer.{conv}.convolution."
                names[f"{timm}bn{conv + 1}."] = f"{ours}layer.{conv}.normalization."
            names[f"{timm}downsample.0."] = f"{ours}shortcut.convolution."
            names[f"{timm}downsample.1."] = f"{ours}shortcut.normalization."
    return names


def key_mapping(config: ResNetConfig) -> dict[str, str]:
    """``from_pretrained(key_mapping=...)`` for a checkpoint with timm's backbone: one regex per
    timm module, matching only under the backbone (:data:`BACKBONE_PREFIX`)."""
    return {f"{BACKBONE_PREFIX}{re.escape(timm)}": f"backbone.model.{ours}"
            for timm, ours in timm_to_transformers(config).items()}


def describe(backbone_config: PreTrainedConfig) -> str:
    """``timm resnet50 (out_indices [2, 3, 4])`` for a header line."""
    return f"timm {timm_name(backbone_config)} (out_indices {list(backbone_config.out_indices or [-1])})"


def converted_config(config: PreTrainedConfig, source: str) -> tuple[PreTrainedConfig, dict[str, Any] | None]:
    """``config`` (a DETR-family config) with transformers' ResNet instead of a timm ResNet, and the
    key mapping that loads a checkpoint's timm weights into it. Unchanged (and no mapping) when the
    backbone is not timm's, or is one transformers' ResNet cannot reproduce while timm is installed
    (transformers then builds it with timm, as published); without timm that is an error."""
    if not is_timm_backbone(config):
        return config, None
    try:
        resnet = resnet_config(config.backbone_config, source)
    except UnsupportedTimmBackbone:
        if timm_installed():
            return config, None
        raise
    config.backbone_config = resnet
    return config, key_mapping(resnet)
