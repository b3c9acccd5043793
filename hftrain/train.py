"""Train a detector from a recipe: the entry and the run, in the role of DETR's ``main.py``.

    accelerate launch hftrain/train.py RECIPE.yaml [key=value ...] [--resume [CHECKPOINT]]

Reads top to bottom: recipe -> data -> model -> accelerator -> loaders, optimizer, prepare ->
epochs (:func:`hftrain.engine.loop.train_one_epoch`, evaluation, checkpoint) -> final model. Each
feature is an ``if`` where it acts.
"""

from __future__ import annotations

import argparse
import math
import shutil
import sys
import traceback
from pathlib import Path

if __package__ in (None, ""):  # run as a script: put the repository, not hftrain/, first on the path
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

import torch
from accelerate import PartialState
from accelerate.utils import set_seed
from transformers.utils import logging as hf_logging

from hftrain.data.loader import load_data, make_eval_loader, make_train_loader, materialise_synthetic
from hftrain.engine import checkpoints, early_stop, process_exit, publish, trackers
from hftrain.engine.accelerator import cpu_threads, make_accelerator, speed_settings, use_cpu
from hftrain.engine.batching import MicroBatching
from hftrain.engine.ema import ModelEma
from hftrain.engine.evaluation import evaluate_epoch
from hftrain.engine.header import header_rows
from hftrain.engine.loop import save_checkpoint, train_one_epoch
from hftrain.engine.meter import Meter
from hftrain.engine.optim import build_optimizer, build_scheduler
from hftrain.engine.phases import check_freeze_patterns, enter_phase, phase_at, phase_steps, plan
from hftrain.engine.state import Health, Outcome, Run
from hftrain.health.cuda_memory import CudaMemory, apply_allocator
from hftrain.health.debug import DebugMonitor, check_trainable
from hftrain.health import memory_view
from hftrain.health.guard import NonFiniteGuard
from hftrain.health.memory_view import MemoryView
from hftrain.health.oom import install_injection, resolve_auto_batch
from hftrain.health.preemption import StopSignal
from hftrain.metrics.coco_eval import CocoEvaluator
from hftrain.metrics.confusion import ConfusionEvaluator
from hftrain.metrics.voc_eval import VocEvaluator
from hftrain.models.inputs import Normalize, configure_processor, model_inputs
from hftrain.models.pretrained import PretrainedError
from hftrain.models.registry import build_model, check_model
from hftrain.recipe import Recipe, RecipeError, load_recipe, save_recipe
from hftrain.report.pictures import RunPictures
from hftrain.report.runlog import RunLog
from hftrain.tools import dry_run as dry


def train(recipe: Recipe, resume: str | bool | None = None, exit_code: bool = False,
          overwrite: bool = False) -> dict | int:
    """Run the recipe; returns the last evaluation's metrics (or, with ``exit_code``, the
    process exit code: 0, or 143/130 after a SIGTERM/SIGINT checkpoint)."""
    hf_logging.disable_progress_bar()
    allocator = apply_allocator(recipe.cuda, use_cuda=not use_cpu())  # cuda.alloc_conf: before CUDA initialises
    checkpoints.claim_run_dir(Path(recipe.output_dir), PartialState(cpu=use_cpu()), resume, overwrite)
    with PartialState().main_process_first():  # a checkpoint that cannot load fails before any data is read or scanned
        check_model(recipe.model)  # (downloaded once, by the main process)
    with PartialState().main_process_first():  # the demo data is generated once, by the main process
        data_cfg = materialise_synthetic(recipe.data)
    data = load_data(data_cfg, seed=recipe.train.seed)  # data first: cheap failures before the model
    torch.set_num_threads(cpu_threads(recipe.train.cpu_threads))
    set_seed(recipe.train.seed)  # the same initial weights on every process
    detector = build_model(recipe.model, data.class_names, fp32_criterion=recipe.precision.fp32_criterion)
    if data.category_ids is not None:  # the dataset's own category ids travel in config.json (hftrain predict)
        detector.model.config.hftrain_category_ids = data.category_ids
    check_trainable(detector.model, f"model {recipe.model.name}")  # a frozen-everything model could never learn
    if problems := check_freeze_patterns(detector.model, plan(recipe)):
        raise RecipeError(problems, "phases")
    install_injection(detector.model)  # HFTRAIN_TEST_OOM_ABOVE: tests provoke out-of-memory errors on a CPU
    configure_processor(detector, recipe.data)
    accelerator = make_accelerator(recipe, detector.find_unused_parameters)
    speed = speed_settings(recipe, accelerator.device)  # precision.tf32, cuda.cudnn_benchmark (CUDA only)
    memory = CudaMemory(recipe.cuda, accelerator.device)
    memory.limit_memory()  # cuda.memory_fraction: this process's share of its GPU
    set_seed(recipe.train.seed, device_specific=True)  # augmentation differs per process
    log = RunLog(Path(recipe.output_dir), accelerator.is_main_process, accelerator)
    if recipe.train.batch_size == "auto":  # probe the largest micro-batch that fits; accumulation makes up the rest
        probe = Normalize(detector.image_mean, detector.image_std, accelerator.device)
        recipe = resolve_auto_batch(recipe, detector, data.train, accelerator,
                                    lambda batch: model_inputs(batch, probe, detector.uses_pixel_mask), log,
                                    lambda model: build_optimizer(model, detector.backbone_prefixes, recipe.optim,
                                                                  accelerator.device.type))
    if accelerator.is_main_process:
        save_recipe(recipe, Path(recipe.output_dir) / "recipe.yaml")
    run, total_steps = build_run(recipe, data, detector, accelerator, log, memory)
    if accelerator.num_processes > 1:  # the run holds the process group: never freed, the process ends in main()
        process_exit.keep_until_exit(run)
    start_epoch = checkpoints.resume(run, resume) if resume else 1
    log.header(header_rows(run, data, memory.describe(allocator), total_steps)
               + [("memory", run.health.view.header(recipe.cuda.memory_fraction))] + speed)
    log.print(*data.notes)
    log.print(*detector.notes)
    trackers.start(accelerator, recipe, log, run.state.step if resume else None)  # log.trackers: continue a resumed run
    log.record("config", {"effective_batch": run.phases[0].batch_size * run.phases[0].accumulation
                          * accelerator.num_processes, "num_processes": accelerator.num_processes,
                          "precision": accelerator.mixed_precision}, run.state.step)
    run.pictures.label_statistics(data.train)  # plots/label_stats.png, drawn in the background
    run.pictures.train_batch(data, phase_at(run.phases, start_epoch).batch_size, recipe.data, recipe.train.seed,
                             detector, start_epoch)  # plots.train_batch: this epoch's first batches, from a loader of their own
    return fit(run, start_epoch, exit_code)


def build_run(recipe: Recipe, data, detector, accelerator, log: RunLog, memory: CudaMemory) -> tuple[Run, int]:
    """Loaders, optimizer, ``accelerator.prepare``, schedule and the health features; and the
    number of optimizer steps the schedule spans."""
    phases, seed = plan(recipe), recipe.train.seed
    per_device, accum = phases[0].batch_size, phases[0].accumulation
    accelerator.gradient_accumulation_steps = accum
    loader_of = lambda size: make_train_loader(data, size, recipe.data, seed, detector, accelerator.num_processes)  # noqa: E731
    train_loader = loader_of(per_device)
    val_loader = make_eval_loader(data.val, recipe.eval.batch_size or per_device, recipe.data, seed, detector)
    if recipe.cuda.channels_last:  # cuda.channels_last: 4-D weights in NHWC order (convolutions follow them)
        detector.model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(detector.model, detector.backbone_prefixes, recipe.optim, accelerator.device.type)
    model, optimizer, train_loader, val_loader = accelerator.prepare(detector.model, optimizer, train_loader, val_loader)
    count = lambda size: len(loader_of(size))  # noqa: E731
    total_steps = sum(phase_steps(phase, len(train_loader), per_device, accelerator.num_processes, count)
                      * (phase.last_epoch - phase.first_epoch + 1) for phase in phases)
    scheduler = build_scheduler(optimizer, recipe.schedule, recipe.optim.lr, total_steps,
                                math.ceil(len(train_loader) / accum))
    rebuild = lambda size: accelerator.prepare(loader_of(size))  # noqa: E731  (out-of-memory recovery, phases)
    run_dir, main = Path(recipe.output_dir), accelerator.is_main_process
    health = Health(batching=MicroBatching(train_loader, per_device, accum, rebuild, accelerator, recipe, log),
                    guard=NonFiniteGuard(recipe.guard, run_dir, log, count_gradients=accelerator.mixed_precision != "fp16"),
                    stop=StopSignal.install(log, run_dir), memory=memory)
    health.view = MemoryView(memory_view.counters_for(accelerator.device), data.ram_caches(), accelerator.gather, log,
                             memory_view.GpuUtilisation(accelerator.device, log))
    health.guard.protect_loss(detector.model)  # NaN predictions reach the guard, not a crash in the matcher
    if recipe.debug:  # debug: batch histograms, gradient and update checks, NaN/Inf hooks, warm-up lr
        health.debug = DebugMonitor(detector.model, data.class_names, recipe.debug_batches,
                                    recipe.schedule.warmup_steps, log, run_dir, accelerator.process_index)
        health.guard.hooks = health.debug.hooks
    trainable = {name for name, p in detector.model.named_parameters() if p.requires_grad}
    evaluator = CocoEvaluator(data.val.rows, data.class_names, recipe.eval.backend) if main else None
    run = Run(recipe, accelerator, detector, model, optimizer, scheduler,
              Normalize(detector.image_mean, detector.image_std, accelerator.device), log, health,
              Meter(recipe.log.loss_window), bad_limit=recipe.data.max_bad_fraction * len(data.train) / accelerator.num_processes,
              trainable_by_design=trainable, wrapped_trainable=trainable, phases=phases, val_loader=val_loader,
              evaluator=evaluator,
              voc_evaluator=VocEvaluator(data.val.rows, data.class_names) if recipe.eval.voc and main else None,
              confusion=ConfusionEvaluator(evaluator.gt_dict, data.class_names, recipe.eval.confusion_threshold)
              if main else None,
              pictures=RunPictures(run_dir, recipe.plots, log, accelerator, data.val, data.class_names))
    run.state.epoch_batches = len(train_loader)
    run.state.process_index, run.state.num_processes = accelerator.process_index, accelerator.num_processes
    if recipe.ema.enabled:  # ema: an averaged copy of the weights, on the device, updated after each optimizer step
        run.state.ema = ModelEma(model, recipe.ema.decay, recipe.ema.warmup_updates, accelerator)
    run.export = run.state.ema.as_detector(detector) if run.state.ema else detector  # ema: best/ and model/ save the average
    return run, total_steps


def fit(run: Run, epoch: int, exit_code: bool) -> dict | int:
    """The epochs: phase changes, one epoch of training, evaluation and ``best/``, early stopping, checkpoints."""
    recipe, state, accelerator = run.recipe, run.state, run.accelerator
    metrics: dict = {}
    if recipe.guard.nonfinite == "rollback" and not checkpoints.complete_checkpoints(Path(recipe.output_dir)):
        save_checkpoint(run, epoch_complete=True)  # a good checkpoint to roll back to before the first epoch's
    phase = None
    while epoch <= recipe.train.epochs:
        state.epoch = epoch
        if phase is not phase_at(run.phases, epoch):  # phases: freeze, batch size and lr change here (or on a resume)
            phase = phase_at(run.phases, epoch)
            enter_phase(run, phase)
        train_loader = run.health.batching.loader  # out-of-memory recovery may have rebuilt it with a smaller micro-batch
        train_loader.set_epoch(epoch)
        state.epoch_batches = len(train_loader)  # repeat-factor epochs may differ in length
        if state.batches_done:  # resumed mid-epoch: the same order, without the batches already seen
            train_loader = accelerator.skip_first_batches(train_loader, state.batches_done)
        ended = train_one_epoch(run, train_loader)
        if ended is Outcome.ROLLBACK:  # guard.nonfinite: rollback reloaded the last good checkpoint: go on from there
            epoch = state.epoch
            continue
        if ended is Outcome.STOPPED:
            run.health.stop.report(state)
            accelerator.end_training()
            return run.health.stop.exit_code if exit_code else metrics
        state.batches_done = 0
        last = epoch == recipe.train.epochs or ended is Outcome.MAX_STEPS
        evaluated = (recipe.eval.during_training and epoch % recipe.eval.interval == 0) or last
        if evaluated:
            metrics = evaluate_epoch(run, epoch)
        if evaluated and recipe.train.early_stop.patience and early_stop.should_stop(run, metrics, epoch):
            last = True  # train.early_stop: patience evaluations without improvement: the run ends here (best/ kept)
        every = recipe.checkpoint.every_steps
        if epoch % recipe.checkpoint.interval == 0 or last or (every and state.step % every == 0):
            save_checkpoint(run, epoch_complete=True)
        if last:
            break
        epoch += 1
    return finish(run, metrics, exit_code)


def finish(run: Run, metrics: dict, exit_code: bool) -> dict | int:
    """The guard's summary, the pictures, ``model/`` (the final weights and their card), the Hub, the trackers."""
    if run.health.guard.summary():  # non-finite steps: where the report is
        run.log.print(run.health.guard.summary())
    run.pictures.close()  # wait for the queued pictures (the model card copies the plots)
    run.accelerator.wait_for_everyone()
    model_dir = Path(run.recipe.output_dir) / "model"  # written by the main process; a failure stops every process
    publish.save_model(run, run.export, model_dir, publish.model_info(run, run.state.epoch, metrics))
    run.log.print(f"saved {model_dir} (load with AutoModelForObjectDetection.from_pretrained)")
    if run.recipe.hub.push:  # hub.push: upload model/ (a failure is logged; the run still ends normally)
        publish.push_model(run, model_dir)
    run.accelerator.end_training()
    return 0 if exit_code else metrics


def dry_run(recipe_path: str, overrides: list[str], work_dir: Path | None = None) -> dict:
    """``--dry-run``: the recipe shrunk by :mod:`hftrain.tools.dry_run`, trained; returns its metrics.
    ``work_dir`` is kept; without one, a temporary directory is used and removed after success."""
    recipe, work_dir, temporary = dry.prepare(recipe_path, overrides, work_dir)
    metrics = train(recipe)
    dry.check(recipe_path, metrics)
    if temporary:
        shutil.rmtree(work_dir, ignore_errors=True)
    return metrics


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="hftrain train", description="Train a detector from a recipe.")
    parser.add_argument("recipe", help="recipe YAML file")
    parser.add_argument("overrides", nargs="*",
                        help="dotted key=value overrides, e.g. optim.lr=5e-5, or @FILE.yaml holding such keys (a profile)")
    parser.add_argument("--debug", action="store_true",
                        help="debug mode (the recipe's debug: true): batch class mix, gradient and update checks, NaN hooks")
    parser.add_argument("--dry-run", action="store_true",
                        help="run the recipe's path with a tiny random model of its family on a few generated images "
                             "in its data format: two optimizer steps, evaluation, checkpoints (hftrain.tools.dry_run)")
    parser.add_argument("--print", action="store_true", dest="print_recipe",
                        help="print the resolved recipe (base, overrides, defaults) and exit")
    parser.add_argument("--overwrite", action="store_true", help="delete an earlier run in output_dir and start afresh")
    parser.add_argument("--resume", nargs="?", const=True, default=None,
                        help="resume from the run's latest checkpoint, or from the given checkpoint directory")
    args = parser.parse_intermixed_args(argv)  # overrides may come before or after the options
    if isinstance(args.resume, str) and "=" in args.resume and not Path(args.resume).exists():
        args.overrides.append(args.resume)  # `--resume key=value`: the value was an override
        args.resume = True
    return args


def main(argv: list[str] | None = None) -> int:
    """The command; a multi-process run ends its process here without freeing DDP and the process group
    (:mod:`hftrain.engine.process_exit`), after a traceback if it failed."""
    try:
        code = run_command(argv)
    except Exception:
        if not process_exit.kept():
            raise
        traceback.print_exc()
        code = 1
    return process_exit.exit_process(code)


def run_command(argv: list[str] | None) -> int:
    args = parse_args(argv)
    overrides = args.overrides + (["debug=true"] if args.debug else [])
    try:
        if args.print_recipe:
            return dry.print_recipe(args.recipe, overrides)
        if args.dry_run:
            dry_run(args.recipe, overrides)
            return 0
        return train(load_recipe(args.recipe, overrides), resume=args.resume, exit_code=True, overwrite=args.overwrite)
    except RecipeError as err:  # every recipe problem at once; or phases' freeze patterns, found once the model exists
        print(err, file=sys.stderr)
        return 2
    except checkpoints.RunDirInUse as err:
        print(f"hftrain train: {err}", file=sys.stderr)
        return 2
    except PretrainedError as err:  # model.pretrained cannot load: found before any data was read
        print(f"hftrain train: {err}", file=sys.stderr)
        return 2
    except checkpoints.CheckpointWriteError as err:  # raised on every process; the previous checkpoint is intact
        if PartialState().is_main_process:
            print(f"hftrain train: stopped: {err}", file=sys.stderr)
        return 3


if __name__ == "__main__":
    sys.exit(main())
