"""Image paths written in annotation files, checked against the image root they are relative to.

What is refused is the traversal *written in the annotations*: an absolute path, or ``..``
components that climb above the root (``../../etc/x.jpg``); the error names the entry. Paths
are normalised lexically (``a/./b/../c.jpg`` is ``a/c.jpg``), so the file opened is the one
the text names. Symbolic links inside the user's own tree are the user's choice and are
followed wherever they lead: an image folder that is a link to another disk, a ``VOCdevkit``
whose year folders are links, FRED's challenging split built as folders of links.
Per image this costs one ``stat`` (whether the file exists).
"""

from __future__ import annotations

import os
from pathlib import Path


def safe_relative(relative: str, root: str | Path, where: str) -> str:
    """``relative`` normalised; ValueError naming ``where`` when it is empty, absolute or climbs
    out of ``root`` through ``..``."""
    if not relative:
        raise ValueError(f"{where}: empty image path")
    if os.path.isabs(relative):
        raise ValueError(f"{where}: image path {relative!r} is absolute; paths must be relative to {root}")
    normal = os.path.normpath(relative)
    if normal == os.pardir or normal.startswith(os.pardir + os.sep):
        raise ValueError(f"{where}: image path {relative!r} resolves outside the image root {root} "
                         "(its '..' components climb above it)")
    return normal


class ImageRoot:
    """An image folder; ``check`` turns a relative entry into a safe relative path."""

    def __init__(self, root: str | Path):
        self.given = Path(root)
        self.resolved = os.path.realpath(root)

    def check(self, relative: str, where: str) -> tuple[str, bool]:
        """(the normalised relative path, whether it names an existing regular file, links followed).

        Raises ValueError naming ``where`` for an empty or absolute path or one whose ``..``
        components leave the root.
        """
        normal = safe_relative(relative, self.given, where)
        return normal, os.path.isfile(os.path.join(self.resolved, normal))
