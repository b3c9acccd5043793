"""The one place that touches Accelerate's private state.

Accelerate keeps lists of what ``prepare`` has seen (``_models``, ``_dataloaders``) for
``save_state``, and a micro-step counter (``step``) for ``accumulate``. Swapping a prepared object
mid-run (a rebuilt training loader after an out-of-memory error or at a phase change, a model
wrapped again under DDP) has no public API, so these helpers keep Accelerate's lists honest. Checked
against accelerate 1.x (see constraints.txt); the tests of phases and out-of-memory recovery fail
if a release renames them.
"""

from __future__ import annotations

import contextlib


def forget_dataloader(accelerator, loader) -> None:
    """``loader`` was replaced by a newly prepared one: ``save_state`` must save only the new one."""
    with contextlib.suppress(ValueError, AttributeError):
        accelerator._dataloaders.remove(loader)


def forget_model(accelerator, unwrapped) -> None:
    """``unwrapped`` is about to be prepared again (DDP re-wrap): ``save_state`` must see it once."""
    accelerator._models.remove(unwrapped)


def restart_accumulation(accelerator) -> None:
    """The next micro-batch starts a new optimizer step (after the interrupted one was abandoned)."""
    accelerator.step = 0
