"""What the transformers DETR-family builders share (hftrain/models/detr.py, rt_detr.py).

A builder takes the recipe's model section and the class names and either loads pretrained
weights (a hub id or a local directory, mismatched heads re-initialised to the recipe's labels) or
builds the family's transformers config from ``model.config``. Every model then gets the same
loss path: the box count summed over processes (:mod:`hftrain.models.box_count`) and, unless the
recipe turns it off, the criterion in fp32 (:mod:`hftrain.models.criterion`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import transformers
from torch import nn
from transformers import PreTrainedConfig, PreTrainedModel

from hftrain.models import timm_resnet
from hftrain.models.box_count import normalise_by_global_box_count
from hftrain.models.criterion import run_loss_in_fp32
from hftrain.models.pretrained import PretrainedNotFound  # noqa: F401 - raised by build_or_load, imported from here
from hftrain.models.pretrained import Loaded, from_scratch, load_pretrained

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# keyword arguments the DETR-family configs take besides their fields (consumed by __post_init__)
BACKBONE_KWARGS = frozenset({"use_timm_backbone", "backbone", "backbone_kwargs", "use_pretrained_backbone",
                             "num_labels"})


def label_fields(class_names: list[str]) -> dict[str, Any]:
    """``num_labels``, ``id2label`` and ``label2id`` for a config or ``from_pretrained``."""
    id2label = dict(enumerate(class_names))
    return {
        "num_labels": len(class_names),
        "id2label": id2label,
        "label2id": {name: i for i, name in id2label.items()},
    }


def check_config_keys(config_class: type[PreTrainedConfig], overrides: dict[str, Any]) -> None:
    """transformers keeps unknown config keys as plain attributes: a misspelt ``model.config`` key
    would change nothing. Refuse keys that are not fields of the family's config."""
    known = {f.name for f in dataclasses.fields(config_class)} | set(config_class.attribute_map) | BACKBONE_KWARGS
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(f"model.config: unknown {config_class.__name__} settings {unknown} "
                         f"(known: {', '.join(sorted(known))})")


def config_from_recipe(config_class: type[PreTrainedConfig], overrides: dict[str, Any], class_names: list[str],
                       backbone_type: str) -> PreTrainedConfig:
    """The family's config from ``model.config``; a ``backbone_config`` dict is a ``backbone_type``
    config (``resnet``, ``rt_detr_resnet``, ``hgnet_v2``) unless it names its own ``model_type``."""
    overrides = dict(overrides)
    check_config_keys(config_class, overrides)
    backbone = overrides.pop("backbone_config", None)
    if isinstance(backbone, dict):
        backbone = {"model_type": backbone_type, **backbone}
    if backbone is not None:
        overrides["backbone_config"] = backbone
    config = config_class(**overrides, **label_fields(class_names))
    return timm_resnet.converted_config(config, "model.config")[0]  # no backbone_config: transformers wants timm's resnet50


def build_or_load(cfg, class_names: list[str], config_class: type[PreTrainedConfig],
                  model_class: type[PreTrainedModel], backbone_type: str) -> tuple[PreTrainedModel, Loaded]:
    """``cfg.pretrained`` loaded with ``cfg.config`` as overrides, or a new model from ``cfg.config``;
    and how (:class:`hftrain.models.pretrained.Loaded`). Class heads that were initialised rather
    than loaded get their family's class-bias prior (:mod:`hftrain.models.head_prior`)."""
    if cfg.pretrained:
        check_config_keys(config_class, cfg.config)
        return load_pretrained(cfg.pretrained, label_fields(class_names), cfg.config)
    model = model_class(config_from_recipe(config_class, cfg.config, class_names, backbone_type))
    return model, from_scratch(model)


def reset_batchnorm_scale(model: nn.Module) -> str | None:
    """BatchNorm weights to 1 (PyTorch's default). transformers 5.24 initialises RT-DETR's from
    N(0, 0.01): harmless when pretrained weights replace them, but from scratch every BatchNorm
    starts with a near-zero gain. Where transformers already starts them at 1 (a newer version),
    nothing changes and the returned note says so."""
    norms = [module for module in model.modules() if isinstance(module, nn.BatchNorm2d)]
    if norms and all(bool((module.weight == 1).all()) for module in norms):
        return (f"BatchNorm init: transformers {transformers.__version__} already starts {type(model).__name__}'s "
                "BatchNorm weights at 1; hftrain's reset is off")
    for module in norms:
        nn.init.ones_(module.weight)
    return None


def backbone_tail_unused(config: PreTrainedConfig) -> bool:
    """Whether the backbone computes stages after the last one it outputs: their parameters then
    get no gradient (e.g. ``out_features: [stage2, stage3]`` of a four-stage ResNet)."""
    backbone = getattr(config, "backbone_config", None)
    out_features = getattr(backbone, "out_features", None)
    stage_names = getattr(backbone, "stage_names", None)
    return bool(out_features and stage_names) and out_features[-1] != stage_names[-1]


def finish(model: PreTrainedModel, fp32_criterion: bool) -> list[str]:
    """The loss path every DETR-family model shares: global box count, then (optionally) fp32.
    Returns the box count's notes (:func:`hftrain.models.box_count.criteria_to_correct`)."""
    notes = normalise_by_global_box_count(model)
    if fp32_criterion:
        run_loss_in_fp32(model)
    return notes
