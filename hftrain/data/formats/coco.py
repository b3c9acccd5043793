"""Read a COCO instances JSON into the project's dataset schema.

Conventions (those of the official COCO API):

- category ids need not be contiguous (COCO's 80 run 1..90): they map to contiguous labels
  0..K-1 in increasing id order, names kept in the ClassLabel and each class's original ids in
  ``report.category_ids`` (saved in the sidecar), so predictions can be written back in them;
- ``iscrowd`` is kept: crowd boxes are ignore regions in evaluation and are not trained on;
- images without annotations are kept;
- ``area`` is taken from the annotation (segment area for COCO), or ``w * h`` when absent;
- boxes are clipped to the image, and boxes under 1 px or with non-finite coordinates dropped,
  every one counted in the report.
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

    category_map = category_map or {}
    source_names = {int(c["id"]): str(c["name"]) for c in coco["categories"]}
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

    by_image: dict[int, list[dict]] = {}
    for ann in coco.get("annotations", []):
        by_image.setdefault(int(ann["image_id"]), []).append(ann)

    columns = DetectionColumns(class_names)
    root = ImageRoot(images_dir)
    missing = 0
    seen_ids: set[int] = set()
    for entry in coco["images"]:
        image_id = int(entry["id"])
        where = f"{labels_path} image id {image_id} ({entry.get('file_name')!r})"
        if image_id in seen_ids:
            raise DatasetError(f"{where}: duplicate image id")
        seen_ids.add(image_id)
        relative, exists = root.check(entry.get("file_name", ""), where)
        if check_files and not exists:
            missing += 1
            report.drop_image(MISSING_IMAGE, str(images_dir / relative))
            continue
        width, height = int(entry["width"]), int(entry["height"])
        for ann in by_image.get(image_id, []):
            ann_where = f"{labels_path} annotation id {ann.get('id')} (image {image_id})"
            cat_id = int(ann["category_id"])
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
            area = float(ann["area"]) if ann.get("area") is not None else None
            columns.add_object_counted(
                report, int(ann.get("id", columns.pending_objects())), box, label, area,
                iscrowd=int(ann.get("iscrowd", 0)),
            )
        columns.add_image(relative, image_id, width, height)
        report.images += 1

    check_missing(report, missing, len(coco["images"]), labels_path, images_dir, max_missing)
    return columns.build(), report
