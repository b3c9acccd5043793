"""The class-bias prior of sigmoid (focal / varifocal) class heads that start from scratch.

A sigmoid class head whose bias starts at 0 scores every (query, class) pair 0.5: fine-tuning
starts with every query firing, and the classification loss is dominated by the negatives. The
official codes start the bias at ``-log((1 - p) / p)``:

- Deformable DETR and Conditional DETR: p = 0.01 (bias -4.595). transformers 5.24 leaves it at 0,
  both from scratch and for a head ``from_pretrained`` re-initialises (other labels).
- RT-DETR, RT-DETRv2, D-FINE: p = ``initializer_bias_prior_prob``, or 1/(K+1) without one
  (transformers' ``_init_weights``, which 5.24 also runs on re-initialised heads).
- DETR: softmax cross-entropy with a "no object" class; no prior.
- RetinaNet (hftrain/models/retinanet.py): ``prior_prob`` 0.01, set by its own ``_init_weights``.

:func:`apply_prior` sets it on the class heads that were initialised rather than loaded.
"""

from __future__ import annotations

import math
import re

from torch import nn
from torch.nn import init

FOCAL_PRIOR = 0.01
"""Deformable and Conditional DETR's prior probability (their official code)."""

CLASS_HEAD = re.compile(r"(^|\.)(class_embed|class_labels_classifier|enc_score_head)(\.\d+)?$")
"""Module names of the DETR-family class heads (not ``denoising_class_embed``, an embedding)."""


def prior_probability(config) -> float | None:
    """The prior of the model type's sigmoid class heads; None for a softmax head (DETR)."""
    model_type = config.model_type
    if model_type in ("deformable_detr", "conditional_detr"):
        return FOCAL_PRIOR
    if model_type in ("rt_detr", "rt_detr_v2", "d_fine"):
        return config.initializer_bias_prior_prob or 1 / (config.num_labels + 1)
    return None


def prior_bias(probability: float) -> float:
    """``-log((1 - p) / p)``: the logit whose sigmoid is ``p``."""
    return -math.log((1 - probability) / probability)


def class_heads(model: nn.Module) -> list[str]:
    """Names of the model's linear class heads."""
    return [name for name, module in model.named_modules()
            if isinstance(module, nn.Linear) and CLASS_HEAD.search(name)]


def apply_prior(model: nn.Module, initialised: set[str] | None = None) -> str | None:
    """Set the class-bias prior on the class heads named in ``initialised`` (module names; None:
    every class head, for a model built from scratch). Returns e.g. ``"class bias -4.595 (prior
    0.01)"`` for the header, or None when the family has no prior or no class head was initialised."""
    probability = prior_probability(model.config)
    heads = [name for name in class_heads(model) if initialised is None or name in initialised]
    if probability is None or not heads:
        return None
    bias = prior_bias(probability)
    modules = dict(model.named_modules())
    for name in heads:
        init.constant_(modules[name].bias, bias)
    return f"class bias {bias:.3f} (prior {probability:.4g})"
