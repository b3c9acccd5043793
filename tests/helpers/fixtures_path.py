"""Where the shared sample files are: ``$HFTRAIN_FIXTURES``, or ``shared/fixtures`` beside the clone.

CI always has ``shared/`` beside the clone, so a missing folder is an error, never a skip.
"""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def fixtures_dir() -> Path:
    """The fixtures folder; raises FileNotFoundError naming every place tried."""
    tried = []
    if os.environ.get("HFTRAIN_FIXTURES"):
        tried.append(Path(os.environ["HFTRAIN_FIXTURES"]))
    tried += [REPO.parent / "shared" / "fixtures", REPO / "shared" / "fixtures"]
    for candidate in tried:
        if (candidate / "SOURCES.md").is_file():
            return candidate
    raise FileNotFoundError(
        "shared fixtures not found; tried " + ", ".join(str(p) for p in tried) + " (set HFTRAIN_FIXTURES)"
    )


def shared_dataset(name: str) -> Path:
    """A real dataset beside the fixtures (``shared/datasets/<name>``, e.g. ``kangaroo``); FileNotFoundError if absent."""
    folder = fixtures_dir().parent / "datasets" / name
    if not folder.is_dir():
        raise FileNotFoundError(f"shared dataset {name!r} not found at {folder}")
    return folder
