"""The registry's builder of hftrain's RetinaNet (:mod:`hftrain.models.retinanet`) from the recipe's
model section: its settings split between RetinaNet and ResNet, and a local checkpoint loaded whole
(a saved ``hftrain_retinanet``) or as the backbone (a transformers ResNet)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from transformers import ResNetBackbone, ResNetConfig

from hftrain.models.detector import Detector
from hftrain.models.norms import convert_backbone_norms
from hftrain.models.retinanet import (
    BACKBONE_STAGES,
    IMAGENET_MEAN,
    IMAGENET_STD,
    MODEL_TYPE,
    RetinaNetConfig,
    RetinaNetForObjectDetection,
    register_retinanet,
)


_RESNET_FIELDS = frozenset(f.name for f in dataclasses.fields(ResNetConfig))
_RETINANET_FIELDS = frozenset(f.name for f in dataclasses.fields(RetinaNetConfig))


def _split_overrides(overrides: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(RetinaNet fields, ResNet fields): ResNet keys may sit at the top level or in ``backbone_config``."""
    retinanet = dict(overrides)
    backbone = dict(retinanet.pop("backbone_config", None) or {})
    for key in list(retinanet):
        if key not in _RETINANET_FIELDS and key in _RESNET_FIELDS:
            backbone[key] = retinanet.pop(key)
    unknown = set(retinanet) - _RETINANET_FIELDS
    if unknown:
        raise ValueError(f"model.config: unknown RetinaNet/ResNet settings {sorted(unknown)}")
    return retinanet, backbone


def _load_pretrained_backbone(model: RetinaNetForObjectDetection, directory: str) -> None:
    """Copy a local transformers ResNet checkpoint into ``model.backbone`` (norms converted alike)."""
    pretrained = ResNetBackbone.from_pretrained(directory, out_features=list(BACKBONE_STAGES))
    if "backbone" in model.config.norm_scope:
        convert_backbone_norms(pretrained, model.config.norm, model.config.cbn_options)
    model.backbone.load_state_dict(pretrained.state_dict())


def build_retinanet(cfg, class_names: list[str], fp32_criterion: bool = True) -> Detector:
    """Build RetinaNet from the recipe's model section.

    ``cfg.config`` holds ``RetinaNetConfig`` fields, plus ResNet fields (top level or under
    ``backbone_config``). ``cfg.pretrained`` is a local directory with either a transformers
    ResNet checkpoint (backbone weights; its architecture wins over ``cfg.config``) or a saved
    ``hftrain_retinanet`` (whole model; the class head is re-initialised if the labels differ).
    ``fp32_criterion`` is accepted for the registry's signature: the loss always runs in fp32.
    """
    del fp32_criterion
    register_retinanet()
    settings, backbone = _split_overrides(cfg.config or {})
    labels = {"id2label": dict(enumerate(class_names)), "label2id": {n: i for i, n in enumerate(class_names)}}
    settings.update(norm=cfg.norm, norm_scope=list(cfg.norm_scope))
    pretrained_type = None
    if cfg.pretrained:
        config_file = Path(cfg.pretrained) / "config.json"
        if not config_file.is_file():
            raise FileNotFoundError(f"model.pretrained: no config.json in {cfg.pretrained!r} (a local directory)")
        pretrained_type = json.loads(config_file.read_text()).get("model_type")
    if pretrained_type == MODEL_TYPE:
        model = RetinaNetForObjectDetection.from_pretrained(
            cfg.pretrained, ignore_mismatched_sizes=True, **labels, **settings
        )
    else:
        if pretrained_type is not None:
            backbone = ResNetConfig.from_pretrained(cfg.pretrained).to_dict()
        model = RetinaNetForObjectDetection(RetinaNetConfig(backbone_config=backbone or None, **settings, **labels))
        if pretrained_type is not None:
            _load_pretrained_backbone(model, cfg.pretrained)
    return Detector(
        model=model,
        postprocess=model.postprocess,
        image_processor=None,
        image_mean=IMAGENET_MEAN,
        image_std=IMAGENET_STD,
        uses_pixel_mask=False,
        find_unused_parameters=False,
        backbone_prefixes=("backbone.",),
    )
