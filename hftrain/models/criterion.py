"""Run a transformers model's detection loss (criterion and Hungarian matcher) in fp32.

Half-precision costs underflow in the matcher and the focal/GIoU terms; RT-DETR's official
code runs its criterion with autocast off. transformers computes the loss inside ``forward``
through ``model.loss_function``; we wrap that function so it sees fp32 tensors and runs with
autocast disabled, leaving the rest of the forward pass in mixed precision.
"""

from __future__ import annotations

import functools

import torch
from torch import nn


def to_fp32(value):
    """Cast floating tensors inside (nested) lists, tuples and dicts to float32."""
    if torch.is_tensor(value):
        return value.float() if value.is_floating_point() else value
    if isinstance(value, dict):
        return {k: to_fp32(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(to_fp32(v) for v in value)
    return value


def run_loss_in_fp32(model: nn.Module) -> None:
    """Replace ``model.loss_function`` with an fp32, autocast-free version of itself."""
    original = model.loss_function
    if getattr(original, "_hftrain_fp32", False):
        return

    @functools.wraps(original)
    def loss_fp32(*args, **kwargs):
        device_type = next((a.device.type for a in args if torch.is_tensor(a)), "cpu")
        with torch.autocast(device_type=device_type, enabled=False):
            return original(*to_fp32(args), **to_fp32(kwargs))

    loss_fp32._hftrain_fp32 = True
    model.loss_function = loss_fp32
