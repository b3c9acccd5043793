"""Checkpoints in the run directory.

``checkpoints/epoch_NNNN/`` holds ``accelerator.save_state`` output plus ``trainer_state.json``
(epoch and optimizer step). It is written to a temporary name and renamed when complete, so
the latest complete checkpoint is never a half-written one. ``best/`` and ``model/`` hold
``save_pretrained`` weights plus the image processor: loadable with
``AutoModelForObjectDetection.from_pretrained`` and ``pipeline("object-detection", ...)``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

STATE_FILE = "trainer_state.json"


def checkpoint_dir(run_dir: Path) -> Path:
    return Path(run_dir) / "checkpoints"


def save_checkpoint(accelerator, run_dir: Path, epoch: int, step: int, keep: int) -> Path:
    """Save the full training state for ``epoch`` (called on every process)."""
    final = checkpoint_dir(run_dir) / f"epoch_{epoch:04d}"
    partial = final.with_name(final.name + ".partial")
    if accelerator.is_main_process:
        shutil.rmtree(partial, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(partial))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (partial / STATE_FILE).write_text(json.dumps({"epoch": epoch, "step": step}))
        shutil.rmtree(final, ignore_errors=True)
        partial.rename(final)
        for old in complete_checkpoints(run_dir)[:-keep]:
            shutil.rmtree(old)
    accelerator.wait_for_everyone()
    return final


def complete_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    root = checkpoint_dir(run_dir)
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and (p / STATE_FILE).is_file())


def resolve_resume(run_dir: Path, resume: str | bool) -> Path:
    """``--resume`` with no value means the latest checkpoint of the run; else a path."""
    if resume is True or resume == "latest":
        found = complete_checkpoints(run_dir)
        if not found:
            raise FileNotFoundError(f"--resume: no complete checkpoint under {checkpoint_dir(run_dir)}")
        return found[-1]
    path = Path(resume)
    if not (path / STATE_FILE).is_file():
        raise FileNotFoundError(f"--resume: {path} is not a complete checkpoint (no {STATE_FILE})")
    return path


def read_state(checkpoint: Path) -> dict:
    return json.loads((Path(checkpoint) / STATE_FILE).read_text())


def save_pretrained_dir(detector, target: Path, extra: dict | None = None) -> None:
    """Write the detector's weights and image processor (``Detector.save``) to ``target`` atomically."""
    target = Path(target)
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    detector.save(partial)
    if extra is not None:
        (partial / "hftrain_info.json").write_text(json.dumps(extra, indent=2))
    shutil.rmtree(target, ignore_errors=True)
    partial.rename(target)
