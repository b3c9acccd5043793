"""Tiny ``model.config`` of every registry family: random weights that build, train and evaluate
on a CPU in seconds (about 0.3M parameters each). ``--dry-run`` swaps a recipe's model for the
tiny one of its family; the tests train them.

Constraints found on the way (transformers 5.23):
- Deformable DETR needs ``decoder_layers >= 2``; with ``two_stage`` it keeps
  ``two_stage_num_proposals`` encoder tokens, which a 64-pixel image with two feature levels
  (strides 16 and 32) has only 20 of.
- RT-DETR's ResNet with ``layer_type: basic`` breaks unless ``embedding_size == hidden_sizes[0]``;
  the bottleneck layout works. ``encoder_in_channels`` must be the backbone's output channels.
- DETR, Conditional and Deformable DETR get a small transformers ResNet through ``backbone_config``
  (without one, transformers' default is timm's ResNet-50, which hftrain builds as transformers'
  ResNet-50: hftrain/models/timm_resnet.py).
"""

from __future__ import annotations

import copy
from typing import Any

_RESNET = {  # transformers ResNet for the DETR / Conditional / Deformable DETR backbones
    "embedding_size": 16,
    "hidden_sizes": [16, 32, 64, 128],
    "depths": [1, 1, 1, 1],
    "layer_type": "basic",
}

_DETR_SIZES = {
    "d_model": 32,
    "encoder_layers": 1,
    "decoder_layers": 2,
    "encoder_ffn_dim": 64,
    "decoder_ffn_dim": 64,
    "encoder_attention_heads": 2,
    "decoder_attention_heads": 2,
    "num_queries": 20,
}

_RT_DETR_SIZES = {
    "d_model": 32,
    "encoder_hidden_dim": 32,
    "encoder_in_channels": [64, 128, 256],
    "decoder_in_channels": [32, 32, 32],
    "encoder_ffn_dim": 64,
    "decoder_ffn_dim": 64,
    "decoder_layers": 2,
    "num_queries": 20,
    "num_denoising": 10,
    "encoder_attention_heads": 2,
    "decoder_attention_heads": 2,
}

_RT_DETR_RESNET = {
    "layer_type": "bottleneck",
    "embedding_size": 16,
    "hidden_sizes": [32, 64, 128, 256],
    "depths": [1, 1, 1, 1],
    "out_features": ["stage2", "stage3", "stage4"],
}

TINY_CONFIGS: dict[str, dict[str, Any]] = {
    "detr": {**_DETR_SIZES, "backbone_config": {**_RESNET, "out_features": ["stage4"]}},
    "conditional_detr": {**_DETR_SIZES, "backbone_config": {**_RESNET, "out_features": ["stage4"]}},
    "deformable_detr": {
        **_DETR_SIZES,
        "num_feature_levels": 2,
        "encoder_n_points": 2,
        "decoder_n_points": 2,
        "two_stage_num_proposals": 16,
        "use_pretrained_backbone": False,
        "backbone_config": {**_RESNET, "out_features": ["stage3", "stage4"]},
    },
    "rt_detr": {**_RT_DETR_SIZES, "backbone_config": _RT_DETR_RESNET},
    "rt_detr_v2": {**_RT_DETR_SIZES, "backbone_config": _RT_DETR_RESNET},
    "d_fine": {
        **_RT_DETR_SIZES,
        "lqe_hidden_dim": 8,
        "backbone_config": {  # HGNetV2 with one one-layer block per stage; out channels 64/128/256
            "stem_channels": [3, 8, 16],
            "stage_in_channels": [16, 32, 64, 128],
            "stage_mid_channels": [8, 16, 32, 64],
            "stage_out_channels": [32, 64, 128, 256],
            "stage_num_blocks": [1, 1, 1, 1],
            "stage_numb_of_layers": [1, 1, 1, 1],
            "hidden_sizes": [32, 64, 128, 256],
            "depths": [1, 1, 1, 1],
            "embedding_size": 16,
            "out_features": ["stage2", "stage3", "stage4"],
        },
    },
    "retinanet": {
        "depths": [1, 1, 1, 1],
        "hidden_sizes": [16, 32, 64, 64],
        "embedding_size": 16,
        "layer_type": "basic",
        "fpn_channels": 32,
        "num_head_convs": 1,
    },
}


def tiny_config(name: str) -> dict[str, Any]:
    """A fresh (deep) copy of the tiny ``model.config`` of registry family ``name``."""
    if name not in TINY_CONFIGS:
        raise KeyError(f"model.name: no tiny config for {name!r} (known: {', '.join(sorted(TINY_CONFIGS))})")
    return copy.deepcopy(TINY_CONFIGS[name])
