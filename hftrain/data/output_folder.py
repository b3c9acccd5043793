"""Where ``hftrain convert`` writes: which ``--out`` folders it may replace, and how.

A new or empty folder is written. A non-empty one is replaced only with ``--overwrite`` and only
when it holds an earlier conversion (its ``hftrain_dataset.json``, the marker every conversion
writes); a folder that is or contains one of the inputs is never replaced. The new conversion is
written to a folder beside ``--out`` and renamed into place; the old one is removed only after.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

from hftrain.data.schema import IMAGE_ROOT_FILE


def output_refusal(out: Path, overwrite: bool, inputs: list[Path]) -> str | None:
    """Why ``hftrain convert`` must not write to ``out`` (None: it may).

    A new or empty folder is written. A non-empty one is replaced only with ``overwrite`` and only
    when it holds an earlier conversion (its ``hftrain_dataset.json``); a folder that is or
    contains one of the ``inputs`` (the image folder, the label file) is never replaced.
    """
    target = out.resolve()
    for given in inputs:
        source = given.resolve()
        if source == target or target in source.parents:
            return f"--out {out} is or contains the input {given}; choose another output folder"
    if not out.exists():
        return None
    if not out.is_dir():
        return f"--out {out} exists and is not a folder"
    if not any(out.iterdir()):
        return None
    if not (out / IMAGE_ROOT_FILE).is_file():
        return (f"--out {out} is not empty and holds no earlier conversion (no {IMAGE_ROOT_FILE}); "
                "nothing was written or removed; choose a new or empty folder")
    if not overwrite:
        return f"--out {out} holds an earlier conversion (use --overwrite to replace it)"
    return None


def replace_folder(out: Path, write: Callable[[Path], object]) -> None:
    """Call ``write(folder)`` on a new folder beside ``out``, then move it into ``out``'s place.

    A previous ``out`` (an empty folder or an earlier conversion, see :func:`output_refusal`) is
    removed only once the new one is complete; if ``write`` fails, ``out`` is left as it was.
    """
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.converting-", dir=out.parent))
    try:
        write(staging / "new")
        if out.exists():
            os.rename(out, staging / "old")
            try:
                os.rename(staging / "new", out)
            except OSError:
                os.rename(staging / "old", out)
                raise
        else:
            os.rename(staging / "new", out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
