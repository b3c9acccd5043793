"""Checkpoints in the run directory: atomic, verified, and enough to resume exactly.

``checkpoints/step_NNNNNNNN/`` holds ``accelerator.save_state`` output (model weights as
safetensors, optimizer, grad scaler, every process's Python/NumPy/torch RNG states), the LR
scheduler's state (``scheduler.pt``), the weights' moving average and its update count when
``ema.enabled`` (``ema.pt``), ``trainer_state.json`` (epoch, optimizer step, batches
consumed in the epoch) and ``manifest.json`` (every file's size and SHA-256). It is written
under ``<name>.partial`` and renamed only when complete: a kill during a save leaves the
previous checkpoint as the latest. Resuming verifies the manifest and skips, with a warning
naming it, a checkpoint that is incomplete or corrupted.

Nothing is unpickled freely: weights load from safetensors, everything else with
``torch.load(weights_only=True)`` (NumPy's RNG types allowed); a file that needs more is refused.

``best/`` and ``model/`` hold ``save_pretrained`` weights plus the image processor: loadable with
``AutoModelForObjectDetection.from_pretrained`` and ``pipeline("object-detection", ...)``.

A write that fails part-way (no space left, a file-size limit, a permission error, a network
filesystem going away) raises :class:`CheckpointWriteError` on every process, with one line
naming what failed and where: the processes agree on the failure (so none waits forever for a
process that gave up), the half-written ``.partial`` folder is removed, and the previous
checkpoint, ``best/`` and ``model/`` stay as they were. Every file is fsynced before the rename.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import hashlib
import json
import os
import pickle
import shutil
import warnings
from pathlib import Path

import torch
from safetensors import SafetensorError

from hftrain.health import faults

if TYPE_CHECKING:  # annotations only
    from accelerate import PartialState

    from hftrain.engine.state import Run

STATE_FILE = "trainer_state.json"
MANIFEST_FILE = "manifest.json"
SCHEDULER_FILE = "scheduler.pt"
EMA_FILE = "ema.pt"


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used (incomplete, corrupted, or unsafe to load)."""


WRITE_ERRORS = (OSError, RuntimeError, SafetensorError)
"""What a failed write raises: OSError (open, write, rename), RuntimeError (torch.save's zip writer),
SafetensorError (safetensors' writer)."""


class CheckpointWriteError(RuntimeError):
    """Writing a checkpoint, ``best/`` or ``model/`` failed (on any process); the previous one is intact."""


def describe_write_failure(what: str, where: Path, err: BaseException) -> str:
    """One line: what failed, where, why, the free space there, and what was kept."""
    reason = " ".join(str(err).split())[:300] or type(err).__name__
    where = Path(getattr(err, "filename", None) or _last_written(where))
    try:
        free = f"{shutil.disk_usage(_existing_parent(where)).free / 2**20:.0f} MiB free there"
    except OSError:
        free = "free space unknown"
    return f"writing {what} failed at {where}: {type(err).__name__}: {reason} ({free})"


def _last_written(folder: Path) -> Path:
    """The file written last in ``folder`` (the one a failed save was writing), else ``folder``."""
    try:
        files = [p for p in Path(folder).rglob("*") if p.is_file()]
        return max(files, key=lambda p: p.stat().st_mtime_ns) if files else Path(folder)
    except OSError:
        return Path(folder)


def _existing_parent(path: Path) -> Path:
    path = Path(path)
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def agree_on_failure(accelerator, failure: str | None) -> str | None:
    """Every process's failure message (None: it succeeded) -> the first one, on every process.
    A collective: all processes must call it (one process failing alone would leave the others
    waiting at the next barrier forever)."""
    if accelerator.num_processes == 1:
        return failure
    from accelerate.utils import gather_object

    failures = [f for f in gather_object([failure]) if f]
    return failures[0] if failures else None


def fsync_tree(folder: Path) -> None:
    """Flush every file under ``folder`` and the folder entries to the storage device."""
    for path in sorted(Path(folder).rglob("*"), reverse=True) + [Path(folder)]:
        _fsync(path)


def checkpoint_dir(run_dir: Path) -> Path:
    return Path(run_dir) / "checkpoints"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save_checkpoint(accelerator, run_dir: Path, scheduler, state: dict, keep: int, ema=None) -> Path:
    """Save the full training state (called on every process); ``state`` goes to trainer_state.json,
    ``ema`` (an ``hftrain.engine.ema.ModelEma``, the same on every process) to ema.pt. A failed
    write raises :class:`CheckpointWriteError` on every process and leaves the previous checkpoint."""
    final = checkpoint_dir(run_dir) / f"step_{state['step']:08d}"
    partial = final.with_name(final.name + ".partial")
    failure = None
    if accelerator.is_main_process:
        shutil.rmtree(partial, ignore_errors=True)
    accelerator.wait_for_everyone()
    try:
        faults.limit_file_size(state["step"])
        accelerator.save_state(str(partial))  # weights/optimizer on the main process, RNG states on each
    except WRITE_ERRORS as err:  # torch.save reports a failed write as a RuntimeError
        failure = describe_write_failure(f"checkpoint step {state['step']}", partial, err)
    failure = agree_on_failure(accelerator, failure)
    if failure is None and accelerator.is_main_process:
        try:
            torch.save(scheduler.state_dict(), partial / SCHEDULER_FILE)
            if ema is not None:
                torch.save(ema.state_dict(), partial / EMA_FILE)
            (partial / STATE_FILE).write_text(json.dumps(state))
            files = sorted(p for p in partial.iterdir() if p.is_file())
            manifest = {"step": state["step"], "files": {p.name: {"size": p.stat().st_size, "sha256": _sha256(p)} for p in files}}
            (partial / MANIFEST_FILE).write_text(json.dumps(manifest, indent=1))
            fsync_tree(partial)
            faults.kill_during_save(state["step"])
            shutil.rmtree(final, ignore_errors=True)
            os.replace(partial, final)
            _fsync(final.parent)
        except WRITE_ERRORS as err:
            failure = describe_write_failure(f"checkpoint step {state['step']}", partial, err)
    failure = agree_on_failure(accelerator, failure)
    if failure is not None:
        if accelerator.is_main_process:
            shutil.rmtree(partial, ignore_errors=True)  # never leave a half-written checkpoint behind
        accelerator.wait_for_everyone()
        try:
            kept = complete_checkpoints(run_dir)
            previous = (f"the previous checkpoint {kept[-1]} is intact (--resume continues from it)" if kept
                        else "no earlier checkpoint exists")
        except (OSError, ValueError) as err:  # the filesystem itself went away
            previous = f"the earlier checkpoints cannot be listed ({err})"
        raise CheckpointWriteError(f"{failure}; {previous}")
    if accelerator.is_main_process:
        for old in complete_checkpoints(run_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def _fsync(path: Path) -> None:
    """Flush one file, or one folder's entries (which makes a rename inside it durable)."""
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if Path(path).is_dir() else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def complete_checkpoints(run_dir: Path) -> list[Path]:
    """Renamed-into-place checkpoints (those with a manifest), oldest first."""
    root = checkpoint_dir(run_dir)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and not p.name.endswith(".partial") and (p / MANIFEST_FILE).is_file()]
    return sorted(found, key=lambda p: read_state(p)["step"])


def verify(checkpoint: Path) -> None:
    """Raise CheckpointError unless every file in the manifest is there with its size and checksum."""
    checkpoint = Path(checkpoint)
    try:
        manifest = json.loads((checkpoint / MANIFEST_FILE).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{checkpoint}: no readable {MANIFEST_FILE} ({err})") from None
    for name, expected in manifest["files"].items():
        path = checkpoint / name
        if not path.is_file():
            raise CheckpointError(f"{checkpoint}: {name} is missing")
        if path.stat().st_size != expected["size"] or _sha256(path) != expected["sha256"]:
            raise CheckpointError(f"{checkpoint}: {name} does not match its checksum (corrupted)")
    for path in checkpoint.iterdir():
        if path.suffix in (".bin", ".pkl", ".pt"):
            check_loads_safely(path)


def check_loads_safely(path: Path) -> None:
    """``torch.load(weights_only=True)`` with only NumPy's RNG types allowed; refuse anything else."""
    from accelerate.utils.other import TORCH_SAFE_GLOBALS

    try:
        with torch.serialization.safe_globals(TORCH_SAFE_GLOBALS):
            torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise CheckpointError(
            f"{path}: refusing to load: it needs arbitrary unpickling, which can run code "
            f"({str(err).splitlines()[0][:200]}). Only checkpoints written by hftrain are supported."
        ) from None


def resolve_resume(run_dir: Path, resume: str | bool) -> Path:
    """``--resume`` alone: the newest checkpoint of the run that verifies (older ones are tried
    in turn, each skipped one named in a warning). ``--resume PATH``: that checkpoint, verified."""
    if resume is True or resume == "latest":
        found = complete_checkpoints(run_dir)
        if not found:
            raise FileNotFoundError(f"--resume: no complete checkpoint under {checkpoint_dir(run_dir)}")
        for candidate in reversed(found):
            try:
                verify(candidate)
                return candidate
            except CheckpointError as err:
                warnings.warn(f"skipping checkpoint {candidate}: {err}", stacklevel=2)
        raise CheckpointError(f"--resume: no checkpoint under {checkpoint_dir(run_dir)} verifies")
    path = Path(resume)
    if not (path / STATE_FILE).is_file():
        raise FileNotFoundError(f"--resume: {path} is not a complete checkpoint (no {STATE_FILE})")
    verify(path)
    return path


def load_checkpoint(accelerator, checkpoint: Path, scheduler, ema=None) -> dict:
    """Restore everything ``save_checkpoint`` wrote; returns the trainer state. A checkpoint saved
    without an EMA restarts ``ema`` from the weights just loaded."""
    accelerator.load_state(str(checkpoint))
    scheduler.load_state_dict(torch.load(Path(checkpoint) / SCHEDULER_FILE, weights_only=True))
    if ema is not None and (Path(checkpoint) / EMA_FILE).is_file():
        ema.load_state_dict(torch.load(Path(checkpoint) / EMA_FILE, map_location="cpu", weights_only=True))
    elif ema is not None:
        ema.restart()
    state = read_state(checkpoint)
    # load_state does not restore the save counter; keep it so automatic naming never collides
    accelerator.project_configuration.iteration = state.get("save_count", 0)
    return state


def read_state(checkpoint: Path) -> dict:
    return json.loads((Path(checkpoint) / STATE_FILE).read_text())


def save_pretrained_dir(detector, target: Path, extra: dict | None = None,
                        describe: Callable[[Path], None] | None = None) -> None:
    """Write the detector's weights and image processor (``Detector.save``) to ``target`` atomically:
    into ``<target>.partial`` (with ``extra`` as hftrain_info.json, then whatever ``describe(partial)`` adds:
    the model card), fsynced, then swapped in (the old folder moves to ``<target>.old``
    and is removed after the rename). A failed write removes the partial folder, leaves ``target``
    as it was and raises :class:`CheckpointWriteError` (one line: what, where, why)."""
    target = Path(target)
    partial = target.with_name(target.name + ".partial")
    old = target.with_name(target.name + ".old")
    try:
        shutil.rmtree(partial, ignore_errors=True)
        detector.save(partial)
        if extra is not None:
            (partial / "hftrain_info.json").write_text(json.dumps(extra, indent=2))
        if describe is not None:
            describe(partial)
        fsync_tree(partial)
        shutil.rmtree(old, ignore_errors=True)
        if target.exists():
            os.replace(target, old)
        os.replace(partial, target)
        _fsync(target.parent)
    except WRITE_ERRORS as err:
        message = describe_write_failure(f"{target.name}/", partial, err) + f"; {target} was left as it was"
        shutil.rmtree(partial, ignore_errors=True)
        if old.exists() and not target.exists():
            os.replace(old, target)  # the swap itself failed: put the good folder back
        raise CheckpointWriteError(message) from err
    shutil.rmtree(old, ignore_errors=True)


def save_on_main(accelerator, detector, target: Path, extra: dict | None = None,
                 describe: Callable[[Path], None] | None = None) -> None:
    """:func:`save_pretrained_dir` on the main process (every process calls this); a failure
    raises :class:`CheckpointWriteError` on every process instead of leaving them waiting."""
    failure = None
    if accelerator.is_main_process:
        try:
            save_pretrained_dir(detector, target, extra, describe)
        except CheckpointWriteError as err:
            failure = str(err)
    failure = agree_on_failure(accelerator, failure)
    accelerator.wait_for_everyone()
    if failure is not None:
        raise CheckpointWriteError(failure)


class RunDirInUse(RuntimeError):
    """The output directory holds an earlier run and neither --resume nor --overwrite was given."""


def claim_run_dir(run_dir: Path, processes: PartialState, resume, overwrite: bool) -> None:
    """Never mix two runs' checkpoints and logs, nor delete them unasked."""
    if resume or not (complete_checkpoints(run_dir) or (run_dir / "metrics.jsonl").exists()):
        return
    if not overwrite:
        raise RunDirInUse(f"{run_dir} holds an earlier run: pass --resume to continue it, --overwrite to "
                          "delete it and start afresh, or choose another output_dir")
    if processes.is_main_process:
        shutil.rmtree(run_dir)
    processes.wait_for_everyone()


def resume(run: Run, resume: str | bool) -> int:
    """Load the checkpoint ``--resume`` names (or the newest); returns the epoch to start."""
    source = resolve_resume(Path(run.recipe.output_dir), resume)
    saved = load_checkpoint(run.accelerator, source, run.scheduler, run.state.ema)
    has_ema = (source / EMA_FILE).is_file()
    if run.state.ema and not has_ema:
        run.log.print(f"{source} holds no EMA (saved with ema.enabled false): the average starts from its weights")
    elif has_ema and not run.state.ema:
        run.log.print(f"{source} holds an EMA of the weights; it is not used (ema.enabled false)")
    run.state.save_count, run.state.best = saved["save_count"], saved["best"]
    run.state.resume_at(saved)
    if run.accelerator.is_main_process:
        run.log.truncate_after(run.state.step)  # drop what the interrupted run logged after this checkpoint
    run.log.print(f"resumed from {source} (epoch {saved['epoch']}, step {saved['step']}, "
                  f"{saved['batches_done']} batches into the epoch)")
    return run.state.epoch
