"""The one dataset schema every source is converted to: the Hugging Face Hub's detection schema.

A row is one image, as in the Hub's detection datasets (cppe-5, the transformers
object-detection example, the ``datasets`` docs):

- ``image``: a ``datasets.Image`` feature, stored as ``{"bytes", "path"}``. ``path`` is relative
  to the dataset's image root (see ``IMAGE_ROOT_FILE``); ``bytes`` holds the encoded file when
  images are embedded. hftrain reads it with ``decode=False`` (no PIL objects built by
  ``datasets``) and decodes with its own uint8 path; ``save_converted`` writes the column so that
  references stay references (``save_to_disk`` would embed every file).
- ``image_id``: int, unique within the dataset.
- ``width``, ``height``: the size the annotations refer to (after EXIF orientation).
- ``objects``: a dict of lists (the Hub's storage), one entry per object in each list:
  ``id``, ``area``, ``bbox`` in absolute COCO ``[x, y, w, h]`` pixels, ``category`` a ClassLabel
  index (class names in the ClassLabel), plus ``iscrowd`` (ignore regions for COCO evaluation)
  and ``difficult`` (objects VOC evaluation ignores).

Sources may add columns (BDD100K frame attributes, FRED sequence ids); the columns above are
required. Training uses the boxes with ``iscrowd == 0 and difficult == 0``; evaluation sees all.
Read a row's objects with :func:`objects_of` (either storage) in code that is not on the hot path.
"""

from __future__ import annotations

from pathlib import Path

import datasets
from datasets import ClassLabel, Features, Image, List, Value

IMAGE_ROOT_FILE = "hftrain_dataset.json"
SCHEMA_VERSION = 2
"""Version of the stored schema, in the sidecar: 2 is the Hub detection schema (``Image``
feature, ``objects`` a dict of lists); folders written before it (no version) are refused."""
OBJECT_KEYS = ("id", "area", "bbox", "category", "iscrowd", "difficult")


def object_features(class_names: list[str]) -> dict:
    """The ``objects`` feature: a dict of lists, in cppe-5's key order plus iscrowd and difficult."""
    return {
        "id": List(Value("int64")),
        "area": List(Value("float32")),
        "bbox": List(List(Value("float32"), length=4)),
        "category": List(ClassLabel(names=list(class_names))),
        "iscrowd": List(Value("int8")),
        "difficult": List(Value("int8")),
    }


def detection_features(class_names: list[str], extra: dict | None = None) -> Features:
    """The features of a detection dataset with these class names (plus ``extra`` columns); the
    ``Image`` feature does not decode (hftrain decodes images itself)."""
    columns = {
        "image": Image(decode=False),
        "image_id": Value("int64"),
        "width": Value("int32"),
        "height": Value("int32"),
        "objects": object_features(class_names),
    }
    columns.update(extra or {})
    return Features(columns)


def category_feature(dataset_or_features) -> ClassLabel | None:
    """The ClassLabel of ``objects.category`` in either storage (None if it is not a ClassLabel)."""
    features = getattr(dataset_or_features, "features", dataset_or_features)
    objects = features["objects"]
    if isinstance(objects, dict):  # the Hub's dict of lists
        category = getattr(objects.get("category"), "feature", None)
    else:  # a list of per-object dicts
        inner = getattr(objects, "feature", None)
        category = inner.get("category") if isinstance(inner, dict) else None
    return category if isinstance(category, ClassLabel) else None


def class_names_of(dataset: datasets.Dataset) -> list[str]:
    """The class names held in the dataset's ClassLabel (either storage of ``objects``)."""
    category = category_feature(dataset)
    if category is None:
        raise ValueError(f"objects.category is not a ClassLabel: {dataset.features['objects']}")
    return list(category.names)


def class_names_of_id2label(id2label: dict) -> list[str]:
    """A saved model's class names in label order, from its config's ``id2label`` (keys ints or strings)."""
    return [name for _, name in sorted((int(i), name) for i, name in id2label.items())]


def objects_of(row: dict) -> list[dict]:
    """A row's objects as a list of per-object dicts, whether stored as a list of dicts or as
    the Hub's dict of lists (``{"bbox": [...], "category": [...], ...}``)."""
    objects = row["objects"]
    if isinstance(objects, dict):
        keys = list(objects)
        count = len(objects[keys[0]]) if keys else 0
        return [{key: objects[key][i] for key in keys} for i in range(count)]
    return list(objects)


OLD_SCHEMA = ("written by an older hftrain (objects stored as a list of per-object dicts); "
              "re-run `hftrain convert` to rewrite it in the Hub detection schema")


def check_schema(dataset: datasets.Dataset, where: str) -> None:
    """Raise ValueError naming ``where`` and the first missing or mistyped column."""
    features = dataset.features
    for column in ("image", "image_id", "width", "height", "objects"):
        if column not in features:
            raise ValueError(f"{where}: dataset has no column {column!r} (columns: {list(features)})")
    if not isinstance(features["image"], Image):
        raise ValueError(f"{where}: column 'image' must be a datasets.Image feature, got {features['image']}"
                         + (f"; {OLD_SCHEMA}" if isinstance(features["image"], dict) else ""))
    objects = features["objects"]
    if not isinstance(objects, dict):
        raise ValueError(f"{where}: column 'objects' must be a dict of lists (the Hub's storage), got {objects}"
                         + (f"; {OLD_SCHEMA}" if isinstance(getattr(objects, "feature", None), dict) else ""))
    for key in OBJECT_KEYS:
        if key not in objects:
            raise ValueError(f"{where}: objects have no field {key!r} (fields: {list(objects)})")
    if category_feature(features) is None:
        raise ValueError(f"{where}: objects.category must be a list of ClassLabel, got {objects['category']}")


def resolve_image_path(root: Path, relative: str, where: str) -> Path:
    """``root / relative``, refusing paths written to leave ``root`` (absolute, or ``..`` climbing
    above it); symbolic links in the tree are followed (see ``formats.image_paths``)."""
    from hftrain.data.formats.image_paths import safe_relative

    return Path(root) / safe_relative(relative, root, where)
