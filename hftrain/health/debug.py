"""Debug mode (``debug: true`` or ``hftrain train RECIPE --debug``): the loop tells why a loss does not move.

For the first ``debug_batches`` micro-batches: each batch's class histogram (boxes per class) with
a warning when one class holds most of the batch or the batch has a single class; every process
also appends the image ids of those batches to ``debug/samples_rank<R>.jsonl`` (what each process
really saw). For the first ``debug_batches`` optimizer steps: after the backward pass, how many
trainable parameters got a gradient and which did not, and the total gradient norm; after the
optimizer step, how many parameters changed and which trainable ones did not. During the warm-up,
the learning rate of every step. For the whole run: forward hooks on every module, so that a
non-finite step names the first module whose output held NaN or Inf (see :mod:`hftrain.health.guard`).

Everything goes to the console with a ``[debug]`` prefix and to ``metrics.jsonl`` (type ``debug``).
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import torch
from torch import nn

from hftrain.data.collate import unpack_labels

DOMINANT_SHARE = 0.8
"""A batch in which one class holds at least this share of the boxes gets a warning."""
NAMES_SHOWN = 12
"""How many parameter names a report lists before summarising the rest."""


class NothingToTrain(RuntimeError):
    """Every parameter of the model is frozen."""


def count_parameters(model: nn.Module) -> tuple[int, int, int, int]:
    """(trainable tensors, trainable elements, frozen tensors, frozen elements)."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    frozen = [p for p in model.parameters() if not p.requires_grad]
    return len(trainable), sum(p.numel() for p in trainable), len(frozen), sum(p.numel() for p in frozen)


def check_trainable(model: nn.Module, where: str = "model") -> None:
    """Raise NothingToTrain naming the counts when no parameter requires a gradient."""
    tensors, _, frozen, frozen_elements = count_parameters(model)
    if tensors == 0:
        raise NothingToTrain(
            f"{where}: all {frozen} parameter tensors ({frozen_elements:,} values) are frozen (requires_grad=False): "
            f"nothing would train and the loss could never move. Unfreeze at least the head."
        )


def _names(names: list[str]) -> str:
    shown = ", ".join(names[:NAMES_SHOWN])
    return shown + (f" ... and {len(names) - NAMES_SHOWN} more" if len(names) > NAMES_SHOWN else "")


def batch_histogram(labels: list[dict], class_names: list[str]) -> Counter:
    """Boxes per class name in a batch (``labels`` in the DETR format)."""
    counts: Counter = Counter()
    for target in labels:
        for c in target["class_labels"].tolist():
            counts[class_names[c] if 0 <= c < len(class_names) else str(c)] += 1
    return counts


def batch_warnings(counts: Counter, num_classes: int) -> list[str]:
    """Warnings for a single-class batch or one dominated by a class."""
    total = sum(counts.values())
    if total == 0 or num_classes < 2:
        return []
    name, top = counts.most_common(1)[0]
    if len(counts) == 1:
        return [f"ALL {total} boxes in the batch are from class {name!r}: check the sampler "
                f"(hftrain check-sampler RECIPE) or set data.sampler: repeat_factor"]
    if top / total >= DOMINANT_SHARE:
        return [f"class {name!r} holds {top}/{total} ({100 * top / total:.0f}%) of the boxes in the batch"]
    return []


class NonFiniteHooks:
    """Forward hooks on every module that remember, per forward call, whether its output was
    finite (device-side flags; read only when a step turned out non-finite)."""

    def __init__(self, model: nn.Module):
        self.calls: list[tuple[str, torch.Tensor]] = []
        self.handles = [module.register_forward_hook(self._hook(name or "<model>"))
                        for name, module in model.named_modules()]

    def _hook(self, name: str):
        def hook(module, inputs, output):
            tensors = [t for t in _tensors(output) if t.is_floating_point()]
            if tensors:
                self.calls.append((name, torch.stack([torch.isfinite(t.detach()).all() for t in tensors]).all()))
        return hook

    def first_nonfinite(self) -> str | None:
        """The first module (in the order outputs were produced) whose output held NaN/Inf."""
        for name, finite in self.calls:
            if not bool(finite):
                return name
        return None

    def clear(self) -> None:
        self.calls.clear()

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def _tensors(value):
    if torch.is_tensor(value):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _tensors(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _tensors(v)


class DebugMonitor:
    def __init__(self, model: nn.Module, class_names: list[str], batches: int, warmup_steps: int, log,
                 run_dir: Path, process_index: int):
        self.model = model  # the unwrapped model: parameter names without DDP's "module."
        self.class_names = class_names
        self.batches = batches
        self.warmup_steps = warmup_steps
        self.log = log
        self.micro_seen = 0
        self.steps_seen = 0
        self.before: dict[str, torch.Tensor] = {}
        self.hooks = NonFiniteHooks(model)
        self.samples_path = Path(run_dir) / "debug" / f"samples_rank{process_index}.jsonl"
        self.samples_path.parent.mkdir(parents=True, exist_ok=True)
        self.samples_path.write_text("")
        tensors, elements, frozen, frozen_elements = count_parameters(model)
        log.print(f"[debug] parameters: {tensors} trainable tensors ({elements:,} values), "
                  f"{frozen} frozen ({frozen_elements:,} values)")

    def before_forward(self, batch: dict, epoch: int) -> None:
        """Class histogram and warnings for the first ``debug_batches`` micro-batches."""
        if self.micro_seen >= self.batches:
            return
        self.micro_seen += 1
        with open(self.samples_path, "a") as handle:
            handle.write(json.dumps({"epoch": epoch, "batch": self.micro_seen,
                                     "image_ids": batch["image_ids"].tolist()}) + "\n")
        counts = batch_histogram(unpack_labels(batch), self.class_names)
        mix = ", ".join(f"{name}: {n}" for name, n in sorted(counts.items())) or "no boxes"
        self.log.print(f"[debug] batch {self.micro_seen} ({batch['images']} images) boxes per class: {mix}; "
                       f"{len(counts)} of {len(self.class_names)} classes")
        warnings = batch_warnings(counts, len(self.class_names))
        for warning in warnings:
            self.log.print(f"[debug] WARNING: {warning}")
        self.log.record("debug", {"what": "batch", "batch": self.micro_seen, "classes": dict(counts),
                                  "warnings": warnings}, 0)

    def active(self) -> bool:
        return self.steps_seen < self.batches

    def after_backward(self, step: int) -> None:
        """Which trainable parameters received a gradient, and the total gradient norm (before clipping)."""
        if not self.active():
            return
        named = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]
        without = [n for n, p in named if p.grad is None]
        norms = [p.grad.detach().float().norm() for _, p in named if p.grad is not None]
        total = float(torch.linalg.vector_norm(torch.stack(norms))) if norms else 0.0
        self.log.print(f"[debug] step {step} gradient check: {len(named) - len(without)} of {len(named)} trainable "
                       f"parameters have a gradient; total grad norm {total:.6f}")
        if without:
            self.log.print(f"[debug] WARNING: {len(without)} trainable parameters got no gradient: {_names(without)}")
        if total == 0.0:
            self.log.print("[debug] WARNING: total gradient norm is 0: the loss does not reach the weights")
        self.log.record("debug", {"what": "gradients", "with_grad": len(named) - len(without),
                                  "trainable": len(named), "without_grad": without, "grad_norm": total}, step)
        self.before = {n: p.detach().clone() for n, p in named}

    def after_step(self, step: int, updated: bool) -> None:
        """How many parameters the optimizer step changed, and which trainable ones it did not
        (``updated`` is False when the guard dropped the step: nothing to compare)."""
        if not self.active() or not self.before:
            return
        if not updated:
            self.before = {}
            return
        self.steps_seen += 1
        unchanged = [n for n, p in self.model.named_parameters()
                     if n in self.before and torch.equal(self.before[n], p.detach())]
        changed = len(self.before) - len(unchanged)
        self.before = {}
        self.log.print(f"[debug] step {step} update check: {changed} of {changed + len(unchanged)} trainable "
                       f"parameters changed")
        if unchanged:
            self.log.print(f"[debug] WARNING: {len(unchanged)} trainable parameters did not change: {_names(unchanged)}")
        self.log.record("debug", {"what": "update", "changed": changed, "unchanged": unchanged}, step)

    def after_optimizer_step(self, step: int, lr: float) -> None:
        """The learning rate of each warm-up step (and the first after it)."""
        if step <= self.warmup_steps + 1:
            phase = f"warm-up {step}/{self.warmup_steps}" if step <= self.warmup_steps else "after warm-up"
            self.log.print(f"[debug] step {step} lr {lr:.3e} ({phase})")
