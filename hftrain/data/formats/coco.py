"""Read a COCO instances JSON into the project's dataset schema.

Conventions (those of the official COCO API):

- category ids need not be contiguous (COCO's 80 run 1..90): they map to contiguous labels
  0..K-1 in increasing id order, names kept in the ClassLabel and each class's original ids in
  ``report.category_ids`` (saved in the sidecar), so predictions can be written back in them;
- ``iscrowd`` is kept: crowd boxes are ignore regions in evaluation and are not trained on;
- images without annotations are kept;
- ``area`` is taken from the annotation (segment area for COCO), or ``w * h`` when absent;
- boxes are clipped to the image, and boxes under 1 px or with non-finite coordinates dropped,
  every one counted in the report;
- annotations whose ``image_id`` names no image, and the boxes of images whose file is missing,
  are dropped and counted; an annotation without an integer ``id`` gets a new id, unique in the
  dataset (after the file's largest), counted as a changed box;
- image ids may be integers (kept as ``image_id``) or strings, which the format allows: then the
  images are numbered 1..N in file order and each keeps its written id in a ``coco_image_id``
  column (an annotation's ``image_id`` must match the written id, type included);
- a missing or malformed required field (an image's ``id``/``width``/``height``, an annotation's
  ``image_id``/``category_id``, a category's ``id``/``name``), or ``images``/``annotations`` that
  are not lists, is a DatasetError naming the file and the entry (its index and id).
"""

from __future__ import annotations

import json
from pathlib import Path

import datasets

from hftrain.data.formats.boxes import clean_xywh
from hftrain.data.formats.columns import DetectionColumns
from hftrain.data.formats.report import ConversionReport
from hftrain.data.formats.image_paths import ImageRoot


class DatasetError(ValueError):
    """A problem with a dataset's files, naming the file and the entry."""


MISSING_IMAGE = "missing image file"
NO_IMAGE = "annotation whose image_id names no image"
BOX_OF_MISSING_IMAGE = "box of a missing image file"
NUMBERED = "annotation without an integer id: given a new unique id"


def _field(entry, key: str, where: str):
    """``entry[key]``; DatasetError naming ``where`` when the entry is not an object or lacks it."""
    if not isinstance(entry, dict):
        raise DatasetError(f"{where}: is a {type(entry).__name__}, not a JSON object")
    if entry.get(key) is None:
        raise DatasetError(f"{where}: no {key!r}")
    return entry[key]


def _is_integer(value) -> bool:
    return (isinstance(value, int) and not isinstance(value, bool)) or (isinstance(value, float) and value.is_integer())


def _number(entry, key: str, where: str) -> float:
    value = _field(entry, key, where)
    try:
        if isinstance(value, bool):
            raise TypeError
        return float(value)
    except (TypeError, ValueError):
        raise DatasetError(f"{where}: {key} {value!r} is not a number") from None


def _integer(entry, key: str, where: str) -> int:
    """An integer field (``640``, ``640.0`` or ``"640"``); DatasetError naming ``where`` otherwise."""
    value = _field(entry, key, where)
    number = _number(entry, key, where)
    if not number.is_integer():
        raise DatasetError(f"{where}: {key} {value!r} is not an integer")
    return int(number)


def _image_id(value, where: str) -> int | str:
    """An image id as written: an integer, or a non-empty string (COCO allows any id)."""
    if _is_integer(value):
        return int(value)
    if isinstance(value, str) and value:
        return value
    raise DatasetError(f"{where}: image id {value!r} is neither an integer nor a string")


def check_missing(report: ConversionReport, missing: int, total: int, source: str | Path,
                  images_dir: str | Path, max_missing: float) -> None:
    """Raise DatasetError when more than ``max_missing`` (a fraction) of ``total`` images are missing.

    The missing files themselves were counted (with example paths) in ``report``; this is what
    keeps a run from training on a silently shrunken dataset.
    """
    if total and missing / total > max_missing:
        example = report.examples.get(MISSING_IMAGE, ["?"])[0]
        raise DatasetError(
            f"{source}: {missing} of {total} image files are missing under {images_dir} "
            f"(e.g. {example}); allowed fraction is {max_missing:g} (max_missing)"
        )


def read_coco(
    images_dir: str | Path,
    labels_path: str | Path,
    category_map: dict[str, str | None] | None = None,
    max_missing: float = 0.0,
    check_files: bool = True,
) -> tuple[datasets.Dataset, ConversionReport]:
    """Read ``labels_path`` (COCO instances JSON) whose file names are relative to ``images_dir``.

    ``category_map`` renames source categories (``None`` drops that category, counted).
    Missing image files are dropped and counted; more than ``max_missing`` (a fraction) of them
    is an error, so a run never trains on a silently shrunken dataset.
    """
    images_dir, labels_path = Path(images_dir), Path(labels_path)
    report = ConversionReport(source=str(labels_path))
    try:
        coco = json.loads(labels_path.read_text())
    except FileNotFoundError:
        raise DatasetError(f"{labels_path}: annotation file not found") from None
    except json.JSONDecodeError as err:
        raise DatasetError(f"{labels_path}: not valid JSON ({err})") from None
    if not isinstance(coco, dict):
        raise DatasetError(f"{labels_path}: top level is a {type(coco).__name__}, not a COCO instances object")
    for key in ("images", "categories"):
        if key not in coco:
            raise DatasetError(f"{labels_path}: no {key!r} list (is this a COCO instances file?)")
        if not isinstance(coco[key], list):
            raise DatasetError(f"{labels_path}: {key!r} is a {type(coco[key]).__name__}, not a list")
    annotations = coco.get("annotations") or []
    if not isinstance(annotations, list):
        raise DatasetError(f"{labels_path}: 'annotations' is a {type(annotations).__name__}, "
                           "not a list of annotation objects")

    category_map = category_map or {}
    source_names = {}
    for i, category in enumerate(coco["categories"]):
        where = f"{labels_path} categories[{i}]"
        source_names[_integer(category, "id", where)] = str(_field(category, "name", where))
    class_names: list[str] = []
    label_of_id: dict[int, int | None] = {}
    for cat_id in sorted(source_names):
        name = category_map.get(source_names[cat_id], source_names[cat_id])
        if name is None:
            label_of_id[cat_id] = None
            continue
        if name not in class_names:
            class_names.append(name)
        label_of_id[cat_id] = class_names.index(name)
        report.category_ids.setdefault(name, []).append(cat_id)

    # image ids as written: integers are kept; string ids (the format allows any id) number the
    # images 1..N in file order, the written id kept in the coco_image_id column
    image_keys = [_image_id(_field(entry, "id", f"{labels_path} images[{i}]"), f"{labels_path} images[{i}]")
                  for i, entry in enumerate(coco["images"])]
    numbered = any(isinstance(key, str) for key in image_keys)
    known = set(image_keys)
    by_image: dict[int | str, list[tuple[int, dict]]] = {}
    largest_id = 0
    for index, ann in enumerate(annotations):
        ann_where = f"{labels_path} annotations[{index}] (id {ann.get('id') if isinstance(ann, dict) else None})"
        key = _image_id(_field(ann, "image_id", ann_where), ann_where)
        if key not in known:
            report.drop_box(NO_IMAGE, f"{ann_where}: image_id {key!r}")
            continue
        by_image.setdefault(key, []).append((index, ann))
        if _is_integer(ann.get("id")):
            largest_id = max(largest_id, int(ann["id"]))
    next_id = largest_id + 1  # annotations without an id are numbered after the file's largest

    columns = DetectionColumns(class_names, {"coco_image_id": datasets.Value("string")} if numbered else None)
    root = ImageRoot(images_dir)
    missing = 0
    seen_ids: set[int | str] = set()
    for position, (entry, key) in enumerate(zip(coco["images"], image_keys)):
        image_id = position + 1 if numbered else key
        where = f"{labels_path} image id {key!r} ({entry.get('file_name')!r})"
        if key in seen_ids:
            raise DatasetError(f"{where}: duplicate image id")
        seen_ids.add(key)
        relative, exists = root.check(entry.get("file_name", ""), where)
        if check_files and not exists:
            missing += 1
            report.drop_image(MISSING_IMAGE, str(images_dir / relative))
            for _, ann in by_image.get(key, []):
                report.drop_box(BOX_OF_MISSING_IMAGE, f"{where} annotation id {ann.get('id')}")
            continue
        width, height = _integer(entry, "width", where), _integer(entry, "height", where)
        if width <= 0 or height <= 0:
            raise DatasetError(f"{where}: width x height {width}x{height} is not a positive size")
        for index, ann in by_image.get(key, []):
            ann_where = f"{labels_path} annotation id {ann.get('id')} (annotations[{index}], image {key!r})"
            cat_id = _integer(ann, "category_id", ann_where)
            if cat_id not in label_of_id:
                raise DatasetError(
                    f"{ann_where}: category id {cat_id} is not in the file's categories {sorted(source_names)}"
                )
            label = label_of_id[cat_id]
            if label is None:
                report.drop_box(f"category {source_names[cat_id]!r} mapped to nothing", ann_where)
                continue
            box = clean_xywh(ann.get("bbox"), width, height, report, ann_where)
            if box is None:
                continue
            area = _number(ann, "area", ann_where) if ann.get("area") is not None else None
            iscrowd = _integer(ann, "iscrowd", ann_where) if ann.get("iscrowd") is not None else 0
            if _is_integer(ann.get("id")):
                object_id = int(ann["id"])
            else:
                object_id, next_id = next_id, next_id + 1
                report.change_box(NUMBERED, ann_where)
            columns.add_object_counted(report, object_id, box, label, area, iscrowd=iscrowd)
        columns.add_image(relative, image_id, width, height, **({"coco_image_id": str(key)} if numbered else {}))
        report.images += 1

    check_missing(report, missing, len(coco["images"]), labels_path, images_dir, max_missing)
    return columns.build(), report
