"""The one dataset schema every source is converted to.

A row is one image:

- ``image``: ``{"path": str | None, "bytes": bytes | None}``. ``path`` is relative to the
  dataset's image root (see ``image_root``); ``bytes`` holds the encoded file when images are
  embedded. A plain struct, not ``datasets.Image``, so that ``save_to_disk`` keeps references
  as references.
- ``image_id``: int, unique within the dataset.
- ``width``, ``height``: the size the annotations refer to (after EXIF orientation).
- ``objects``: a list of ``{id, bbox, category, area, iscrowd, difficult}`` with ``bbox`` in
  absolute COCO ``[x, y, w, h]`` pixels, ``category`` a ClassLabel index, ``iscrowd`` marking
  ignore regions for COCO evaluation and ``difficult`` marking objects VOC evaluation ignores.

Sources may add columns (BDD100K frame attributes, FRED sequence ids); the columns above are
required. Training uses the boxes with ``iscrowd == 0 and difficult == 0``; evaluation sees all.
"""

from __future__ import annotations

from pathlib import Path

import datasets
from datasets import ClassLabel, Features, List, Value

IMAGE_ROOT_FILE = "hftrain_dataset.json"


def object_features(class_names: list[str]) -> dict:
    return {
        "id": Value("int64"),
        "bbox": List(Value("float32"), length=4),
        "category": ClassLabel(names=list(class_names)),
        "area": Value("float32"),
        "iscrowd": Value("int8"),
        "difficult": Value("int8"),
    }


def detection_features(class_names: list[str], extra: dict | None = None) -> Features:
    """The features of a detection dataset with these class names (plus ``extra`` columns)."""
    columns = {
        "image": {"path": Value("string"), "bytes": Value("binary")},
        "image_id": Value("int64"),
        "width": Value("int32"),
        "height": Value("int32"),
        "objects": List(object_features(class_names)),
    }
    columns.update(extra or {})
    return Features(columns)


def class_names_of(dataset: datasets.Dataset) -> list[str]:
    """The class names held in the dataset's ClassLabel."""
    return list(dataset.features["objects"].feature["category"].names)


def objects_of(row: dict) -> list[dict]:
    """A row's objects as a list of per-object dicts, whether stored as a list of dicts or as
    the Hub's dict of lists (``{"bbox": [...], "category": [...], ...}``)."""
    objects = row["objects"]
    if isinstance(objects, dict):
        keys = list(objects)
        count = len(objects[keys[0]]) if keys else 0
        return [{key: objects[key][i] for key in keys} for i in range(count)]
    return list(objects)


def check_schema(dataset: datasets.Dataset, where: str) -> None:
    """Raise ValueError naming ``where`` and the first missing or mistyped column."""
    features = dataset.features
    for column in ("image", "image_id", "width", "height", "objects"):
        if column not in features:
            raise ValueError(f"{where}: dataset has no column {column!r} (columns: {list(features)})")
    objects = features["objects"]
    inner = getattr(objects, "feature", None)
    if not isinstance(inner, dict):
        raise ValueError(f"{where}: column 'objects' must be a list of per-object dicts, got {objects}")
    for key in ("bbox", "category", "area", "iscrowd"):
        if key not in inner:
            raise ValueError(f"{where}: objects have no field {key!r}")
    if not isinstance(inner["category"], ClassLabel):
        raise ValueError(f"{where}: objects.category must be a ClassLabel, got {inner['category']}")


def resolve_image_path(root: Path, relative: str, where: str) -> Path:
    """``root / relative``, refusing paths written to leave ``root`` (absolute, or ``..`` climbing
    above it); symbolic links in the tree are followed (see ``formats.image_paths``)."""
    from hftrain.data.formats.image_paths import safe_relative

    return Path(root) / safe_relative(relative, root, where)
