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
