"""A tiny Deformable DETR checkpoint in the layout of ``SenseTime/deformable-detr`` on the hub.

The hub's config has no ``backbone_config`` but ``use_timm_backbone: true`` and ``backbone:
resnet50`` (transformers 4.x wrote it so); its weights name the backbone as timm's ResNet does,
under the conv encoder (``model.backbone.conv_encoder.model.conv1.weight``, ``...layer1.0.conv1``,
``...layer1.0.downsample.0/1``, and the ``num_batches_tracked`` counters of the projections'
BatchNorms, which ``facebook/detr-resnet-50`` holds). The transformer is tiny; the backbone is a
real ResNet-50 (its widths follow from the name ``resnet50``).

The renaming below is spelt independently of ``hftrain/models/timm_resnet.py`` (regular
expressions over transformers' names, not that module's table).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from transformers import DeformableDetrConfig, DeformableDetrForObjectDetection, ResNetConfig

BACKBONE = "model.backbone.conv_encoder.model."

TINY_TRANSFORMER = {
    "d_model": 32, "encoder_layers": 1, "decoder_layers": 2, "encoder_ffn_dim": 64, "decoder_ffn_dim": 64,
    "encoder_attention_heads": 2, "decoder_attention_heads": 2, "num_queries": 20, "encoder_n_points": 2,
    "decoder_n_points": 2, "num_feature_levels": 4,
}

REAL_KEYS = (  # key names of the published checkpoints
    "model.backbone.conv_encoder.model.conv1.weight",
    "model.backbone.conv_encoder.model.bn1.running_var",
    "model.backbone.conv_encoder.model.layer1.0.conv1.weight",
    "model.backbone.conv_encoder.model.layer1.0.downsample.0.weight",
    "model.backbone.conv_encoder.model.layer1.0.downsample.1.num_batches_tracked",
    "model.backbone.conv_encoder.model.layer3.5.bn3.weight",
    "model.backbone.conv_encoder.model.layer4.2.conv3.weight",
)


def timm_key(name: str) -> str:
    """transformers' ResNet parameter name -> timm's."""
    stem = re.fullmatch(r"embedder\.embedder\.(convolution|normalization)\.(\w+)", name)
    if stem:
        return f"{'conv1' if stem[1] == 'convolution' else 'bn1'}.{stem[2]}"
    stage, block, rest = re.fullmatch(r"encoder\.stages\.(\d)\.layers\.(\d+)\.(.+)", name).groups()
    conv = re.fullmatch(r"layer\.(\d)\.(convolution|normalization)\.(\w+)", rest)
    if conv:
        rest = f"{'conv' if conv[2] == 'convolution' else 'bn'}{int(conv[1]) + 1}.{conv[3]}"
    else:
        part, leaf = re.fullmatch(r"shortcut\.(convolution|normalization)\.(\w+)", rest).groups()
        rest = f"downsample.{0 if part == 'convolution' else 1}.{leaf}"
    return f"layer{int(stage) + 1}.{block}.{rest}"


def write_sensetime_checkpoint(directory: Path, num_labels: int = 5, seed: int = 0) -> DeformableDetrForObjectDetection:
    """Write ``config.json`` and ``model.safetensors`` as the hub has them; returns the model the
    weights came from (transformers' ResNet-50 backbone, in eval mode)."""
    torch.manual_seed(seed)
    resnet = ResNetConfig(out_features=["stage2", "stage3", "stage4"])  # resnet50, timm's out_indices [2, 3, 4]
    model = DeformableDetrForObjectDetection(DeformableDetrConfig(backbone_config=resnet, num_labels=num_labels,
                                                                  **TINY_TRANSFORMER)).eval()
    with torch.no_grad():  # trained BatchNorm statistics, not the identity
        for name, buffer in model.named_buffers():
            if name.endswith("running_mean"):
                buffer.uniform_(-0.1, 0.1)
            elif name.endswith("running_var") or name.endswith("normalization.weight"):
                buffer.uniform_(0.5, 1.5)
            elif name.endswith("normalization.bias"):
                buffer.uniform_(-0.1, 0.1)
    model.save_pretrained(directory)
    weights = load_file(directory / "model.safetensors")
    renamed = {}
    for key, tensor in weights.items():
        if key.startswith(BACKBONE):
            key = BACKBONE + timm_key(key[len(BACKBONE):])
        renamed[key] = tensor
    for layer in range(1, 5):
        renamed[f"{BACKBONE}layer{layer}.0.downsample.1.num_batches_tracked"] = torch.tensor(0)
    save_file(renamed, directory / "model.safetensors", metadata={"format": "pt"})
    config = json.loads((directory / "config.json").read_text())
    del config["backbone_config"]
    config.update(use_timm_backbone=True, backbone="resnet50", use_pretrained_backbone=True, backbone_kwargs=None,
                  dilation=False, transformers_version="4.32.0.dev0")
    (directory / "config.json").write_text(json.dumps(config, indent=2))
    return model
