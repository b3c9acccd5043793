"""AdamW (or Adam, ``optim.name``) with parameter groups, and learning-rate schedules counted in optimizer steps.

Groups: backbone vs the rest (the backbone's lr is ``lr * backbone_lr_mult``), and weight decay
vs none (biases and normalisation weights, i.e. every parameter with at most one dimension,
get no decay). Schedules multiply each group's peak lr by one factor per optimizer step. The
scheduler is stepped by the loop once per real optimizer step (not prepared by Accelerate,
which would step it once per process), so the curve is the same for any number of processes.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR


def param_groups(model: nn.Module, backbone_prefixes: tuple[str, ...], lr: float, backbone_lr_mult: float,
                 weight_decay: float) -> list[dict]:
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        in_backbone = name.startswith(backbone_prefixes)
        decays = param.ndim > 1
        groups.setdefault((in_backbone, decays), []).append(param)
    return [
        {
            "params": params,
            "lr": lr * (backbone_lr_mult if in_backbone else 1.0),
            "weight_decay": weight_decay if decays else 0.0,
            "name": f"{'backbone' if in_backbone else 'rest'}{'' if decays else '_no_decay'}",
        }
        for (in_backbone, decays), params in sorted(groups.items())
    ]


OPTIMIZERS = {"adamw": torch.optim.AdamW, "adam": torch.optim.Adam}
"""``optim.name`` -> optimizer class. Adam adds weight decay to the gradient (L2); AdamW decouples it."""


def use_fused(setting: bool | str, device_type: str) -> bool:
    """``optim.fused``: auto -> the fused kernel on CUDA (one launch for every tensor of a group
    instead of several per tensor), the default for-each implementation elsewhere."""
    if setting == "auto":
        return device_type == "cuda"
    return bool(setting)


def build_optimizer(model: nn.Module, backbone_prefixes: tuple[str, ...], cfg,
                    device_type: str = "cpu") -> torch.optim.Optimizer:
    """``cfg.name`` (AdamW or Adam) over :func:`param_groups` with the recipe's optim section ``cfg``;
    fused (:func:`use_fused`) for the device type the model trains on (``accelerator.device.type``;
    the parameters may still be on the CPU, ``accelerator.prepare`` moves them in place)."""
    groups = param_groups(model, backbone_prefixes, cfg.lr, cfg.backbone_lr_mult, cfg.weight_decay)
    name = getattr(cfg, "name", "adamw")
    if name not in OPTIMIZERS:
        raise ValueError(f"optim.name: unknown optimizer {name!r}; expected one of {sorted(OPTIMIZERS)}")
    fused = use_fused(getattr(cfg, "fused", "auto"), device_type)
    return OPTIMIZERS[name](groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, fused=True if fused else None)


def lr_factor(step: int, cfg, peak_lr: float, total_steps: int, steps_per_epoch: int) -> float:
    """Multiplier of the peak lr at optimizer step ``step`` (0-based) for the schedule ``cfg``."""
    warmup = cfg.warmup_steps
    if step < warmup:
        start = cfg.warmup_start_lr / peak_lr
        return start + (1.0 - start) * step / warmup
    if cfg.name == "cosine":
        floor = cfg.min_lr / peak_lr
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))
    if cfg.name == "step":
        epoch = step // max(1, steps_per_epoch)
        return cfg.gamma ** sum(epoch >= m for m in cfg.milestones)
    return 1.0


def build_scheduler(optimizer: torch.optim.Optimizer, cfg, peak_lr: float, total_steps: int,
                    steps_per_epoch: int) -> LambdaLR:
    """LambdaLR applying :func:`lr_factor` to every parameter group."""
    return LambdaLR(optimizer, lambda step: lr_factor(step, cfg, peak_lr, total_steps, steps_per_epoch))


def set_peak_lr(scheduler: LambdaLR, scale: float) -> None:
    """Rescale the schedule to a new peak (a training phase's lr): every group's base lr becomes its
    initial lr times ``scale``, and its current lr follows at the scheduler's position."""
    optimizer = scheduler.optimizer
    scheduler.base_lrs = [group["initial_lr"] * scale for group in optimizer.param_groups]
    for group, base, factor in zip(optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas):
        group["lr"] = base * factor(scheduler.last_epoch)
    scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]
