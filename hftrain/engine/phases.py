"""Training phases: consecutive spans of epochs with their own batch size, learning rate and frozen modules.

A recipe without ``phases`` trains in one phase that spans ``train.epochs`` with the ``train`` and
``optim`` values. With phases (FRED's seed: 30 epochs with the backbone frozen at batch 32, then 120
epochs unfrozen at batch 16), the loop enters each phase at its first epoch (or on a resume inside
it): the frozen parameters get ``requires_grad=False`` (no gradient, so no update and no optimizer
state; the optimizer keeps its state for parameters that stay trainable), BatchNorm layers whose
parameters are all frozen stay in eval mode (running statistics untouched), the training dataloader
is rebuilt for the phase's batch size, and the learning rate curve is rescaled to the phase's peak
(times the non-finite guard's rollback factor, when rollbacks lowered it).
"""

from __future__ import annotations

import fnmatch
import math
from dataclasses import dataclass

from accelerate.utils import DistributedType
from torch import nn

from hftrain.engine.accelerate_private import forget_model
from hftrain.engine.optim import set_peak_lr


@dataclass
class Phase:
    index: int  # 0-based
    name: str
    first_epoch: int  # 1-based, inclusive
    last_epoch: int
    batch_size: int
    accumulation: int
    lr: float
    freeze: list[str]

    def describe(self) -> str:
        frozen = ", ".join(self.freeze) if self.freeze else "nothing"
        return (f"phase {self.index + 1} '{self.name}': epochs {self.first_epoch}-{self.last_epoch}, batch "
                f"{self.batch_size} x accumulation {self.accumulation}, lr {self.lr:g}, frozen: {frozen}")


def plan(recipe) -> list[Phase]:
    """The recipe's phases with absolute epoch spans (one phase when the recipe lists none)."""
    train = recipe.train
    if not recipe.phases:
        return [Phase(0, "train", 1, train.epochs, train.batch_size, train.gradient_accumulation_steps,
                      recipe.optim.lr, [])]
    phases, first = [], 1
    for i, cfg in enumerate(recipe.phases):
        phases.append(Phase(
            index=i, name=cfg.name or f"phase{i + 1}", first_epoch=first, last_epoch=first + cfg.epochs - 1,
            batch_size=cfg.batch_size or train.batch_size,
            accumulation=cfg.gradient_accumulation_steps or train.gradient_accumulation_steps,
            lr=cfg.lr if cfg.lr is not None else recipe.optim.lr, freeze=list(cfg.freeze),
        ))
        first += cfg.epochs
    return phases


def phase_steps(phase: Phase, prepared_batches: int, prepared_size: int, processes: int, count_batches) -> int:
    """Optimizer steps in one epoch of ``phase`` on this process (for the learning-rate schedule);
    ``count_batches(batch_size)`` is the length of an unprepared training loader of that batch size."""
    batches = prepared_batches
    if phase.batch_size != prepared_size:  # each process gets its share of the phase's batches
        batches = math.ceil(count_batches(phase.batch_size) / processes)
    return math.ceil(batches / phase.accumulation)


def phase_at(phases: list[Phase], epoch: int) -> Phase:
    for phase in phases:
        if phase.first_epoch <= epoch <= phase.last_epoch:
            return phase
    return phases[-1]


def matches(name: str, patterns: list[str]) -> bool:
    """``name`` (a parameter or module name) is ``pattern``, lies under it (``pattern.``) or matches it as a glob."""
    return any(name == p or name.startswith(p + ".") or fnmatch.fnmatchcase(name, p) for p in patterns)


def check_freeze_patterns(model: nn.Module, phases: list[Phase]) -> list[str]:
    """Problems with the phases' freeze specs: a pattern matching no parameter, or freezing everything."""
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    problems = []
    for phase in phases:
        for pattern in phase.freeze:
            if not any(matches(n, [pattern]) for n in names):
                near = sorted({n.rsplit(".", 2)[0] for n in names})[:8]
                problems.append(f"phases[{phase.index}].freeze: {pattern!r} matches no trainable parameter "
                                f"(names look like {near})")
        if phase.freeze and all(matches(n, phase.freeze) for n in names):
            problems.append(f"phases[{phase.index}].freeze: {phase.freeze} freezes every parameter; nothing would train")
    return problems


def apply_freeze(model: nn.Module, patterns: list[str], trainable: set[str]) -> tuple[int, int]:
    """``requires_grad`` for every parameter of ``trainable`` (the names trainable by design) is set
    to "not matched by ``patterns``"; parameters frozen by design stay frozen. Returns the counts of
    frozen and trainable parameter elements."""
    frozen_n = trainable_n = 0
    for name, param in model.named_parameters():
        train_it = name in trainable and not matches(name, patterns)
        param.requires_grad_(train_it)
        if not train_it:
            param.grad = None
        frozen_n += 0 if train_it else param.numel()
        trainable_n += param.numel() if train_it else 0
    return frozen_n, trainable_n


def frozen_norms_to_eval(model: nn.Module) -> int:
    """Put every BatchNorm layer whose affine parameters are all frozen in eval mode (call after
    ``model.train()``): a frozen layer keeps its running statistics. Returns how many."""
    count = 0
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.training:
            params = list(module.parameters(recurse=False))
            if params and not any(p.requires_grad for p in params):
                module.eval()
                count += 1
    return count


def peak_scale(run) -> float:
    """The schedule's peak relative to ``optim.lr``: the phase's lr, times the non-finite guard's
    rollback factor (``run.state.lr_scale``: it outlives phase changes and resumes)."""
    return run.phase.lr / run.recipe.optim.lr * run.state.lr_scale


def enter_phase(run, phase: Phase) -> None:
    """Apply ``phase`` to ``run`` (a :class:`hftrain.engine.state.Run`): its frozen parameters,
    micro-batch and accumulation, peak lr. Under DDP, a model whose trainable set changed is wrapped
    again (DDP all-reduces only the parameters that were trainable when it wrapped the model): then
    ``run.model`` and ``run.wrapped_trainable`` change. The optimizer keeps its state; frozen
    parameters get no gradient, so no update."""
    accelerator, log = run.accelerator, run.log
    run.phase = phase
    unwrapped = accelerator.unwrap_model(run.model)
    frozen_n, trainable_n = apply_freeze(unwrapped, phase.freeze, run.trainable_by_design)
    now_trainable = {name for name, p in unwrapped.named_parameters() if p.requires_grad}
    if accelerator.distributed_type != DistributedType.NO and now_trainable != run.wrapped_trainable:
        unwrapped = accelerator.unwrap_model(run.model, keep_fp32_wrapper=False)
        forget_model(accelerator, unwrapped)  # prepare_model adds it again; save_state must see it once
        run.model = accelerator.prepare_model(unwrapped)
        run.wrapped_trainable = now_trainable
    run.optimizer.zero_grad(set_to_none=True)
    run.health.batching.resize(phase.batch_size, phase.accumulation)
    set_peak_lr(run.scheduler, peak_scale(run))
    if run.recipe.phases:
        log.print(f"entering {phase.describe()}; {frozen_n / 1e6:.2f}M parameters frozen, "
                  f"{trainable_n / 1e6:.2f}M trainable")
        log.record("phase", {"epoch": run.state.epoch, "phase": phase.index, "name": phase.name,
                             "batch_size": phase.batch_size, "gradient_accumulation_steps": phase.accumulation,
                             "lr": phase.lr, "freeze": phase.freeze, "frozen_parameters": frozen_n,
                             "trainable_parameters": trainable_n}, run.state.step)
