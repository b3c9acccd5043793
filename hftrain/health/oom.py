"""Out-of-memory recovery during training, and ``train.batch_size: auto``.

Recovery: on ``torch.OutOfMemoryError`` in a micro-step, the micro-batch is cut to its largest
divisor no bigger than half (8 -> 4, 6 -> 3, 5 -> 1) and gradient accumulation multiplied by the
same factor, so the effective batch, the optimizer steps per epoch and the learning-rate schedule
stay the same. The partial gradients of the interrupted optimizer step are cleared, memory is
freed, the training dataloader is rebuilt with the new micro-batch and re-prepared, positioned at
the first sample of the interrupted step (same epoch order), and that step is done again. The
change is logged, kept for the rest of the run, and written to the run's ``recipe.yaml``.
With plain random batches (or ``repeat_factor`` without aspect-ratio grouping) every optimizer step
then sees the same samples in the same order as before; grouping by aspect ratio forms different
groups at a different batch size. Under several processes an OOM on one process cannot be
recovered without the others (they wait in the gradient all-reduce), so there the error is
re-raised with advice; ``train.batch_size: auto`` is the multi-process answer.

``train.batch_size: auto``: before training, a few probe steps on real training samples padded
to the largest canvas the recipe can produce find the largest micro-batch that fits (the divisors
of ``train.effective_batch / processes``, largest first); accumulation makes up the rest. Each
probe step is a whole training step: forward, backward and a step of the run's own optimizer (so
its state, two moments per weight for Adam, is allocated as in training), with the other memory a
real step holds kept allocated beside it: the EMA copy of the weights (``ema.enabled``) and,
under several processes, DDP's gradient buckets (about one more copy of the gradients). Weights,
buffers and random states are restored afterwards; the smallest choice over the processes wins
(every process takes it).

Test hook (not a recipe field): ``HFTRAIN_TEST_OOM_ABOVE=N`` (or ``N@K``) makes every training-mode
forward with more than N images raise ``torch.OutOfMemoryError`` (from the K-th forward call on),
on any device, so the recovery can be tested on a CPU.
"""

from __future__ import annotations

import gc
import os
from dataclasses import replace

import torch
import torch.nn.functional as F

from hftrain.recipe.presets import resolve_augment

INJECT_ENV = "HFTRAIN_TEST_OOM_ABOVE"
PROBE_STEPS = 2


def install_injection(model: torch.nn.Module) -> None:
    """Register the ``HFTRAIN_TEST_OOM_ABOVE`` forward pre-hook when the variable is set."""
    spec = os.environ.get(INJECT_ENV)
    if not spec:
        return
    limit_text, _, start_text = spec.partition("@")
    limit, start = int(limit_text), int(start_text or 1)
    calls = {"n": 0}

    def hook(module, args, kwargs):
        if not module.training:
            return
        calls["n"] += 1
        pixels = kwargs.get("pixel_values", args[0] if args else None)
        if calls["n"] >= start and pixels is not None and pixels.shape[0] > limit:
            raise torch.OutOfMemoryError(
                f"CUDA out of memory (injected: {INJECT_ENV}={spec}, micro-batch of {pixels.shape[0]} > {limit})")

    model.register_forward_pre_hook(hook, with_kwargs=True)


def free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def smaller_micro_batch(batch_size: int) -> int:
    """The largest divisor of ``batch_size`` that is at most half of it (0 when it is 1)."""
    return max((d for d in range(1, batch_size // 2 + 1) if batch_size % d == 0), default=0)


def worst_canvas(data_cfg, pad_to_multiple: int) -> tuple[int, int]:
    """The largest padded canvas the recipe's resize (and scale jitter) can give a batch."""
    side = data_cfg.min_size if data_cfg.resize == "square" else data_cfg.max_size
    if data_cfg.resize == "square":  # data.augment.multiscale / random_resize: square sides past min_size
        augment = resolve_augment(data_cfg.augment, data_cfg.min_size)
        side = max([side, *augment.multiscale, *augment.random_resize])
    if data_cfg.augment.scale_jitter > 0:  # data.augment.scale_range above 1 grows images past the resize
        side = max(1, round(side * max(1.0, data_cfg.augment.scale_range[1])))
    side = -(-side // pad_to_multiple) * pad_to_multiple
    return side, side


def pad_to(batch: dict, height: int, width: int) -> dict:
    h, w = batch["pixel_values"].shape[-2:]
    pad = (0, max(0, width - w), 0, max(0, height - h))
    return {**batch, "pixel_values": F.pad(batch["pixel_values"], pad), "pixel_mask": F.pad(batch["pixel_mask"], pad)}


def reserve_training_memory(model: torch.nn.Module, ema: bool, ddp: bool) -> list[torch.Tensor]:
    """Tensors as large as what training holds beside the model, its gradients and the optimizer
    state: the EMA copy of weights and buffers, and DDP's gradient buckets (one gradient copy)."""
    reserved = []
    if ema:
        reserved += [torch.empty_like(t) for t in model.state_dict().values() if t.is_floating_point()]
    if ddp:
        reserved += [torch.empty_like(p) for p in model.parameters() if p.requires_grad]
    return reserved


def resolve_auto_batch(recipe, detector, dataset, accelerator, inputs_fn, log, make_optimizer=None):
    """The recipe with ``train.batch_size`` and ``gradient_accumulation_steps`` set by probing.
    ``make_optimizer(model)`` builds the run's optimizer (a throwaway one, stepped by the probe)."""
    from hftrain.data.collate import Collate, unpack_labels

    target = recipe.train.effective_batch
    processes = accelerator.num_processes
    if target is None or target % processes:
        raise ValueError(f"train.batch_size: auto needs train.effective_batch divisible by the {processes} "
                         f"process(es), got {target}")
    per_process = target // processes
    candidates = [d for d in range(per_process, 0, -1) if per_process % d == 0]
    model = detector.model.to(accelerator.device)
    collate = Collate(normalize_by_canvas=not detector.uses_pixel_mask, pad_to_multiple=detector.pad_to_multiple)
    canvas = worst_canvas(recipe.data, detector.pad_to_multiple)
    saved = {name: t.detach().to("cpu", copy=True) for name, t in model.state_dict().items()}  # weights and buffers
    devices = [accelerator.device] if accelerator.device.type == "cuda" else []
    optimizer = make_optimizer(model) if make_optimizer is not None else None
    reserved = reserve_training_memory(model, ema=recipe.ema.enabled, ddp=processes > 1)
    chosen = 0
    with torch.random.fork_rng(devices=devices):
        for size in candidates:
            try:
                for step in range(PROBE_STEPS):
                    samples = [dataset[(step * size + i) % len(dataset)] for i in range(size)]
                    batch = pad_to(collate(samples), *canvas)
                    if batch.get("images", 0) < size:
                        continue  # undecodable samples: not a fair probe of this size
                    labels = unpack_labels({k: v.to(accelerator.device) if torch.is_tensor(v) else v for k, v in batch.items()})
                    inputs = {k: v.to(accelerator.device) for k, v in inputs_fn(batch).items()}
                    with accelerator.autocast():
                        loss = model(**inputs, labels=labels).loss
                    loss.backward()
                    del loss
                    if optimizer is not None:  # allocates the optimizer state, as the first real step does
                        optimizer.step()
                    model.zero_grad(set_to_none=True)
                chosen = size
                break
            except torch.OutOfMemoryError as err:
                model.zero_grad(set_to_none=True)
                free_memory()
                log.print(f"[oom] batch_size auto: {size} does not fit ({str(err).splitlines()[0][:120]})")
    del optimizer, reserved
    with torch.no_grad():  # the probe's optimizer steps changed the weights: put them back
        model.load_state_dict(saved)
    del saved
    free_memory()
    found = torch.tensor([chosen], device=accelerator.device)
    if processes > 1:
        found = accelerator.gather(found)
    chosen = int(found.min())
    if chosen == 0:
        raise RuntimeError("train.batch_size: auto: not even one image per micro-batch fits in memory")
    accum = per_process // chosen
    log.print(f"[oom] batch_size auto: micro-batch {chosen} x accumulation {accum} x {processes} process(es) "
              f"= effective batch {target} (probed on a {canvas[0]}x{canvas[1]} canvas)")
    return replace(recipe, train=replace(recipe.train, batch_size=chosen, gradient_accumulation_steps=accum))
