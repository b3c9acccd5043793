"""What a run carries from step to step: the loop position (:class:`LoopState`), why an epoch
ended (:class:`Outcome`), the health features the loop consults (:class:`Health`) and the one typed
run context (:class:`Run`) that the loop's functions take instead of a dozen parameters."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from hftrain.engine.batching import MicroBatching
from hftrain.engine.ema import ModelEma
from hftrain.engine.meter import Meter
from hftrain.health.cuda_memory import CudaMemory
from hftrain.health.debug import DebugMonitor
from hftrain.health.guard import NonFiniteGuard
from hftrain.health.memory_view import MemoryView
from hftrain.health.preemption import StopSignal


class Outcome(Enum):
    """Why :func:`hftrain.engine.loop.train_one_epoch` returned."""

    EPOCH = "epoch"  # the data ran out
    MAX_STEPS = "max_steps"  # train.max_steps reached
    STOPPED = "stopped"  # SIGTERM/SIGINT: a checkpoint was saved
    ROLLBACK = "rollback"  # the non-finite guard reloaded an earlier checkpoint; LoopState says where to go on


@dataclass
class LoopState:
    epoch: int = 0
    step: int = 0  # optimizer steps done
    batches_done: int = 0  # micro-batches consumed in this epoch (the dataloader position)
    epoch_batches: int = 0  # micro-batches in a whole epoch on this process
    bad_images: int = 0  # images of this epoch that failed to decode on this process (data.max_bad_fraction)
    save_count: int = 0
    best: float | None = None  # best value of checkpoint.best_metric so far
    early_reference: float | None = None  # train.early_stop: checkpoint.best_metric at the last improvement
    evals_without_improvement: int = 0  # train.early_stop: evaluations in a row since then
    ema: ModelEma | None = None  # ema.enabled: the weights' moving average (checkpoints hold it as ema.pt)
    lr_scale: float = 1.0  # guard.nonfinite: rollback: product of the rollbacks' lr_factor (times every phase's peak)
    rollbacks: int = 0  # rollbacks so far (guard.max_rollbacks)
    process_index: int = 0  # this process, of num_processes (each counts its own bad images)
    num_processes: int = 1
    seconds_before: float = 0.0  # training wall-clock seconds of the sessions before a resume (trainer_state.json)
    session_start: float = field(default_factory=time.monotonic)

    def train_seconds(self) -> float:
        """Wall-clock seconds this run has trained: this session's so far plus the earlier sessions' up to the
        checkpoint a resume started from (the model card's training time)."""
        return self.seconds_before + time.monotonic() - self.session_start

    def saved(self, epoch_complete: bool) -> dict:
        """What trainer_state.json holds. Saves inside the epoch are never "complete", even after its
        last batch: a resumed run then still does the epoch's end (evaluation, best/, checkpoint)."""
        return {"epoch": self.epoch, "step": self.step, "batches_done": self.batches_done,
                "epoch_complete": epoch_complete, "save_count": self.save_count, "best": self.best,
                "lr_scale": self.lr_scale, "rollbacks": self.rollbacks, "early_reference": self.early_reference,
                "evals_without_improvement": self.evals_without_improvement,
                "train_seconds": round(self.train_seconds(), 3)}

    def resume_at(self, saved: dict, rollback: bool = False) -> None:
        """Position the loop where a checkpoint's trainer_state.json says (a resume or a rollback):
        after a complete epoch the next one starts; inside an epoch, the same epoch at its batch,
        with the bad images its processes had counted so far (``bad_images``, one per process; a
        resume on another number of processes shares their sum). A resume also takes the guard's
        lr scale and rollback count, and early stopping's count; a ``rollback`` keeps the run's own (the
        guard then lowers the lr scale; like ``best``, the count spans the rolled-back steps)."""
        if not rollback:
            self.lr_scale, self.rollbacks = saved.get("lr_scale", 1.0), saved.get("rollbacks", 0)
            self.early_reference = saved.get("early_reference")
            self.evals_without_improvement = saved.get("evals_without_improvement", 0)
            self.seconds_before = saved.get("train_seconds", 0.0)
        self.step = saved["step"]
        self.epoch = saved["epoch"] + 1 if saved["epoch_complete"] else saved["epoch"]
        self.batches_done = 0 if saved["epoch_complete"] else saved["batches_done"]
        counts = [] if saved["epoch_complete"] else saved.get("bad_images", [])
        if len(counts) == self.num_processes:
            self.bad_images = counts[self.process_index]
        else:
            self.bad_images = -(-sum(counts) // self.num_processes)


@dataclass
class Health:
    """What the loop consults to survive what it can and to say why a run is unhealthy."""

    batching: MicroBatching  # the training loader; out-of-memory recovery halves its micro-batch
    guard: NonFiniteGuard  # guard.nonfinite: skip | rollback | abort
    stop: StopSignal  # SIGTERM/SIGINT: checkpoint and leave
    debug: DebugMonitor | None = None  # debug: true
    memory: CudaMemory | None = None  # cuda: empty_cache every cuda.empty_cache_every micro-batches
    view: MemoryView | None = None  # GPU and host memory figures on log lines, the creep warning


@dataclass
class Run:
    """One training run's parts, built once by :func:`hftrain.train.train`."""

    recipe: Any  # hftrain.recipe.Recipe
    accelerator: Any  # accelerate.Accelerator
    detector: Any  # hftrain.models.detector.Detector (the unwrapped model, its processor and needs)
    model: Any  # the prepared (maybe DDP-wrapped) model; a phase change may wrap it again
    optimizer: Any
    scheduler: Any
    normalize: Any  # hftrain.models.inputs.Normalize: uint8 pixels -> model input, on the device
    log: Any  # hftrain.report.runlog.RunLog
    health: Health
    meter: Meter
    state: LoopState = field(default_factory=LoopState)
    bad_limit: float = float("inf")  # decode failures this process may replace (data.max_bad_fraction)
    trainable_by_design: set = field(default_factory=set)  # parameter names the model trains unless a phase freezes them
    wrapped_trainable: set = field(default_factory=set)  # the trainable set DDP registered when it wrapped the model
    phases: list = field(default_factory=list)  # hftrain.engine.phases.Phase: one, or the recipe's phases
    phase: Any = None  # the phase being trained (set by hftrain.engine.phases.enter_phase)
    val_loader: Any = None
    evaluator: Any = None  # hftrain.metrics.coco_eval.CocoEvaluator (main process only)
    voc_evaluator: Any = None  # eval.voc: hftrain.metrics.voc_eval.VocEvaluator (main process only)
    confusion: Any = None  # hftrain.metrics.confusion.ConfusionEvaluator: matrix, F1 curve, threshold (main process only)
    pictures: Any = None  # hftrain.report.pictures.RunPictures: plots and prediction grids after evaluations
    export: Any = None  # the detector best/ and model/ save: the EMA's weights with ema.enabled
