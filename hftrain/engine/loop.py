"""The training loop: one epoch (:func:`train_one_epoch`) and one micro-batch (:func:`train_step`).

Reads like DETR's ``engine.py``: the epoch iterates batches, the step does forward, backward,
clipping and the optimizer step inside ``accelerator.accumulate``. Every feature is an ``if`` at
the place it acts: the non-finite guard, out-of-memory recovery, stop signals, checkpoints every N
steps, the debug monitor. Every number counted goes to the run's :class:`~hftrain.engine.meter.Meter`.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from hftrain.data.collate import unpack_labels
from hftrain.engine import checkpoints
from hftrain.engine.meter import Meter
from hftrain.engine.optim import set_peak_lr
from hftrain.engine.phases import frozen_norms_to_eval, peak_scale
from hftrain.engine.state import Outcome, Run
from hftrain.health import faults
from hftrain.health.guard import NonFiniteAbort, Reading
from hftrain.health.memory_view import MemoryView
from hftrain.models.inputs import model_inputs


class TooManyBadImages(RuntimeError):
    """More images failed to decode (or did not match their annotated size) during training than
    ``data.max_bad_fraction`` allows."""


@dataclass
class Step:
    """What one micro-batch did. It holds no model outputs: their activations are freed before the
    next micro-batch's forward."""

    synced: bool  # this micro-batch ended an optimizer step
    reading: Reading | None = None  # synced: verdict, grad norm, losses, stop signal (the step's one host transfer)
    overflow: bool = False  # fp16: the grad scaler skipped this step's update (inf/NaN gradients)
    terms: dict = field(default_factory=dict)  # the loss terms, detached (read only at log time)


def train_one_epoch(run: Run, loader) -> Outcome:
    """One pass over ``loader`` (which may start mid-epoch after a resume)."""
    state, log, health, meter = run.state, run.log, run.health, run.meter
    run.model.train()
    frozen_norms_to_eval(run.model)  # phases: BatchNorm layers of frozen modules keep their running statistics
    trainable = [p for p in run.model.parameters() if p.requires_grad]  # clipping reads this list every step
    if state.batches_done == 0:  # data.max_bad_fraction is per epoch (a resume inside the epoch keeps its count)
        state.bad_images = 0
    meter.start_epoch()
    log.start_epoch(state.epoch, len(loader))
    tick = time.perf_counter()
    for batch in health.batching.batches(loader, state):  # follows the rebuilt loader after an out-of-memory error
        t_load = time.perf_counter() - tick
        state.batches_done += 1
        count_bad_images(run, batch["skipped"])
        if health.debug:  # debug: the class mix of the first batches
            health.debug.before_forward(batch, state.epoch)
        if health.view:  # memory: the epoch's largest canvas (the creep warning compares like with like)
            health.view.after_batch(batch["pixel_values"])
        lr = max(group["lr"] for group in run.optimizer.param_groups)  # the rate this step uses
        step = train_step(run, batch, trainable)
        if step is None:  # out of memory: the micro-batch was halved; redo this optimizer step
            tick = time.perf_counter()
            continue
        meter.add_micro(t_load, time.perf_counter() - tick - t_load, batch["images"],
                        batch.get("boxes_dropped", 0))  # data.augment: mosaic boxes cut too small to keep
        if step.synced:  # the losses were read with the step's other figures (no host wait per micro-batch)
            meter.end_step(step.reading.losses, step.reading.grad_norm, clipped(run, step), step.overflow)
        log.advance(meter.last_loss, meter.epoch_mean, lr)
        if health.memory and health.memory.empty_cache_due(state.batches_done):  # cuda.empty_cache_every
            torch.cuda.empty_cache()
            if health.view:
                health.view.after_empty_cache()
        if step.synced and (outcome := after_optimizer_step(run, step, lr)):
            return outcome
        tick = time.perf_counter()
    log.end_epoch()
    epoch_stats = meter.epoch_summary()  # loss variance and trend over the whole epoch
    epoch_stats["bad_images_epoch"] = bad_images_all(run)  # images that failed to decode (replaced), all processes
    log.record("epoch", {"epoch": state.epoch, **epoch_stats}, state.step)
    log.print(f"epoch {state.epoch} summary: loss mean {epoch_stats['loss_mean_epoch']:.4f} | "
              f"{Meter.line(epoch_stats, 'epoch')}"
              + (f" | {epoch_stats['bad_images_epoch']} image(s) replaced (failed to decode or not of their annotated size)" if epoch_stats["bad_images_epoch"] else ""))
    if health.view:  # memory: the epoch's peak against the previous epochs of the same shapes (a leak signal)
        phase = run.phase.index if run.phase is not None else 0
        if creep := health.view.end_epoch(state.epoch, phase, health.batching.batch_size, run.accelerator.device):
            log.record("memory_creep", creep, state.step)
    return Outcome.EPOCH


def train_step(run: Run, batch: dict, trainable: list) -> Step | None:
    """Forward and backward of one micro-batch; at the end of an accumulation window also clipping,
    the guard's verdict (the step's one host transfer), the optimizer and scheduler steps and the EMA
    update. Returns None after an out-of-memory error (the training loader was rebuilt with a smaller
    micro-batch)."""
    accelerator, optimizer, health = run.accelerator, run.optimizer, run.health
    clip = run.recipe.train.clip_max_norm
    reading, overflow = None, False
    try:
        with accelerator.accumulate(run.model):
            synced = accelerator.sync_gradients
            outputs = run.model(**model_inputs(batch, run.normalize, run.detector.uses_pixel_mask),
                                labels=unpack_labels(batch))
            health.guard.observe(outputs)  # NaN/Inf in the loss and its terms (flags only, no sync)
            accelerator.backward(outputs.loss)
            run.meter.add_loss(outputs.loss.detach())  # read at the step's end with the guard's flags: no wait here
            terms = {k: v.detach() if torch.is_tensor(v) else v for k, v in (outputs.loss_dict or {}).items()}
            del outputs  # its activations must not live through the next micro-batch's forward (peak memory)
            if synced:
                if health.debug:  # debug: which trainable parameters got a gradient
                    health.debug.after_backward(run.state.step + 1)
                grad_norm = accelerator.clip_grad_norm_(trainable, clip if clip else math.inf)
                reading = health.guard.verdict(grad_norm, run.state, accelerator,  # ok | skip | rollback (abort raises)
                                               run.meter.take_losses(), stop=health.stop.seen)
            verdict = reading.verdict if synced else "ok"
            if verdict == "ok":  # guard: a non-finite step gets no update
                optimizer.step()
                overflow = synced and accelerator.optimizer_step_was_skipped  # fp16: read after this step's own update
            elif accelerator.scaler is not None:  # fp16: unscale_ ran in clipping; close the scaler's step
                accelerator.scaler.update()
            if health.debug and synced:  # debug: which parameters the step changed
                health.debug.after_step(run.state.step + 1, updated=verdict == "ok" and not overflow)
            if synced and not overflow:  # a guard skip uses up its slot in the schedule; an fp16 overflow does not
                run.scheduler.step()
            if run.state.ema and synced and verdict == "ok" and not overflow:
                run.state.ema.update()  # ema: average in the weights this optimizer step produced
            optimizer.zero_grad(set_to_none=True)
    except torch.OutOfMemoryError as err:  # halve the micro-batch, double accumulation, redo this optimizer step
        run.meter.drop_losses()
        health.batching.recover(err, optimizer, run.state)
        return None
    return Step(synced, reading, overflow, terms)


def clipped(run: Run, step: Step) -> bool:
    """Clipping cut this optimizer step's gradients (an fp16 overflow step is not clipped: it made no update)."""
    clip = run.recipe.train.clip_max_norm
    return clip is not None and not step.overflow and step.reading.grad_norm > clip


def after_optimizer_step(run: Run, step: Step, lr: float) -> Outcome | None:
    """Count the optimizer step, log it, and act on what ends the epoch early."""
    state, log, recipe, accelerator = run.state, run.log, run.recipe, run.accelerator
    state.step += 1
    if run.health.debug:  # debug: the learning rate of every warm-up step
        run.health.debug.after_optimizer_step(state.step, lr)
    record = {"epoch": state.epoch, "loss": run.meter.last_loss, "grad_norm": step.reading.grad_norm, "lr": lr}
    if step.overflow:  # fp16: the scaler skipped the update; the norm is inf by definition, not a measurement
        record.update(grad_norm=None, overflow=True)
    log.record("step", record, state.step)
    if step.reading.verdict == "rollback":  # guard.nonfinite: rollback: reload the last good checkpoint, lower the lr
        log.end_epoch()
        roll_back(run)
        return Outcome.ROLLBACK
    if state.step % recipe.log.interval == 0:
        log_window(run, step.terms, lr)
    faults.fail_at_step(state.step, accelerator.process_index)
    every = recipe.checkpoint.every_steps
    if every and state.step % every == 0 and state.batches_done < state.epoch_batches:
        save_checkpoint(run)
    if step.reading.stop:  # SIGTERM/SIGINT on any process (agreed in the guard's reduce)
        log.end_epoch()
        save_checkpoint(run)
        return Outcome.STOPPED
    if recipe.train.max_steps is not None and state.step >= recipe.train.max_steps:
        log.end_epoch()
        return Outcome.MAX_STEPS
    return None


def count_bad_images(run: Run, skipped: int) -> None:
    """Images that failed to decode were replaced in their batch; too many in one epoch stop the run."""
    run.state.bad_images += skipped
    if run.state.bad_images > run.bad_limit:
        raise TooManyBadImages(
            f"{run.state.bad_images} images failed to decode or did not match their annotated size on this "
            f"process in epoch {run.state.epoch} (limit {run.bad_limit:.1f} per epoch, "
            f"data.max_bad_fraction={run.recipe.data.max_bad_fraction}); run `hftrain scan` and set data.blacklist"
        )


def bad_images_all(run: Run) -> int:
    """This epoch's decode failures, summed over processes."""
    count = torch.tensor(float(run.state.bad_images), device=run.accelerator.device)
    return int(run.accelerator.reduce(count, "sum").item())


def save_checkpoint(run: Run, epoch_complete: bool = False) -> None:
    """A full checkpoint at the current optimizer step (every process calls this). At an epoch's end
    (``epoch_complete``) the position is the whole epoch, so a resume starts the next one."""
    state = run.state
    position = state.batches_done
    if epoch_complete:
        state.batches_done = state.epoch_batches
    state.save_count += 1
    saved = state.saved(epoch_complete)
    saved["bad_images"] = run.accelerator.gather(  # each process's count in this epoch (a resume continues it)
        torch.tensor([state.bad_images], device=run.accelerator.device)).tolist()
    checkpoints.save_checkpoint(run.accelerator, Path(run.recipe.output_dir), run.scheduler, saved,
                                run.recipe.checkpoint.keep, ema=state.ema)
    state.batches_done = 0 if epoch_complete else position


def roll_back(run: Run) -> None:
    """guard.nonfinite: rollback: reload the newest complete checkpoint (the EMA too) and go on from there."""
    found = checkpoints.complete_checkpoints(Path(run.recipe.output_dir))
    if not found:
        raise NonFiniteAbort("guard.nonfinite: rollback: no checkpoint to roll back to")
    saved = checkpoints.load_checkpoint(run.accelerator, found[-1], run.scheduler, run.state.ema)
    run.state.resume_at(saved, rollback=True)
    run.health.guard.rolled_back(found[-1], saved["step"], run.state, run.optimizer, run.log)  # lr_scale *= lr_factor
    set_peak_lr(run.scheduler, peak_scale(run))  # the phase's peak, lowered (a rollback into another phase re-enters it)


def log_window(run: Run, terms: dict, lr: float) -> None:
    """Every ``log.interval`` steps: mean loss (over processes) and the last micro-batch's loss terms, timing shares."""
    accelerator, state, sums = run.accelerator, run.state, run.meter.take_window()
    n = max(1, sums["micro"])
    loss = accelerator.reduce(torch.tensor(sums["loss"] / n, device=accelerator.device), "mean").item()
    names = [k if k.startswith("loss") else f"loss_{k}" for k in terms]
    values = [v.float().reshape(()) if torch.is_tensor(v) else torch.tensor(float(v)) for v in terms.values()]
    terms = dict(zip(names, torch.stack([v.to(accelerator.device) for v in values]).tolist())) if values else {}
    t_load, t_step = sums["t_load"] / n, sums["t_step"] / n
    total = max(t_load + t_step, 1e-12)
    dropped = accelerator.reduce(torch.tensor(float(sums["boxes_dropped"]), device=accelerator.device), "sum")
    values = {
        "epoch": state.epoch, "loss": loss, "lr": lr, **terms,
        "t_load": t_load, "t_step": t_step, "t_load_share": t_load / total, "t_step_share": t_step / total,
        "clipped_fraction": sums["clipped"] / max(1, sums["syncs"]), "overflow_steps": sums["overflow"],
        "images_per_second": sums["images"] * accelerator.num_processes / max(sums["t_load"] + sums["t_step"], 1e-12),
        "boxes_dropped": int(dropped.item()),
    }
    summary = run.meter.window_summary()  # loss variance, trend, clipped fraction, pre-clip grad norm
    values.update(summary)
    memory = run.health.view.window(accelerator.device) if run.health.view else {}  # maximum over processes
    values.update(memory)
    run.log.record("train", values, state.step)
    run.log.print(
        f"epoch {state.epoch} step {state.step} loss {loss:.4f} lr {lr:.2e} | {Meter.line(summary, 'window')} | "
        f"t_load {t_load:.3f}s ({100 * t_load / total:.1f}%) | t_step {t_step:.3f}s ({100 * t_step / total:.1f}%)"
        + (f" | {MemoryView.line(memory)}" if memory else "")
    )
    if memory:
        run.log.set_memory(MemoryView.bar_text(memory))
