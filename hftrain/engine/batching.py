"""The training dataloader with its micro-batch and gradient accumulation, which change at a
phase boundary (:meth:`MicroBatching.resize`) and on an out-of-memory error
(:meth:`MicroBatching.recover`; the policy is described in :mod:`hftrain.health.oom`)."""

from __future__ import annotations

import contextlib
from dataclasses import replace
from pathlib import Path

from hftrain.engine.accelerate_private import forget_dataloader, restart_accumulation
from hftrain.health.oom import free_memory, smaller_micro_batch


class MicroBatching:
    """The training dataloader with its micro-batch and accumulation, which OOM recovery may change.

    ``rebuild(batch_size)`` returns a new prepared training dataloader. The loop iterates
    :meth:`batches`, which follows a rebuilt loader from the interrupted step's first sample.
    """

    def __init__(self, loader, batch_size: int, accum: int, rebuild, accelerator, recipe, log):
        self.loader = loader
        self.batch_size = batch_size
        self.accum = accum
        self.rebuild = rebuild
        self.accelerator = accelerator
        self.recipe = recipe
        self.log = log
        self.switched = False
        self.window = 0  # micro-batches yielded since the last optimizer step

    def batches(self, first, state):
        """Yield micro-batches from ``first``; after :meth:`recover`, from the rebuilt loader."""
        source = first
        while True:
            self.switched = False
            self.window = 0
            for batch in source:
                self.window += 1
                yield batch
                if self.switched:
                    break
                if self.accelerator.sync_gradients:
                    self.window = 0
            else:
                return
            with contextlib.suppress(Exception):
                source.end()  # the abandoned loader leaves Accelerate's gradient state
            source = self.loader
            if state.batches_done:
                source = self.accelerator.skip_first_batches(self.loader, state.batches_done)

    def resize(self, batch_size: int, accum: int) -> None:
        """A new phase: rebuild the training loader for ``batch_size`` micro-batches of ``accum`` steps."""
        self.accelerator.gradient_accumulation_steps = accum
        if batch_size == self.batch_size and accum == self.accum:
            return
        old_loader, old_size = self.loader, self.batch_size
        self.batch_size, self.accum = batch_size, accum
        if batch_size != old_size:
            self.loader = self.rebuild(batch_size)
            forget_dataloader(self.accelerator, old_loader)  # save_state would otherwise save both

    def recover(self, err: BaseException, optimizer, state) -> None:
        """Halve the micro-batch, double accumulation, and position the data at the interrupted step."""
        if self.accelerator.num_processes > 1:
            raise RuntimeError(
                f"out of memory on process {self.accelerator.process_index} with a micro-batch of {self.batch_size}; "
                "with several processes the run cannot shrink it on the fly: set train.batch_size: auto "
                "(with train.effective_batch) or a smaller train.batch_size with more gradient_accumulation_steps"
            ) from err
        smaller = smaller_micro_batch(self.batch_size)
        if smaller == 0:
            raise RuntimeError("out of memory with a micro-batch of 1 image: lower data.max_size / data.min_size, "
                               "use a smaller model or mixed precision") from err
        optimizer.zero_grad(set_to_none=True)
        free_memory()
        factor = self.batch_size // smaller
        step_start = state.batches_done - self.window  # micro-batches of this epoch's completed steps
        old = (self.batch_size, self.accum)
        self.batch_size, self.accum = smaller, self.accum * factor
        old_loader = self.loader
        self.loader = self.rebuild(smaller)
        forget_dataloader(self.accelerator, old_loader)  # save_state would otherwise save both
        self.loader.set_epoch(state.epoch)
        state.batches_done = step_start * factor
        state.epoch_batches = len(self.loader)
        self.accelerator.gradient_accumulation_steps = self.accum
        restart_accumulation(self.accelerator)
        self.switched = True
        self.recipe = replace(self.recipe, train=replace(self.recipe.train, batch_size=self.batch_size,
                                                         gradient_accumulation_steps=self.accum))
        self.log.print(
            f"[oom] out of memory at step {state.step + 1} ({str(err).splitlines()[0][:160]}); micro-batch "
            f"{old[0]} -> {self.batch_size}, gradient accumulation {old[1]} -> {self.accum} (effective batch "
            f"unchanged); redoing the step; kept for the rest of the run and written to recipe.yaml")
        self.log.record("oom", {"batch_size": self.batch_size, "gradient_accumulation_steps": self.accum,
                                "previous_batch_size": old[0], "previous_accumulation": old[1]}, state.step)
        if self.accelerator.is_main_process:
            from hftrain.recipe import save_recipe

            save_recipe(self.recipe, Path(self.recipe.output_dir) / "recipe.yaml")
