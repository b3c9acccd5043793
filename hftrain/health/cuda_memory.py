"""CUDA memory settings of a run (recipe section ``cuda``), as the RT-DETR safe/fast setups use them:

- ``alloc_conf``: the caching allocator's configuration. PyTorch reads it from the environment once,
  when the allocator first initialises (the first CUDA allocation), so ``apply_allocator`` must run
  before anything touches CUDA: ``train()`` calls it before Accelerate's state exists. torch 2.13 reads
  both PYTORCH_ALLOC_CONF (the new name) and PYTORCH_CUDA_ALLOC_CONF (the old one, which wins when both
  are set): both are set to the same value. Once CUDA is initialised, a different value is refused.
- ``memory_fraction``: ``torch.cuda.set_per_process_memory_fraction`` on the process's device.
- ``empty_cache_every``: ``torch.cuda.empty_cache()`` every N micro-batches (the loop's ``if``).

The CPU thread count is ``train.cpu_threads``. Without a CUDA device all of this does nothing, and the
run's header says so.
"""

from __future__ import annotations

import difflib
import os

import torch

ALLOC_ENV_VARS = ("PYTORCH_ALLOC_CONF", "PYTORCH_CUDA_ALLOC_CONF")

ALLOCATOR_KEYS = (
    "backend", "max_split_size_mb", "max_non_split_rounding_mb", "garbage_collection_threshold",
    "roundup_power2_divisions", "expandable_segments", "release_lock_on_cudamalloc", "large_segment_size_mb",
    "pinned_use_cuda_host_register", "pinned_num_register_threads", "pinned_use_background_threads",
    "pinned_max_cached_size_mb", "pinned_max_round_threshold_mb",
)
"""Option names of torch 2.13's caching allocator (c10 AllocatorConfig); a recipe key close to one of
these but not equal is reported as a typo. Other names are left to torch, which rejects unknown ones."""


class CudaSettingsError(RuntimeError):
    """A CUDA memory setting that cannot take effect (the allocator was configured already)."""


def on_cuda(device) -> bool:
    """Whether ``device`` is a CUDA device (tests force this to exercise the CUDA paths on a CPU)."""
    return torch.device(device).type == "cuda"


def check_alloc_conf(text: str) -> list[str]:
    """Problems with an allocator configuration string: items must be ``key:value`` separated by commas
    (``roundup_power2_divisions:[256:1,>:4]`` may hold commas inside brackets); a misspelt key is named."""
    problems = []
    items, depth, current = [], 0, ""
    for char in text:
        depth += (char == "[") - (char == "]")
        if char == "," and depth == 0:
            items.append(current)
            current = ""
        else:
            current += char
    items.append(current)
    for item in items:
        key, sep, value = item.strip().partition(":")
        if not sep or not key or not value.strip():
            problems.append(f"cuda.alloc_conf: {item.strip()!r} in {text!r} is not of the form key:value")
        elif key not in ALLOCATOR_KEYS:
            near = difflib.get_close_matches(key, ALLOCATOR_KEYS, n=1, cutoff=0.75)
            if near:
                problems.append(f"cuda.alloc_conf: unknown allocator option {key!r} (did you mean {near[0]!r}?)")
    return problems


def apply_allocator(cfg, use_cuda: bool) -> str:
    """Set the allocator configuration in the environment; call before CUDA initialises. Returns what
    the run's header shows. Raises CudaSettingsError when CUDA is initialised already with another value."""
    if cfg.alloc_conf is None:
        return "allocator: PyTorch defaults" + _from_environment()
    if not use_cuda:
        return f"allocator: {cfg.alloc_conf} not applied (no CUDA device)"
    current = {name: os.environ.get(name) for name in ALLOC_ENV_VARS}
    if torch.cuda.is_initialized():
        if all(value == cfg.alloc_conf for value in current.values()):
            return f"allocator: {cfg.alloc_conf} (already set before CUDA initialised)"
        raise CudaSettingsError(
            f"cuda.alloc_conf={cfg.alloc_conf!r} cannot take effect: CUDA is already initialised in this process "
            f"(its allocator read {_describe(current)}). Apply the recipe before anything uses CUDA, or set "
            f"PYTORCH_ALLOC_CONF in the environment of the launch.")
    replaced = [f"{name}={value}" for name, value in current.items() if value is not None and value != cfg.alloc_conf]
    for name in ALLOC_ENV_VARS:
        os.environ[name] = cfg.alloc_conf
    return f"allocator: {cfg.alloc_conf}" + (f" (replaces {', '.join(replaced)} from the environment)" if replaced else "")


def _from_environment() -> str:
    found = {name: os.environ.get(name) for name in ALLOC_ENV_VARS if os.environ.get(name)}
    return f" ({_describe(found)} from the environment)" if found else ""


def _describe(values: dict) -> str:
    shown = [f"{name}={value}" for name, value in values.items() if value is not None]
    return ", ".join(shown) if shown else "no PYTORCH_ALLOC_CONF / PYTORCH_CUDA_ALLOC_CONF"


class CudaMemory:
    """The settings that act once the process has its device: the memory cap and ``empty_cache``."""

    def __init__(self, cfg, device):
        self.cfg = cfg
        self.device = torch.device(device)
        self.active = on_cuda(self.device)

    def limit_memory(self) -> None:
        """``cuda.memory_fraction``: cap this process's share of its GPU."""
        if self.active and self.cfg.memory_fraction is not None:
            torch.cuda.set_per_process_memory_fraction(self.cfg.memory_fraction, self.device)

    def empty_cache_due(self, batches_done: int) -> bool:
        """``cuda.empty_cache_every``: true after every N-th micro-batch of the epoch."""
        every = self.cfg.empty_cache_every
        return self.active and every is not None and batches_done % every == 0

    def describe(self, allocator: str) -> str:
        """The header line: the allocator (from ``apply_allocator``), the memory cap, the cache cadence."""
        cfg = self.cfg
        if not self.active:
            configured = [f"{key} {value}" for key, value in (("alloc_conf", cfg.alloc_conf),
                          ("memory_fraction", cfg.memory_fraction), ("empty_cache_every", cfg.empty_cache_every))
                          if value is not None]
            return "no CUDA device" + (f": not applied ({', '.join(configured)})" if configured else "")
        cap = f"{cfg.memory_fraction:g} of the GPU" if cfg.memory_fraction is not None else "none"
        empty = f"every {cfg.empty_cache_every} micro-batches" if cfg.empty_cache_every else "never"
        return f"{allocator}; memory cap {cap}; empty_cache {empty}"
