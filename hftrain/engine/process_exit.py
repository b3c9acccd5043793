"""How a multi-process run's process ends: without tearing down DDP and the gloo process group.

With torch 2.13 and gloo, a rank sometimes hung for good when a finished run was freed: dropping the
DDP reducer's last reference to ``ProcessGroupGloo`` runs its destructor with the GIL held, and the
destructor waits for a gloo worker thread that is itself waiting for the GIL (seen with gdb in three
2-process test runs on a loaded 2-core machine, always after ``model/`` was saved; the test then
timed out). It could not be provoked on demand, so there is no test that shows the hang; the remedy
is not to run that destructor at all: a multi-process command keeps what holds the process group
(:func:`keep_until_exit`) and ends its process with ``os._exit`` once everything is written
(:func:`exit_process`). Everything a run writes is on disk by then: checkpoints, ``best/`` and
``model/`` are fsynced, ``train.log`` and ``metrics.jsonl`` are opened per write, the pictures'
thread has been joined and the trackers finished (``accelerator.end_training``). Single-process
commands (and tests calling them in-process) return normally.
"""

from __future__ import annotations

import os
import sys

_KEPT: list = []


def keep_until_exit(*objects) -> None:
    """Hold ``objects`` (the run, a prepared model: whatever references the process group) until
    :func:`exit_process` ends the process, so that they are never freed in a multi-process run."""
    _KEPT.extend(objects)


def kept() -> bool:
    """Whether this process holds a multi-process run (and so must end through :func:`exit_process`)."""
    return bool(_KEPT)


def exit_process(code: int) -> int:
    """End the process with ``code`` at once when :func:`keep_until_exit` holds anything (flushing
    stdout and stderr first); otherwise return ``code``."""
    if not _KEPT:
        return code
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
