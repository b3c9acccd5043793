"""The box count that normalises a DETR-family loss, taken over all processes.

The DETR-family criteria divide their box terms (L1, GIoU, focal/varifocal classification,
D-FINE's FGL) by a number of ground-truth boxes. The official codes (facebookresearch/detr,
Deformable-DETR, RT-DETR, D-FINE) use the same number on every process: the sum of the boxes of
all processes divided by the number of processes. Averaging the processes' gradients (DDP) then
gives exactly the gradient of one process that sees all the images.

transformers 5.23 and 5.24 do otherwise (read in ``transformers/loss/``):

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

The correction checks first that it is still needed (:func:`criteria_to_correct`, once per
process): each criterion is run on 2 boxes while a simulated second process holds 6, and the
count it hands its loss terms is compared with (2 + 6) / 2. A criterion that already gives 4 (a
newer transformers) is left alone and a note says so, so that the count is never corrected twice.
"""

from __future__ import annotations

import contextlib
import functools
from unittest import mock

import torch
from torch import distributed as dist
from torch import nn
from torch.nn.modules.module import register_module_forward_pre_hook
from transformers.loss.loss_for_object_detection import ImageLoss
from transformers.loss.loss_rt_detr import RTDetrLoss

CRITERIA = (ImageLoss, RTDetrLoss)
"""transformers' DETR-family criteria: the classes whose ``forward`` computes the box count."""

OWN_BOXES, OTHER_BOXES, PROCESSES = 2, 6, 2
"""The simulated case of :func:`transformers_box_count`: the right count is (2 + 6) / 2 = 4."""


def global_box_count(targets: list[dict], device: torch.device) -> float | torch.Tensor:
    """Boxes of all processes divided by the number of processes, at least 1 (the official DETR's
    ``all_reduce`` then ``/ world_size``). Every process must call it (a collective). Under several
    processes it is a device tensor (0-d): reading it would make the host wait for the forward and
    the all-reduce; the losses divide by it on the device. Alone, a number (no device work at all)."""
    boxes = float(sum(len(t["class_labels"]) for t in targets))  # lengths: known on the host
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return max(boxes, 1.0)
    count = torch.full((), boxes, device=device)
    dist.all_reduce(count, op=dist.ReduceOp.SUM)
    return (count / dist.get_world_size()).clamp(min=1.0)


class _SimulatedState:
    """Accelerate's ``PartialState`` as transformers' loss reads it, for 2 processes."""

    _shared_state = {"simulated": True}
    num_processes = PROCESSES
    process_index = 0


def _simulated_reduce(tensor, reduction: str = "mean", scale: float = 1.0):
    total = tensor + OTHER_BOXES
    return (total / PROCESSES if reduction == "mean" else total) * scale


def _simulated_all_reduce(tensor, op=dist.ReduceOp.SUM, *args, **kwargs):
    tensor.add_(OTHER_BOXES)
    if op == dist.ReduceOp.AVG:
        tensor.div_(PROCESSES)


@contextlib.contextmanager
def _two_processes(criterion_class: type):
    """Two processes as transformers' criteria could ask for them: through Accelerate (the names
    the criterion's module imported) or torch.distributed; the other process holds 6 boxes."""
    import sys

    module = sys.modules[criterion_class.forward.__module__]
    with contextlib.ExitStack() as stack:
        if hasattr(module, "PartialState"):
            stack.enter_context(mock.patch.object(module, "PartialState", _SimulatedState))
        if hasattr(module, "reduce"):
            stack.enter_context(mock.patch.object(module, "reduce", _simulated_reduce))
        for name, value in (("is_available", lambda: True), ("is_initialized", lambda: True),
                            ("get_world_size", lambda *a, **k: PROCESSES), ("all_reduce", _simulated_all_reduce)):
            stack.enter_context(mock.patch.object(dist, name, value))
        yield


def _probe_criterion(criterion_class: type) -> nn.Module:
    """An instance of ``criterion_class`` (one class) with a matcher that matches nothing."""
    if issubclass(criterion_class, RTDetrLoss):  # its __init__ wants a whole RTDetrConfig: set what forward reads
        criterion = criterion_class.__new__(criterion_class)
        nn.Module.__init__(criterion)
        criterion.matcher, criterion.losses, criterion.weight_dict = None, ["boxes"], {}
    else:
        criterion = criterion_class(None, num_classes=1, eos_coef=0.1, losses=["boxes"])
    del criterion.matcher
    criterion.matcher = lambda outputs, targets: [(torch.zeros(0, dtype=torch.long),) * 2 for _ in targets]
    return criterion


def transformers_box_count(criterion_class: type) -> float:
    """The box count ``criterion_class`` hands its loss terms when this process holds 2 boxes and a
    (simulated) second process 6. Right: 4. transformers 5.24: 2 (``ImageLoss``: 8 / 2 / 2;
    ``RTDetrLoss``: this process's own 2)."""
    criterion = _probe_criterion(criterion_class)
    seen = []

    def get_loss(loss, outputs, targets, indices, num_boxes, **kwargs):
        seen.append(float(num_boxes))
        return {}

    criterion.get_loss = get_loss
    outputs = {"logits": torch.zeros(1, 3, 2), "pred_boxes": torch.full((1, 3, 4), 0.5)}
    targets = [{"class_labels": torch.zeros(OWN_BOXES, dtype=torch.long), "boxes": torch.full((OWN_BOXES, 4), 0.5)}]
    with _two_processes(criterion_class), torch.no_grad():
        criterion(outputs, targets)
    return seen[0]


@functools.cache
def criteria_to_correct() -> tuple[tuple[type, ...], tuple[str, ...]]:
    """The criteria whose box count still needs correcting in the installed transformers, and a
    note for each that does not (or could not be checked). Checked once per process."""
    import transformers

    wrong, notes = [], []
    right = (OWN_BOXES + OTHER_BOXES) / PROCESSES
    for criterion_class in CRITERIA:
        try:
            count = transformers_box_count(criterion_class)
        except Exception as err:  # noqa: BLE001 - an unforeseen transformers: keep correcting, and say so
            wrong.append(criterion_class)
            notes.append(f"box count: could not check transformers {transformers.__version__}'s "
                         f"{criterion_class.__name__} ({err.__class__.__name__}: {err}); hftrain corrects its count")
            continue
        if abs(count - right) < 1e-6:
            notes.append(f"box count: transformers {transformers.__version__}'s {criterion_class.__name__} already "
                         f"normalises by the box count of all processes; hftrain's correction is off for it")
        else:
            wrong.append(criterion_class)
    return tuple(wrong), tuple(notes)


def _use_global_count(criterion: nn.Module, inputs: tuple) -> None:
    """Forward pre-hook: give this criterion instance a ``get_loss`` with the global box count."""
    if not isinstance(criterion, criteria_to_correct()[0]) or "get_loss" in vars(criterion):
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


def normalise_by_global_box_count(model: nn.Module) -> list[str]:
    """Wrap ``model.loss_function`` so that its criterion normalises by :func:`global_box_count`,
    where the installed transformers still needs it; returns the notes of :func:`criteria_to_correct`."""
    wrong, notes = criteria_to_correct()
    original = model.loss_function
    if not wrong or getattr(original, "_hftrain_global_box_count", False):
        return list(notes)

    @functools.wraps(original)
    def loss_function(*args, **kwargs):
        handle = register_module_forward_pre_hook(_use_global_count)  # only while this loss runs
        try:
            return original(*args, **kwargs)
        finally:
            handle.remove()

    loss_function._hftrain_global_box_count = True
    model.loss_function = loss_function
    return list(notes)
