"""SIGTERM / SIGINT: checkpoint at the next optimizer-step boundary and exit cleanly.

The first signal only sets a flag; the loop checks it after every optimizer step (agreeing
across processes, so every rank stops at the same step: the flag travels in the non-finite
guard's per-step reduce, :meth:`hftrain.health.guard.NonFiniteGuard.verdict`, with no transfer of
its own), writes a checkpoint and returns. A second signal exits at once.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

EXIT_CODES = {signal.SIGTERM: 143, signal.SIGINT: 130}


class StopSignal:
    def __init__(self, log, run_dir: Path):
        self.log = log
        self.run_dir = Path(run_dir)
        self.received: int | None = None

    @classmethod
    def install(cls, log, run_dir: Path) -> "StopSignal":
        stop = cls(log, run_dir)
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, stop._handle)
        return stop

    def _handle(self, signum, frame) -> None:
        if self.received is not None:
            os._exit(EXIT_CODES.get(signum, 1))  # second signal: leave now
        self.received = signum
        print(f"[hftrain] {signal.Signals(signum).name} received: saving a checkpoint at the next step "
              "(send it again to exit at once)", file=sys.stderr, flush=True)

    @property
    def seen(self) -> bool:
        """This process received a signal (the guard's reduce tells every process whether any did)."""
        return self.received is not None

    def report(self, state) -> None:
        name = signal.Signals(self.received).name if self.received else "a stop signal on another process"
        self.log.print(
            f"stopped by {name} at epoch {state.epoch}, step {state.step}; checkpoint saved.",
            f"resume with: hftrain train {self.run_dir / 'recipe.yaml'} --resume",
        )

    @property
    def exit_code(self) -> int:
        return EXIT_CODES.get(self.received, 0)
