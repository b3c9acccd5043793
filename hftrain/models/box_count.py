"""The box count that normalises a DETR-family loss, taken over all processes.

The DETR-family criteria divide their box terms (L1, GIoU, focal/varifocal classification,
D-FINE's FGL) by a number of ground-truth boxes. The official codes (facebookresearch/detr,
Deformable-DETR, RT-DETR, D-FINE) use the same number on every process: the sum of the boxes of
all processes divided by the number of processes. Averaging the processes' gradients (DDP) then
gives exactly the gradient of one process that sees all the images.

transformers 5.23 does otherwise (read in ``transformers/loss/``):

- ``ImageLoss.forward`` (DETR; Conditional and Deformable DETR through ``DeformableDetrImageLoss``):
  ``reduce(num_boxes)`` with Accelerate's default *mean*, then ``/ world_size`` again. The count
  is sum / N**2 and every box-normalised term comes out N times too large.
- ``RTDetrLoss.forward`` (RT-DETR, RT-DETRv2; D-FINE through ``DFineLoss``): each process's own
  count, no reduction. A process with few boxes weighs its images more than one with many.

:func:`normalise_by_global_box_count` corrects it in our code path without touching transformers:
it wraps ``model.loss_function``; while that runs, the criterion transformers builds gets, on the
instance only, a ``get_loss`` that replaces the count it is given by ``sum / N`` (clamped to >= 1
as upstream). The first count a criterion passes is its base count (main terms come first);
later counts keep their ratio to it (RT-DETR's denoising terms use base x denoising groups).
"""

from __future__ import annotations

import functools

import torch
from torch import distributed as dist
from torch import nn
from torch.nn.modules.module import register_module_forward_pre_hook
from transformers.loss.loss_for_object_detection import ImageLoss
from transformers.loss.loss_rt_detr import RTDetrLoss

CRITERIA = (ImageLoss, RTDetrLoss)
"""transformers' DETR-family criteria: the classes whose ``forward`` computes the box count."""


def global_box_count(targets: list[dict], device: torch.device) -> float:
    """Boxes of all processes divided by the number of processes, at least 1 (the official DETR's
    ``all_reduce`` then ``/ world_size``). Every process must call it (a collective)."""
    count = torch.tensor([float(sum(len(t["class_labels"]) for t in targets))], device=device)
    processes = 1
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(count, op=dist.ReduceOp.SUM)
        processes = dist.get_world_size()
    return max(count.item() / processes, 1.0)


def _use_global_count(criterion: nn.Module, inputs: tuple) -> None:
    """Forward pre-hook: give this criterion instance a ``get_loss`` with the global box count."""
    if not isinstance(criterion, CRITERIA) or "get_loss" in vars(criterion):
        return
    if len(inputs) != 2:
        raise RuntimeError(f"{type(criterion).__name__} was not called as criterion(outputs, targets): "
                           "hftrain/models/box_count.py cannot see the targets to count their boxes")
    outputs, targets = inputs
    device = next(v for v in outputs.values() if torch.is_tensor(v)).device
    count = global_box_count(targets, device)
    original = criterion.get_loss
    base = []  # the count transformers passed for the main terms

    def get_loss(loss, outputs, targets, indices, num_boxes, **kwargs):
        if not base:
            base.append(num_boxes)
        return original(loss, outputs, targets, indices, count * (num_boxes / base[0]), **kwargs)

    criterion.get_loss = get_loss


def normalise_by_global_box_count(model: nn.Module) -> None:
    """Wrap ``model.loss_function`` so that its criterion normalises by :func:`global_box_count`."""
    original = model.loss_function
    if getattr(original, "_hftrain_global_box_count", False):
        return

    @functools.wraps(original)
    def loss_function(*args, **kwargs):
        handle = register_module_forward_pre_hook(_use_global_count)  # only while this loss runs
        try:
            return original(*args, **kwargs)
        finally:
            handle.remove()

    loss_function._hftrain_global_box_count = True
    model.loss_function = loss_function
