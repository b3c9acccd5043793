"""The Accelerator a recipe asks for: device, processes, precision, accumulation, trackers (``log_with``)."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from accelerate import Accelerator, DataLoaderConfiguration, DistributedDataParallelKwargs
from accelerate.utils import ProjectConfiguration

from hftrain.engine.trackers import tracker_names
from hftrain.recipe.presets import resolve_augment


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


def fixed_input_size(data_cfg) -> bool:
    """Every training batch has the same image shape: square resize, no scale jitter, no multi-scale or
    random resize (``data.augment``, its preset resolved)."""
    augment = resolve_augment(data_cfg.augment, data_cfg.min_size)
    return (data_cfg.resize == "square" and augment.scale_jitter == 0 and not augment.multiscale
            and not augment.random_resize)


def apply_tf32(enabled: bool, capability: tuple[int, int] | None) -> str:
    """``precision.tf32`` on a CUDA device of ``capability`` (None: no CUDA device); the header's words."""
    if capability is None:
        return "n/a (no CUDA device)"
    if capability < (8, 0):
        return f"n/a (compute capability {capability[0]}.{capability[1]} < 8.0 has no TF32)"
    torch.backends.cuda.matmul.allow_tf32 = enabled
    torch.backends.cudnn.allow_tf32 = enabled
    return "on (fp32 matmul and convolutions in TF32)" if enabled else "off (full fp32 products)"


def apply_cudnn_benchmark(setting: bool | str, data_cfg, on_cuda: bool) -> str:
    """``cuda.cudnn_benchmark`` (auto: when every batch has the same shape); the header's words."""
    enabled = fixed_input_size(data_cfg) if setting == "auto" else bool(setting)
    if not on_cuda:
        return "n/a (no CUDA device)"
    torch.backends.cudnn.benchmark = enabled
    why = (" (auto: fixed input size)" if enabled else " (auto: input sizes vary)") if setting == "auto" else ""
    return ("on" if enabled else "off") + why


def speed_settings(recipe, device: torch.device) -> list[tuple[str, str]]:
    """Apply the recipe's GPU speed switches (TF32, cuDNN benchmark) for ``device``; the header rows
    of all of them (fused optimizer, channels-last and compile act where the optimizer and model are made)."""
    from hftrain.engine.optim import use_fused

    on_cuda = device.type == "cuda"
    capability = torch.cuda.get_device_capability(device) if on_cuda else None
    fused = use_fused(recipe.optim.fused, device.type)
    return [
        ("tf32", apply_tf32(recipe.precision.tf32, capability)),
        ("cudnn benchmark", apply_cudnn_benchmark(recipe.cuda.cudnn_benchmark, recipe.data, on_cuda)),
        ("optimizer kernel", f"{'fused' if fused else 'for-each'} (optim.fused: {recipe.optim.fused})"),
        ("channels last", "on" if recipe.cuda.channels_last else "off"),
        ("compile", "torch.compile (inductor)" if recipe.train.compile else "off"),
    ]


def make_accelerator(recipe, find_unused_parameters: bool) -> Accelerator:
    run_dir = Path(recipe.output_dir)
    log_with = tracker_names(recipe.log) or None  # log.trackers (and log.tensorboard): started by trackers.start
    return Accelerator(
        cpu=use_cpu(),
        gradient_accumulation_steps=recipe.train.gradient_accumulation_steps,
        mixed_precision=resolve_precision(recipe.precision.mode),
        log_with=log_with,
        project_config=ProjectConfiguration(project_dir=str(run_dir), logging_dir=str(run_dir / "tensorboard")),
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, non_blocking=True),  # pinned batches: async copies
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=find_unused_parameters)],
        dynamo_backend="inductor" if recipe.train.compile else "no",  # train.compile: prepare() compiles the model
    )
