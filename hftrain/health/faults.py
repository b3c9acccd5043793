"""Fault injection for the tests of exact resume and multi-process failure handling.

Real faults, triggered by environment variables that only the tests set:

- ``HFTRAIN_TEST_KILL_DURING_SAVE=STEP``: SIGKILL this process while it writes the checkpoint of
  that optimizer step, after the files are written and before the rename;
- ``HFTRAIN_TEST_FAIL_AT_STEP=STEP`` with ``HFTRAIN_TEST_FAIL_RANK=R``: raise on process R after
  that optimizer step;
- ``HFTRAIN_TEST_FILE_SIZE_LIMIT=STEP:BYTES``: from the checkpoint of that optimizer step on, the
  operating system refuses to grow any file of this process past BYTES (``RLIMIT_FSIZE``, with
  SIGXFSZ ignored so the write fails with EFBIG): a full disk, for real, for the files that grow.
"""

from __future__ import annotations

import os
import signal


def kill_during_save(step: int) -> None:
    if os.environ.get("HFTRAIN_TEST_KILL_DURING_SAVE") == str(step):
        os.kill(os.getpid(), signal.SIGKILL)


def fail_at_step(step: int, rank: int) -> None:
    if os.environ.get("HFTRAIN_TEST_FAIL_AT_STEP") == str(step) and os.environ.get("HFTRAIN_TEST_FAIL_RANK") == str(rank):
        raise RuntimeError(f"injected failure on process {rank} at step {step} (HFTRAIN_TEST_FAIL_AT_STEP)")


def limit_file_size(step: int) -> None:
    spec = os.environ.get("HFTRAIN_TEST_FILE_SIZE_LIMIT", "")
    at, _, size = spec.partition(":")
    if spec and at == str(step):
        import resource

        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (int(size), resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
