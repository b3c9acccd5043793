"""The Accelerator a recipe asks for: device, processes, precision, accumulation, trackers."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from accelerate import Accelerator, DataLoaderConfiguration, DistributedDataParallelKwargs
from accelerate.utils import ProjectConfiguration


def resolve_precision(mode: str) -> str:
    """``auto``: bf16 on CUDA devices that support it, fp16 on other CUDA devices, none on CPU."""
    if mode != "auto":
        return mode
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "no"


def use_cpu() -> bool:
    """Train on the CPU when there is no CUDA device (or ACCELERATE_USE_CPU is set). Under torchrun
    this makes each rank a gloo (MULTI_CPU) process rather than an independent single process."""
    flag = os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes")
    return flag or not torch.cuda.is_available()


def cpu_threads(configured: int | None) -> int:
    """``train.cpu_threads``, or this process's share of the cores it may run on."""
    if configured:
        return configured
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // int(os.environ.get("LOCAL_WORLD_SIZE", "1")))


def make_accelerator(recipe, find_unused_parameters: bool) -> Accelerator:
    run_dir = Path(recipe.output_dir)
    log_with = None
    if recipe.log.tensorboard:
        try:
            import tensorboard  # noqa: F401

            log_with = "tensorboard"
        except ImportError:
            pass
    return Accelerator(
        cpu=use_cpu(),
        gradient_accumulation_steps=recipe.train.gradient_accumulation_steps,
        mixed_precision=resolve_precision(recipe.precision.mode),
        log_with=log_with,
        project_config=ProjectConfiguration(project_dir=str(run_dir), logging_dir=str(run_dir / "tensorboard")),
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, non_blocking=True),  # pinned batches: async copies
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=find_unused_parameters)],
    )
