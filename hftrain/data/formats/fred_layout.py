"""Where FRED's sequences are: split folders of the release (``train/``, ``test/``, the challenging
split's folder of links), split files (``dataset_splits/…``), or a flat root of numbered folders.
The reading of the sequences is :mod:`hftrain.data.formats.fred` (its docstring describes every layout).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from hftrain.data.formats.coco import DatasetError

RELEASE_SPLITS = ("train", "test")
_DIGITS = re.compile(r"(\d+)")


def natural_key(name: str) -> tuple:
    """Sort key of ``natsort.natsorted``'s default: digit runs compare as integers."""
    return tuple(int(part) if i % 2 else part for i, part in enumerate(_DIGITS.split(name)))


@dataclass(frozen=True)
class Sequence:
    """One sequence folder: its name (``"42"``) and its path under the given root (links kept)."""

    name: str
    folder: Path


def resolve_split_file(splits_dir: Path | None, name: str) -> Path:
    """A split file from a path or a name such as ``canonical/train`` or ``challenging/test``."""
    direct = Path(name)
    if direct.suffix == ".txt":
        if direct.is_file():
            return direct
        if splits_dir is not None and (splits_dir / direct).is_file():
            return splits_dir / direct
        raise DatasetError(f"FRED split file {name!r} not found")
    if splits_dir is None:
        raise DatasetError(f"FRED split {name!r}: no split folder given (the dataset's dataset_splits/)")
    group, _, split = name.strip("/").partition("/")
    candidates = [splits_dir / group / f"{split}_split.txt", splits_dir / group / f"{group}_{split}_split.txt"]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise DatasetError(f"FRED split {name!r}: none of {[str(c) for c in candidates]} exists")


def read_split_sequences(split_file: Path) -> list[str]:
    """Sequence folder names listed one per line (``0/``), trailing slash and blank lines ignored."""
    return [line.strip().strip("/") for line in split_file.read_text().splitlines() if line.strip()]


def is_split_folder(root: Path, name: str) -> bool:
    """Whether a set names a folder of sequences under the root (``train``, ``test``)."""
    return Path(name).suffix != ".txt" and (root / name.strip("/")).is_dir()


def _split_folder_sequences(folder: Path) -> list[Sequence]:
    """The sequence folders in a split folder, natural-sorted (links to folders followed)."""
    children = [p for p in folder.iterdir() if not p.name.startswith(".") and p.is_dir()]
    zipped = sorted((p.name for p in folder.glob("*.zip") if not p.with_suffix("").is_dir()), key=natural_key)
    if zipped:  # the release ships one zip per sequence
        raise DatasetError(f"{folder}: {len(zipped)} sequence(s) still zipped ({', '.join(zipped[:3])}"
                           f"{', ...' if len(zipped) > 3 else ''}): unzip each into its <seq>/ folder first")
    if not children:
        raise DatasetError(f"{folder}: no sequence folders in this FRED split folder")
    return [Sequence(p.name, p) for p in sorted(children, key=lambda p: natural_key(p.name))]


def _listed_sequence(root: Path, seq: str, split_file: Path) -> Sequence:
    for folder in (root / seq, *(root / half / seq for half in RELEASE_SPLITS)):
        if folder.is_dir():
            return Sequence(seq, folder)
    raise DatasetError(f"{root / seq}: sequence folder {seq!r} (listed by {split_file}) not found "
                       f"under {root}, {root / 'train'} or {root / 'test'}")


def list_sequences(root: Path, splits_dir: Path | None, sets: list[str] | None) -> list[Sequence]:
    """The sequences of the given sets (in their order, each folder once), or every numbered folder.

    A set is a split folder under the root (``train``, ``test``: every sequence in it) or a split
    file (a ``.txt`` path or a name such as ``canonical/train`` under ``splits_dir``).
    """
    root = Path(root)
    if not sets:
        found = [p for p in root.iterdir() if p.is_dir() and p.name.isdigit()]
        if found:
            return [Sequence(p.name, p) for p in sorted(found, key=lambda p: int(p.name))]
        halves = [half for half in RELEASE_SPLITS if (root / half).is_dir()]
        if halves:
            raise DatasetError(
                f"{root}: a FRED release root (holds {', '.join(h + '/' for h in halves)}): choose the split "
                f"with --split {halves[0]} (recipes: data.train.sets: [train], data.val.sets: [test])")
        raise DatasetError(f"{root}: no sequence folders (0/, 1/, ...), no train/ or test/, and no split given")
    sequences: dict[str, Sequence] = {}
    for name in sets:
        if is_split_folder(root, name):
            listed = _split_folder_sequences(root / name.strip("/"))
        else:
            split_file = resolve_split_file(splits_dir, name)
            listed = [_listed_sequence(root, seq, split_file) for seq in read_split_sequences(split_file)]
        for seq in listed:
            sequences.setdefault(os.path.realpath(seq.folder), seq)
    return list(sequences.values())


def image_root_of(root: str | Path, sequences: list[Sequence]) -> Path:
    """The resolved root, or, when sequences are links leaving it (a challenging split), the
    deepest folder holding the root and every sequence's real folder."""
    root_real = os.path.realpath(root)
    real = [os.path.realpath(seq.folder) for seq in sequences]
    if all(path == root_real or path.startswith(root_real.rstrip(os.sep) + os.sep) for path in real):
        return Path(root_real)
    return Path(os.path.commonpath([root_real, *real]))


def splits_dir_of(root: Path, splits_dir: str | Path | None) -> Path:
    return Path(splits_dir) if splits_dir else root / "dataset_splits"


def fred_image_root(root: str | Path, splits_dir: str | Path | None, sets: list[str] | None) -> Path:
    """The folder the image paths of ``read_fred(root, splits_dir, sets)`` are relative to."""
    root = Path(root)
    return image_root_of(root, list_sequences(root, splits_dir_of(root, splits_dir), sets))
