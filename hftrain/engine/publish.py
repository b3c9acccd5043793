"""``best/`` and ``model/`` as they are published: ``hftrain_info.json`` (the evaluation's metrics, the
training time and hardware), the model card ``README.md`` with the run's plots
(:mod:`hftrain.report.model_card`), written inside the folder's atomic save, and the upload to the Hub
(``hub:``, :mod:`hftrain.report.hub_push`) once the folder is in place.

A card that cannot be built, or an upload that fails, is logged with its cause and the run goes on: the
weights are saved either way, and ``hftrain push`` can upload them later.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import dataclasses
import json
import platform
from pathlib import Path

import torch

from hftrain.engine import checkpoints
from hftrain.report.hub_push import PushError, push_folder
from hftrain.report.model_card import write_card
from hftrain.report.pictures import PLOTS_DIR

if TYPE_CHECKING:  # annotations only
    from hftrain.engine.state import Run


def model_info(run: Run, epoch: int, metrics: dict, **more) -> dict:
    """hftrain_info.json's content: the epoch, ``more`` (e.g. the best metric's value), the metrics, and how
    the weights were trained (wall-clock seconds, device, processes, precision, versions)."""
    import transformers

    accelerator = run.accelerator
    training = {"seconds": round(run.state.train_seconds(), 1), "epochs": epoch, "steps": run.state.step,
                "device": device_name(accelerator.device), "device_type": accelerator.device.type,
                "num_processes": accelerator.num_processes, "precision": accelerator.mixed_precision,
                "torch_version": torch.__version__, "transformers_version": transformers.__version__}
    return {"epoch": epoch, **more, "metrics": metrics, "training": training}


def device_name(device: torch.device) -> str:
    """The accelerator's product name (``NVIDIA H100 80GB HBM3``), else the CPU's model name."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "mps":
        return "Apple GPU (MPS)"
    return f"CPU ({cpu_name()})"


def cpu_name() -> str:
    """The CPU's model name from ``/proc/cpuinfo`` (Linux), else what ``platform`` knows."""
    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.is_file() else []
    names = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
    return names[0] if names else platform.processor() or platform.machine()


def save_model(run: Run, export, target: Path, info: dict) -> None:
    """Save ``export`` (the detector whose weights are published) to ``target`` with hftrain_info.json
    (``info``) and the model card; every process calls this, and a failed write stops every process as
    :func:`checkpoints.save_on_main` says."""
    checkpoints.save_on_main(run.accelerator, export, target, info, describe=lambda folder: _card(run, folder, info))


def push_model(run: Run, folder: Path) -> None:
    """Upload ``folder`` to ``hub.repo_id`` from the main process (every process calls this). A failed upload
    is logged with its cause and how to retry; the run goes on."""
    hub = run.recipe.hub
    if run.accelerator.is_main_process:
        info = _read_info(folder)
        label = f"{folder.name}/ after epoch {info.get('epoch')}" + "".join(
            f", {key} {value:.4f}" for key, value in (info.get("metrics") or {}).items()
            if key == run.recipe.checkpoint.best_metric and isinstance(value, (int, float)))
        try:
            url = push_folder(folder, hub.repo_id, hub.private, hub.revision, commit_message=f"hftrain: {label}")
            run.log.print(f"hub: pushed {label} to {hub.repo_id}: {url}")
        except PushError as err:
            run.log.print(f"hub: {err}; the run goes on (upload it later with `hftrain push {run.recipe.output_dir} "
                          f"{hub.repo_id} --weights {folder.name}`)")
    run.accelerator.wait_for_everyone()


def _read_info(folder: Path) -> dict:
    try:
        return json.loads((Path(folder) / "hftrain_info.json").read_text())
    except (OSError, ValueError):
        return {}


def _card(run: Run, folder: Path, info: dict) -> None:
    """Write the model card into the folder being saved; a failure is logged, never fatal (a missing card
    must not cost the weights)."""
    try:
        write_card(folder, info, dataclasses.asdict(run.recipe), Path(run.recipe.output_dir) / PLOTS_DIR,
                   run.recipe.hub.repo_id)
    except Exception as err:  # noqa: BLE001 -- the weights are saved without README.md; the cause is logged
        run.log.print(f"model card: writing {folder.name.removesuffix('.partial')}/README.md failed "
                      f"({type(err).__name__}: {err}); the weights are saved without it")
