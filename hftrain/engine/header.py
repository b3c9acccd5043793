"""The run header: what a run is about to do, in one table at its start."""

from __future__ import annotations

from pathlib import Path

import torch


def header_rows(run, data, memory: str, total_steps: int) -> list[tuple[str, str]]:
    """(name, value) rows for :meth:`hftrain.report.runlog.RunLog.header` of ``run`` (a
    :class:`hftrain.engine.state.Run`); ``memory`` describes the CUDA memory settings applied."""
    recipe, accelerator, phases = run.recipe, run.accelerator, run.phases
    per_device, accum, processes = phases[0].batch_size, phases[0].accumulation, accelerator.num_processes
    model = (f"{recipe.model.name} ({'pretrained ' + recipe.model.pretrained if recipe.model.pretrained else 'from scratch'}), "
             f"{sum(p.numel() for p in run.model.parameters()) / 1e6:.2f}M parameters")
    return [
        ("output dir", str(Path(recipe.output_dir))),
        ("device", f"{accelerator.device} x {processes} process(es) ({accelerator.distributed_type.value})"),
        ("model", model),
        *([("model weights", run.detector.loaded)] if run.detector.loaded else []),
        ("data", f"{len(data.train)} train / {len(data.val)} val images, {len(data.class_names)} classes"
                 + (f" (val held out of train: data.val.from_train {recipe.data.val.from_train:g}, data.seed "
                    f"{recipe.data.seed})" if recipe.data.val.from_train else "")),
        ("batch per device", str(per_device)),
        ("workers", f"{recipe.data.num_workers} (torch threads per process: {torch.get_num_threads()})"),
        ("image size", f"min={recipe.data.min_size}, max={recipe.data.max_size}"),
        ("grad accumulation", f"{accum} steps"),
        *([("phases", "; ".join(phase.describe() for phase in phases))] if recipe.phases else []),
        ("effective batch", f"{per_device * accum * processes} (= {per_device} x {accum} x {processes})"),
        ("clipping", f"clip_max_norm={recipe.train.clip_max_norm}" if recipe.train.clip_max_norm else "off"),
        ("ema", run.state.ema.describe() if run.state.ema else "off"),
        ("cuda memory", memory),
        ("precision", f"{accelerator.mixed_precision} (recipe: {recipe.precision.mode}); criterion "
                      f"{'fp32' if recipe.precision.fp32_criterion else 'autocast'}"),
        ("schedule", f"{recipe.schedule.name}, lr {recipe.optim.lr:g}, warmup {recipe.schedule.warmup_steps} steps, "
                     f"{total_steps} optimizer steps"),
    ]
