"""The training loop: one Accelerate loop for every recipe and model family.

    accelerate launch hftrain/train.py RECIPE.yaml [key=value ...] [--resume [CHECKPOINT]]

Reads top to bottom: recipe -> accelerator -> data -> model -> optimizer -> prepare -> epochs
(train_one_epoch, evaluate, checkpoint) -> final model. Each feature is an ``if`` where it acts.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator, DataLoaderConfiguration, DistributedDataParallelKwargs, PartialState
from accelerate.utils import ProjectConfiguration, broadcast_object_list, set_seed

from transformers.utils import logging as hf_logging

from hftrain import checkpoints, faults
from hftrain.coco_eval import CocoEvaluator
from hftrain.cuda_memory import CudaMemory, apply_allocator
from hftrain.data.collate import unpack_labels
from hftrain.data.loader import load_data, make_loader, materialise_synthetic
from hftrain.models.registry import build_model
from hftrain import samplers
from hftrain.debug import DebugMonitor, check_trainable
from hftrain.ema import ModelEma
from hftrain.guard import NonFiniteGuard
from hftrain.loss_stats import LossStats
from hftrain.oom import MicroBatching, install_injection, resolve_auto_batch
from hftrain.optim import build_optimizer, build_scheduler
from hftrain.phases import Phase, check_freeze_patterns, enter_phase, frozen_norms_to_eval, phase_at, plan
from hftrain.preemption import StopSignal
from hftrain.pictures import RunPictures
from hftrain.recipe import Recipe, RecipeError, load_recipe, save_recipe
from hftrain.runlog import RunLog
from hftrain.voc_eval import VocEvaluator


class RunDirInUse(RuntimeError):
    """The output directory holds an earlier run and neither --resume nor --overwrite was given."""


class TooManyBadImages(RuntimeError):
    """More images failed to decode during training than ``data.max_bad_fraction`` allows."""


@dataclass
class LoopState:
    epoch: int = 0
    step: int = 0  # optimizer steps done
    batches_done: int = 0  # micro-batches consumed in this epoch (the dataloader position)
    epoch_batches: int = 0  # micro-batches in a whole epoch on this process
    bad_images: int = 0
    save_count: int = 0
    best: float | None = None  # best value of checkpoint.best_metric so far
    ema: ModelEma | None = None  # ema.enabled: the weights' moving average (checkpoints hold it as ema.pt)

    def saved(self, epoch_complete: bool) -> dict:
        """What trainer_state.json holds. Saves inside the epoch are never "complete", even after its
        last batch: a resumed run then still does the epoch's end (evaluation, best/, checkpoint)."""
        return {"epoch": self.epoch, "step": self.step, "batches_done": self.batches_done,
                "epoch_complete": epoch_complete, "save_count": self.save_count, "best": self.best}


@dataclass
class Health:
    """What the loop consults to survive what it can and to say why a run is unhealthy."""

    batching: MicroBatching  # the training loader; out-of-memory recovery halves its micro-batch
    guard: NonFiniteGuard  # guard.nonfinite: skip | rollback | abort
    stats: LossStats  # loss variance and trend, clipped fraction, gradient norm before clipping
    debug: DebugMonitor | None = None  # debug: true
    memory: CudaMemory | None = None  # cuda: empty_cache every cuda.empty_cache_every micro-batches


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


def make_accelerator(recipe: Recipe, find_unused_parameters: bool) -> Accelerator:
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


class Normalize:
    """uint8 batch -> float model input, on the device: ``(x / 255 - mean) / std``."""

    def __init__(self, mean, std, device):
        self.mean = torch.tensor(mean, device=device).view(1, 3, 1, 1) * 255.0
        self.std = torch.tensor(std, device=device).view(1, 3, 1, 1) * 255.0

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        return (pixels.float() - self.mean) / self.std


def configure_processor(detector, data_cfg) -> None:
    """The saved image processor resizes as training did, so the pipeline sees the same sizes."""
    if detector.image_processor is None:
        return
    if data_cfg.resize == "square":
        detector.image_processor.size = {"height": data_cfg.min_size, "width": data_cfg.min_size}
    else:
        detector.image_processor.size = {"shortest_edge": data_cfg.min_size, "longest_edge": data_cfg.max_size}


def model_inputs(batch: dict, normalize: Normalize, uses_pixel_mask: bool) -> dict:
    inputs = {"pixel_values": normalize(batch["pixel_values"])}
    if uses_pixel_mask:
        inputs["pixel_mask"] = batch["pixel_mask"]
    return inputs


def train_one_epoch(model, loader, optimizer, scheduler, accelerator, detector, normalize, recipe: Recipe,
                    state: LoopState, log: RunLog, bad_limit: float, stop: StopSignal, health: Health) -> str:
    """One pass over ``loader`` (which may start mid-epoch after a resume). Returns why it ended:
    "epoch" (the data ran out), "max_steps" (``train.max_steps`` reached), "stopped" (a signal) or
    "rollback" (the non-finite guard reloaded an earlier checkpoint; ``state`` says where to go on)."""
    model.train()
    frozen_norms_to_eval(model)  # phases: BatchNorm layers of frozen modules keep their running statistics
    clip = recipe.train.clip_max_norm
    trainable = [p for p in model.parameters() if p.requires_grad]  # clipping reads this list, not the module tree, every step
    window = {"loss": 0.0, "t_load": 0.0, "t_step": 0.0, "micro": 0, "clipped": 0, "syncs": 0, "images": 0,
              "boxes_dropped": 0}
    epoch_loss, epoch_micro = 0.0, 0
    step_loss, step_micro = 0.0, 0
    health.stats.start_epoch()
    log.start_epoch(state.epoch, len(loader))
    tick = time.perf_counter()
    for batch in health.batching.batches(loader, state):  # follows the rebuilt loader after an out-of-memory error
        t_load = time.perf_counter() - tick
        state.batches_done += 1
        state.bad_images += batch["skipped"]
        if state.bad_images > bad_limit:
            raise TooManyBadImages(
                f"{state.bad_images} images failed to decode on this process (limit {bad_limit:.0f}, "
                f"data.max_bad_fraction={recipe.data.max_bad_fraction}); run `hftrain scan` and set data.blacklist"
            )
        if health.debug:  # debug: the class mix of the first batches
            health.debug.batch(batch, state.epoch)
        lr = max(group["lr"] for group in optimizer.param_groups)  # the rate this step uses
        verdict = "ok"
        try:
            with accelerator.accumulate(model):
                outputs = model(**model_inputs(batch, normalize, detector.uses_pixel_mask), labels=unpack_labels(batch))
                loss = outputs.loss
                health.guard.observe(outputs)  # NaN/Inf in the loss and its terms (flags only, no sync)
                accelerator.backward(loss)
                loss_value = loss.item()  # read before the update is queued: the host never waits for the optimizer step
                if accelerator.sync_gradients:
                    if health.debug:  # debug: which trainable parameters got a gradient
                        health.debug.after_backward(state.step + 1)
                    grad_norm = accelerator.clip_grad_norm_(trainable, clip if clip else math.inf)
                    verdict = health.guard.verdict(grad_norm, state, accelerator)  # ok | skip | rollback (abort raises)
                    norm = float(grad_norm)  # free here (the guard just synchronised); after the update it waits for it
                if verdict == "ok":  # guard: a non-finite step gets no update
                    optimizer.step()
                elif accelerator.scaler is not None:  # fp16: unscale_ ran in clipping; close the scaler's step
                    accelerator.scaler.update()
                if health.debug and accelerator.sync_gradients:  # debug: which parameters the step changed
                    health.debug.after_step(state.step + 1, updated=verdict == "ok")
                if accelerator.sync_gradients and not accelerator.optimizer_step_was_skipped:
                    scheduler.step()
                if state.ema and accelerator.sync_gradients and verdict == "ok" and not accelerator.optimizer_step_was_skipped:
                    state.ema.update()  # ema: average in the weights this optimizer step produced
                optimizer.zero_grad(set_to_none=True)
        except torch.OutOfMemoryError as err:  # halve the micro-batch, double accumulation, redo this optimizer step
            health.batching.recover(err, optimizer, state)
            tick = time.perf_counter()
            continue
        health.stats.add_micro(loss_value)
        t_step = time.perf_counter() - tick - t_load
        epoch_loss, epoch_micro = epoch_loss + loss_value, epoch_micro + 1
        step_loss, step_micro = step_loss + loss_value, step_micro + 1
        window["loss"] += loss_value
        window["t_load"] += t_load
        window["t_step"] += t_step
        window["micro"] += 1
        window["images"] += batch["images"]
        window["boxes_dropped"] += batch.get("boxes_dropped", 0)  # data.augment: mosaic boxes cut too small to keep
        log.advance(loss_value, epoch_loss / epoch_micro, lr)
        if health.memory and health.memory.empty_cache_due(state.batches_done):  # cuda.empty_cache_every
            torch.cuda.empty_cache()
        if accelerator.sync_gradients:
            state.step += 1
            window["syncs"] += 1
            window["clipped"] += int(clip is not None and norm > clip)
            health.stats.end_step(norm, clip is not None and norm > clip)
            if health.debug:  # debug: the learning rate of every warm-up step
                health.debug.learning_rate(state.step, lr)
            log.record("step", {"epoch": state.epoch, "loss": step_loss / step_micro, "grad_norm": norm, "lr": lr}, state.step)
            step_loss, step_micro = 0.0, 0
            if verdict == "rollback":  # guard.nonfinite: rollback: reload the last good checkpoint, lower the lr
                log.end_epoch()
                health.guard.roll_back(accelerator, scheduler, optimizer, state, log)
                return "rollback"
            if state.step % recipe.log.interval == 0:
                log_window(window, outputs, accelerator, state, log, lr, health.stats)
                window = {k: 0 for k in window}
            faults.fail_at_step(state.step, accelerator.process_index)
            every = recipe.checkpoint.every_steps
            if every and state.step % every == 0 and state.batches_done < state.epoch_batches:
                save_checkpoint(accelerator, recipe, scheduler, state)
            if stop.requested(accelerator):
                log.end_epoch()
                save_checkpoint(accelerator, recipe, scheduler, state)
                return "stopped"
            if recipe.train.max_steps is not None and state.step >= recipe.train.max_steps:
                log.end_epoch()
                return "max_steps"
        tick = time.perf_counter()
    log.end_epoch()
    epoch_stats = health.stats.epoch_summary()  # loss variance and trend over the whole epoch
    log.record("epoch", {"epoch": state.epoch, **epoch_stats}, state.step)
    log.print(f"epoch {state.epoch} summary: loss mean {epoch_stats['loss_mean_epoch']:.4f} | "
              f"{LossStats.line(epoch_stats, 'epoch')}")
    return "epoch"


def save_checkpoint(accelerator, recipe: Recipe, scheduler, state: LoopState, epoch_complete: bool = False) -> None:
    """A full checkpoint at the current optimizer step (every process calls this)."""
    state.save_count += 1
    checkpoints.save_checkpoint(accelerator, Path(recipe.output_dir), scheduler, state.saved(epoch_complete),
                                recipe.checkpoint.keep, ema=state.ema)


def log_window(window: dict, outputs, accelerator, state: LoopState, log: RunLog, lr: float, stats: LossStats) -> None:
    """Every ``log.interval`` steps: mean loss (over processes) and terms, timing shares."""
    n = max(1, window["micro"])
    loss = accelerator.reduce(torch.tensor(window["loss"] / n, device=accelerator.device), "mean").item()
    terms = {(k if k.startswith("loss") else f"loss_{k}"): float(v.detach()) if torch.is_tensor(v) else float(v) for k, v in (outputs.loss_dict or {}).items()}
    t_load, t_step = window["t_load"] / n, window["t_step"] / n
    total = max(t_load + t_step, 1e-12)
    values = {
        "epoch": state.epoch, "loss": loss, "lr": lr, **terms,
        "t_load": t_load, "t_step": t_step, "t_load_share": t_load / total, "t_step_share": t_step / total,
        "clipped_fraction": window["clipped"] / max(1, window["syncs"]),
        "images_per_second": window["images"] * accelerator.num_processes / max(window["t_load"] + window["t_step"], 1e-12),
        "boxes_dropped": int(accelerator.reduce(torch.tensor(float(window["boxes_dropped"]), device=accelerator.device), "sum").item()),
    }
    summary = stats.window_summary()  # loss variance, trend, clipped fraction, pre-clip grad norm
    values.update(summary)
    log.record("train", values, state.step)
    log.print(
        f"epoch {state.epoch} step {state.step} loss {loss:.4f} lr {lr:.2e} | {LossStats.line(summary, 'window')} | "
        f"t_load {t_load:.3f}s ({100 * t_load / total:.1f}%) | t_step {t_step:.3f}s ({100 * t_step / total:.1f}%)"
    )


@torch.no_grad()
def evaluate(model, loader, accelerator, detector, normalize, evaluator: CocoEvaluator, max_detections: int,
             voc_evaluator: VocEvaluator | None = None) -> dict:
    """COCO metrics (and VOC AP with a ``voc_evaluator``) over the whole loader, predictions gathered from every process."""
    model.eval()
    predictions = []
    for batch in loader:
        outputs = model(**model_inputs(batch, normalize, detector.uses_pixel_mask))
        results = detector.postprocess(outputs, batch["target_sizes"])
        local = []
        for image_id, orig, result in zip(batch["image_ids"].tolist(), batch["orig_sizes"], results):
            keep = result["scores"].float().argsort(descending=True)[:max_detections]
            boxes = result["boxes"][keep].float()
            boxes[:, 0::2] = boxes[:, 0::2].clamp(0, float(orig[1]))
            boxes[:, 1::2] = boxes[:, 1::2].clamp(0, float(orig[0]))
            local.append({
                "image_id": image_id,
                "boxes": boxes.cpu().tolist(),
                "scores": result["scores"][keep].float().cpu().tolist(),
                "labels": result["labels"][keep].cpu().tolist(),
            })
        predictions.extend(accelerator.gather_for_metrics(local, use_gather_object=True))
    # an image that failed to decode was replaced by another: keep each image's first prediction
    predictions = list({p["image_id"]: p for p in reversed(predictions)}.values())[::-1]
    metrics = [evaluator.evaluate(predictions) if accelerator.is_main_process else None]
    if voc_evaluator is not None and accelerator.is_main_process:  # eval.voc: VOC07 11-point and all-point AP@0.5
        metrics[0].update(voc_evaluator.evaluate(predictions))
    broadcast_object_list(metrics, from_process=0)
    model.train()
    return metrics[0]


def train(recipe: Recipe, resume: str | bool | None = None, exit_code: bool = False,
          overwrite: bool = False) -> dict | int:
    """Run the recipe; returns the last evaluation's metrics (or, with ``exit_code``, the
    process exit code: 0, or 143/130 after a SIGTERM/SIGINT checkpoint)."""
    hf_logging.disable_progress_bar()
    run_dir = Path(recipe.output_dir)
    allocator = apply_allocator(recipe.cuda, use_cuda=not use_cpu())  # cuda.alloc_conf: before CUDA initialises
    processes_state = PartialState(cpu=use_cpu())
    if not resume and (checkpoints.complete_checkpoints(run_dir) or (run_dir / "metrics.jsonl").exists()):
        if not overwrite:  # never mix two runs' checkpoints and logs, nor delete them unasked
            raise RunDirInUse(f"{run_dir} holds an earlier run: pass --resume to continue it, --overwrite to "
                              "delete it and start afresh, or choose another output_dir")
        if processes_state.is_main_process:
            shutil.rmtree(run_dir)
        processes_state.wait_for_everyone()
    # data first (cheap failures before the model): the demo data is generated once, by the main process
    with processes_state.main_process_first():
        data_cfg = materialise_synthetic(recipe.data)
    data = load_data(data_cfg, seed=recipe.train.seed)
    torch.set_num_threads(cpu_threads(recipe.train.cpu_threads))
    set_seed(recipe.train.seed)  # the same initial weights on every process
    detector = build_model(recipe.model, data.class_names, fp32_criterion=recipe.precision.fp32_criterion)
    check_trainable(detector.model, f"model {recipe.model.name}")  # a frozen-everything model could never learn
    phases = plan(recipe)  # one phase, or the recipe's phases (frozen modules, batch size, lr)
    if problems := check_freeze_patterns(detector.model, phases):
        raise RecipeError(problems, "phases")
    trainable_by_design = {name for name, p in detector.model.named_parameters() if p.requires_grad}
    install_injection(detector.model)  # HFTRAIN_TEST_OOM_ABOVE: tests provoke out-of-memory errors on a CPU
    configure_processor(detector, recipe.data)
    accelerator = make_accelerator(recipe, detector.find_unused_parameters)
    memory = CudaMemory(recipe.cuda, accelerator.device)
    memory.limit_memory()  # cuda.memory_fraction: this process's share of its GPU
    set_seed(recipe.train.seed, device_specific=True)  # augmentation differs per process
    log = RunLog(run_dir, accelerator.is_main_process, accelerator)
    if recipe.train.batch_size == "auto":  # probe the largest micro-batch that fits; accumulation makes up the rest
        probe_normalize = Normalize(detector.image_mean, detector.image_std, accelerator.device)
        recipe = resolve_auto_batch(recipe, detector, data.train, accelerator,
                                    lambda batch: model_inputs(batch, probe_normalize, detector.uses_pixel_mask), log)
        accelerator.gradient_accumulation_steps = recipe.train.gradient_accumulation_steps
        phases = plan(recipe)  # the one phase takes the probed micro-batch and accumulation
    if accelerator.is_main_process:
        save_recipe(recipe, run_dir / "recipe.yaml")
    if accelerator.log_with:
        accelerator.init_trackers("hftrain")

    per_device = phases[0].batch_size
    accelerator.gradient_accumulation_steps = phases[0].accumulation
    train_loader = make_train_loader(data, per_device, recipe, detector)
    val_loader = make_loader(data.val, recipe.eval.batch_size or per_device, recipe.data, shuffle=False,
                             normalize_by_canvas=not detector.uses_pixel_mask, seed=recipe.train.seed,
                             pad_to_multiple=detector.pad_to_multiple)
    model = detector.model
    optimizer = build_optimizer(model, detector.backbone_prefixes, recipe.optim)
    model, optimizer, train_loader, val_loader = accelerator.prepare(model, optimizer, train_loader, val_loader)
    accum = phases[0].accumulation
    steps_per_epoch = math.ceil(len(train_loader) / accum)
    total_steps = sum(phase_steps(phase, len(train_loader), per_device, data, recipe, detector, accelerator.num_processes)
                      * (phase.last_epoch - phase.first_epoch + 1) for phase in phases)
    scheduler = build_scheduler(optimizer, recipe.schedule, recipe.optim.lr, total_steps, steps_per_epoch)
    health = Health(
        batching=MicroBatching(train_loader, per_device, accum,
                               lambda size: accelerator.prepare(make_train_loader(data, size, recipe, detector)),
                               accelerator, recipe, log),
        guard=NonFiniteGuard(recipe.guard, run_dir, log, count_gradients=accelerator.mixed_precision != "fp16"),
        stats=LossStats(recipe.log.loss_window),
        memory=memory,
    )
    health.guard.remember_schedule(scheduler)
    health.guard.protect_loss(accelerator.unwrap_model(model))  # NaN predictions reach the guard, not a crash in the matcher
    if recipe.debug:  # debug: batch histograms, gradient and update checks, NaN/Inf hooks, warm-up lr
        health.debug = DebugMonitor(accelerator.unwrap_model(model), data.class_names, recipe.debug_batches,
                                    recipe.schedule.warmup_steps, log, run_dir, accelerator.process_index)
        health.guard.hooks = health.debug.hooks
    normalize = Normalize(detector.image_mean, detector.image_std, accelerator.device)
    evaluator = CocoEvaluator(data.val.rows, data.class_names, recipe.eval.backend) if accelerator.is_main_process else None
    voc_evaluator = VocEvaluator(data.val.rows, data.class_names) if recipe.eval.voc and accelerator.is_main_process else None

    state = LoopState(epoch_batches=len(train_loader))
    if recipe.ema.enabled:  # ema: an averaged copy of the weights, on the device, updated after each optimizer step
        state.ema = ModelEma(model, recipe.ema.decay, recipe.ema.warmup_updates, accelerator)
    export = state.ema.as_detector(detector) if state.ema else detector  # ema: best/ and model/ save the average
    start_epoch = 1
    if resume:
        source = checkpoints.resolve_resume(run_dir, resume)
        saved = checkpoints.load_checkpoint(accelerator, source, scheduler, state.ema)
        has_ema = (source / checkpoints.EMA_FILE).is_file()
        if state.ema and not has_ema:
            log.print(f"{source} holds no EMA (saved with ema.enabled false): the average starts from its weights")
        elif has_ema and not state.ema:
            log.print(f"{source} holds an EMA of the weights; it is not used (ema.enabled false)")
        state.step, state.save_count, state.best = saved["step"], saved["save_count"], saved["best"]
        start_epoch = saved["epoch"] + 1 if saved["epoch_complete"] else saved["epoch"]
        state.batches_done = 0 if saved["epoch_complete"] else saved["batches_done"]
        if accelerator.is_main_process:
            log.truncate_after(state.step)  # drop what the interrupted run logged after this checkpoint
        log.print(f"resumed from {source} (epoch {saved['epoch']}, step {saved['step']}, "
                  f"{saved['batches_done']} batches into the epoch)")

    processes = accelerator.num_processes
    log.header([
        ("output dir", str(run_dir)),
        ("device", f"{accelerator.device} x {processes} process(es) ({accelerator.distributed_type.value})"),
        ("model", f"{recipe.model.name} ({'pretrained ' + recipe.model.pretrained if recipe.model.pretrained else 'from scratch'}), "
                  f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters"),
        ("data", f"{len(data.train)} train / {len(data.val)} val images, {len(data.class_names)} classes"),
        ("batch per device", str(per_device)),
        ("workers", f"{recipe.data.num_workers} (torch threads per process: {torch.get_num_threads()})"),
        ("image size", f"min={recipe.data.min_size}, max={recipe.data.max_size}"),
        ("grad accumulation", f"{accum} steps"),
        *([("phases", "; ".join(phase.describe() for phase in phases))] if recipe.phases else []),
        ("effective batch", f"{per_device * accum * processes} (= {per_device} x {accum} x {processes})"),
        ("clipping", f"clip_max_norm={recipe.train.clip_max_norm}" if recipe.train.clip_max_norm else "off"),
        ("ema", state.ema.describe() if state.ema else "off"),
        ("cuda memory", memory.describe(allocator)),
        ("precision", f"{accelerator.mixed_precision} (recipe: {recipe.precision.mode}); criterion "
                      f"{'fp32' if recipe.precision.fp32_criterion else 'autocast'}"),
        ("schedule", f"{recipe.schedule.name}, lr {recipe.optim.lr:g}, warmup {recipe.schedule.warmup_steps} steps, "
                     f"{total_steps} optimizer steps"),
    ])
    log.print(*data.notes)
    log.record("config", {"effective_batch": per_device * accum * processes, "num_processes": processes,
                          "precision": accelerator.mixed_precision}, state.step)
    pictures = RunPictures(run_dir, recipe.plots, log, accelerator, data.val, data.class_names)
    pictures.label_statistics(data.train)  # plots/label_stats.png, drawn in the background

    bad_limit = recipe.data.max_bad_fraction * len(data.train) / processes
    metrics: dict = {}
    epochs = recipe.train.epochs
    stop = StopSignal.install(log, run_dir)
    if recipe.guard.nonfinite == "rollback" and not checkpoints.complete_checkpoints(run_dir):
        state.batches_done = state.epoch_batches  # a good checkpoint to roll back to before the first epoch's
        save_checkpoint(accelerator, recipe, scheduler, state, epoch_complete=True)
        state.batches_done = 0
    epoch = start_epoch
    phase, wrapped_trainable = None, trainable_by_design  # DDP registered the parameters trainable when it wrapped the model
    while epoch <= epochs:
        state.epoch = epoch
        if phase is not phase_at(phases, epoch):  # phases: freeze, batch size and lr change here (or on a resume)
            phase = phase_at(phases, epoch)
            model, wrapped_trainable = enter_phase(phase, model, wrapped_trainable, trainable_by_design, accelerator, optimizer,
                                                   scheduler, health, recipe, log, state)
        train_loader = health.batching.loader  # out-of-memory recovery may have rebuilt it with a smaller micro-batch
        train_loader.set_epoch(epoch)
        state.epoch_batches = len(train_loader)  # repeat-factor epochs may differ in length
        epoch_loader = train_loader
        if state.batches_done:  # resumed mid-epoch: the same order, without the batches already seen
            epoch_loader = accelerator.skip_first_batches(train_loader, state.batches_done)
        ended = train_one_epoch(model, epoch_loader, optimizer, scheduler, accelerator, detector, normalize,
                                recipe, state, log, bad_limit, stop, health)
        if ended == "rollback":  # guard.nonfinite: rollback reloaded the last good checkpoint: go on from there
            epoch = state.epoch
            continue
        if ended == "stopped":
            stop.report(state)
            accelerator.end_training()
            return stop.exit_code if exit_code else metrics
        state.batches_done = 0
        last = epoch == epochs or ended == "max_steps"
        if (recipe.eval.during_training and epoch % recipe.eval.interval == 0) or last:
            metrics = evaluate(state.ema.module if state.ema else model,  # ema: the averaged weights are evaluated
                               val_loader, accelerator, detector, normalize, evaluator, recipe.eval.max_detections,
                               voc_evaluator)
            log.record("eval", {"epoch": epoch, **metrics}, state.step)
            log.metrics_table(f"epoch {epoch} validation", metrics)
            log.print(f"epoch {epoch} {recipe.checkpoint.best_metric} (headline): "
                      f"{metrics.get(recipe.checkpoint.best_metric, float('nan')):.4f}")
            pictures.after_eval(epoch, state.step, evaluator)  # results.csv, plots/, prediction grid (background)
            if recipe.eval.voc:
                log.print(f"VOC AP@0.5: VOC07 11-point mAP {metrics['voc07_map']:.4f}, all-point mAP {metrics['voc_map']:.4f}")
            state.best = update_best(state.best, metrics, recipe, export, accelerator, run_dir, epoch, log)
        every = recipe.checkpoint.every_steps
        if epoch % recipe.checkpoint.interval == 0 or last or (every and state.step % every == 0):
            state.batches_done = state.epoch_batches
            save_checkpoint(accelerator, recipe, scheduler, state, epoch_complete=True)
            state.batches_done = 0
        if last:
            break
        epoch += 1

    if health.guard.summary():  # non-finite steps: where the report is
        log.print(health.guard.summary())
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        checkpoints.save_pretrained_dir(export, run_dir / "model", {"epoch": state.epoch, "metrics": metrics})
        log.print(f"saved {run_dir / 'model'} (load with AutoModelForObjectDetection.from_pretrained)")
    pictures.close()  # wait for the queued pictures
    accelerator.end_training()
    return 0 if exit_code else metrics


def phase_steps(phase: Phase, prepared_batches: int, prepared_size: int, data, recipe: Recipe, detector,
                processes: int) -> int:
    """Optimizer steps in one epoch of ``phase`` on this process (for the learning-rate schedule)."""
    batches = prepared_batches
    if phase.batch_size != prepared_size:  # each process gets its share of the phase's batches
        batches = math.ceil(len(make_train_loader(data, phase.batch_size, recipe, detector)) / processes)
    return math.ceil(batches / phase.accumulation)


def make_train_loader(data, batch_size: int, recipe: Recipe, detector):
    """The training dataloader: seeded random batches, or the batch sampler of ``data.sampler`` /
    ``data.group_by_aspect_ratio`` (class-balanced repeat factors, aspect-ratio groups)."""
    batch_sampler = None
    if recipe.data.sampler != "random" or recipe.data.group_by_aspect_ratio:
        batch_sampler = samplers.train_batch_sampler(
            recipe.data, samplers.image_classes(data.train.rows), samplers.image_sizes(data.train.rows),
            len(data.class_names), batch_size, recipe.train.seed)
    return make_loader(data.train, batch_size, recipe.data, shuffle=True,
                       normalize_by_canvas=not detector.uses_pixel_mask, seed=recipe.train.seed,
                       pad_to_multiple=detector.pad_to_multiple, batch_sampler=batch_sampler)


def update_best(best, metrics, recipe, detector, accelerator, run_dir, epoch, log):
    """Keep ``best/`` at the epoch with the best ``checkpoint.best_metric``."""
    key = recipe.checkpoint.best_metric
    if key not in metrics:
        raise KeyError(f"checkpoint.best_metric: {key!r} is not an evaluation metric ({sorted(metrics)})")
    value = metrics[key]
    better = best is None or (value > best if recipe.checkpoint.best_mode == "max" else value < best)
    if better and accelerator.is_main_process:
        checkpoints.save_pretrained_dir(detector, run_dir / "best", {"epoch": epoch, key: value, "metrics": metrics})
        log.print(f"new best {key} {value:.4f} at epoch {epoch}: {run_dir / 'best'}")
    accelerator.wait_for_everyone()
    return value if better else best


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="hftrain train", description="Train a detector from a recipe.")
    parser.add_argument("recipe", help="recipe YAML file")
    parser.add_argument("overrides", nargs="*",
                        help="dotted key=value overrides, e.g. optim.lr=5e-5, or @FILE.yaml holding such keys (a profile)")
    parser.add_argument("--debug", action="store_true",
                        help="debug mode (the recipe's debug: true): batch class mix, gradient and update checks, NaN hooks")
    parser.add_argument("--dry-run", action="store_true",
                        help="run the recipe's path with a tiny random model of its family on a few generated images "
                             "in its data format: two optimizer steps, evaluation, checkpoints (hftrain.dry_run)")
    parser.add_argument("--print", action="store_true", dest="print_recipe",
                        help="print the resolved recipe (base, overrides, defaults) and exit")
    parser.add_argument("--overwrite", action="store_true",
                        help="delete an earlier run in output_dir and start afresh")
    parser.add_argument("--resume", nargs="?", const=True, default=None,
                        help="resume from the run's latest checkpoint, or from the given checkpoint directory")
    args = parser.parse_intermixed_args(argv)  # overrides may come before or after the options
    if isinstance(args.resume, str) and "=" in args.resume and not Path(args.resume).exists():
        args.overrides.append(args.resume)  # `--resume key=value`: the value was an override
        args.resume = True
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    overrides = args.overrides + (["debug=true"] if args.debug else [])
    if args.print_recipe or args.dry_run:
        from hftrain import dry_run

        try:
            if args.print_recipe:
                return dry_run.print_recipe(args.recipe, overrides)
            dry_run.dry_run(args.recipe, overrides)
            return 0
        except RecipeError as err:
            print(err, file=sys.stderr)
            return 2
    try:
        recipe = load_recipe(args.recipe, overrides)
    except RecipeError as err:
        print(err, file=sys.stderr)
        return 2
    try:
        return train(recipe, resume=args.resume, exit_code=True, overwrite=args.overwrite)
    except RecipeError as err:  # problems found once the model exists (phases' freeze patterns)
        print(err, file=sys.stderr)
        return 2
    except RunDirInUse as err:
        print(f"hftrain train: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
