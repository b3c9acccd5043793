"""An exponential moving average (EMA) of the model's weights, as RT-DETR's official training keeps one
(``rtdetrv2_pytorch/src/optim/ema.py``, itself from timm's ModelEMA).

After each optimizer step that changed the weights, every floating-point entry of the model's
``state_dict`` (parameters and buffers: BatchNorm running means and variances are averaged too) becomes

    ema = d * ema + (1 - d) * weight,    d = decay * (1 - exp(-updates / warmups))

where ``updates`` counts the updates so far, this one included: the first updates follow the weights
closely, and ``d`` approaches ``decay`` after a few ``warmups``. Entries that are not floating point
(BatchNorm's ``num_batches_tracked``) keep the value they had when the copy was made, as in the official
code. Weights tied under two names are averaged once (the official code would average them twice).

The copy lives on the training device in fp32 without autograd. Under several processes every process
keeps the same EMA: DDP leaves the same parameters everywhere, but each process's BatchNorm statistics
come from its own batch (DDP copies process 0's into the others at the start of each forward), so after
each update the averaged buffers of process 0 are broadcast to the others. The main process saves it.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from types import MethodType

import torch
from accelerate.utils import convert_outputs_to_fp32, extract_model_from_parallel, get_mixed_precision_context_manager

STATE_KEYS = ("module", "updates")


class ModelEma:
    """The averaged copy (``self.module``) of ``model`` and its update count. ``model`` may be the prepared
    (wrapped) model or the model itself; the average follows the model itself, whatever wraps it later."""

    def __init__(self, model: torch.nn.Module, decay: float, warmups: int, accelerator=None):
        self.decay = decay
        self.warmups = warmups
        self.updates = 0
        self.source = extract_model_from_parallel(model)
        self.distributed = accelerator is not None and accelerator.num_processes > 1
        self.module = copy.deepcopy(self.source).eval()
        for name in ("forward", "_original_forward"):  # a prepared model's autocast wrapper stays with it
            self.module.__dict__.pop(name, None)
        self.module.to(accelerator.device if accelerator is not None else None, torch.float32)  # floating point only
        self.module.requires_grad_(False)
        if accelerator is not None and accelerator.native_amp:  # evaluated like the prepared model: autocast, fp32 outputs
            autocast = get_mixed_precision_context_manager(accelerator.native_amp, accelerator.autocast_handler)
            forward = autocast(type(self.module).forward)
            self.module.forward = MethodType(convert_outputs_to_fp32(forward), self.module)

    def decay_at(self, updates: int) -> float:
        """The decay of update number ``updates`` (1 for the first): ``decay * (1 - exp(-updates / warmups))``."""
        return self.decay * (1.0 - math.exp(-updates / self.warmups))

    @torch.no_grad()
    def update(self) -> None:
        """Average in the model's current weights: call after each optimizer step that changed them."""
        self.updates += 1
        d = self.decay_at(self.updates)
        pairs = self._entries()
        averaged, current = [a for a, _ in pairs], [c for _, c in pairs]
        current = [t.to(torch.float32) if t.dtype != torch.float32 else t for t in current]
        torch._foreach_mul_(averaged, d)
        torch._foreach_add_(averaged, current, alpha=1.0 - d)
        if self.distributed:
            self._share_buffers()

    def _share_buffers(self) -> None:
        """Process 0's averaged floating-point buffers to every process, in one broadcast."""
        buffers = [b for b in self.module.buffers() if b.dtype.is_floating_point]
        if buffers:
            flat = torch._utils._flatten_dense_tensors(buffers)
            torch.distributed.broadcast(flat, src=0)
            torch._foreach_copy_(buffers, list(torch._utils._unflatten_dense_tensors(flat, buffers)))

    @torch.no_grad()
    def restart(self) -> None:
        """Start the average again from the model's current weights (a resume from a checkpoint without one)."""
        self.module.load_state_dict(self.source.state_dict())
        self.updates = 0

    def _entries(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(our tensor, the model's tensor) for each floating-point state entry, each storage once."""
        ours = self.module.state_dict(keep_vars=True)
        theirs = self.source.state_dict(keep_vars=True)
        if ours.keys() != theirs.keys():
            missing, extra = sorted(ours.keys() - theirs.keys()), sorted(theirs.keys() - ours.keys())
            raise ValueError(f"ema: the model's state entries changed since the EMA copy was made "
                             f"(missing {missing[:3]}, new {extra[:3]})")
        seen, pairs = set(), []
        for name, tensor in ours.items():
            if tensor.dtype.is_floating_point and id(tensor) not in seen:
                seen.add(id(tensor))
                pairs.append((tensor, theirs[name]))
        return pairs

    def as_detector(self, detector):
        """``detector`` with the averaged model in place of its own: what ``best/`` and ``model/`` save."""
        return dataclasses.replace(detector, model=self.module)

    def state_dict(self) -> dict:
        return {"module": self.module.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        if set(state) != set(STATE_KEYS):
            raise ValueError(f"ema: expected the keys {list(STATE_KEYS)}, got {sorted(state)}")
        self.module.load_state_dict(state["module"])
        self.updates = int(state["updates"])

    def describe(self) -> str:
        return f"on: decay {self.decay:g}, warm-up {self.warmups} updates (d = decay * (1 - exp(-updates / warmups)))"
