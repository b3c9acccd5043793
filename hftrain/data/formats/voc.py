"""Read PASCAL VOC (2007, 2012) detection annotations into the project's schema.

Layout: ``VOCdevkit/VOC<year>/{Annotations/<id>.xml, JPEGImages/<id>.jpg,
ImageSets/Main/<split>.txt}``. A set is named ``<year>/<split>`` (``2007/trainval``; the
``VOC`` prefix is optional), and several combine: ``["2007/trainval", "2012/trainval"]`` is the
usual VOC07+12. Image paths are relative to the ``VOCdevkit`` folder.

Conventions (the devkit's, and those of py-faster-rcnn / detectron2):

- the 20 classes in the standard order (aeroplane ... tvmonitor);
- ``bndbox`` corners are 1-based inclusive pixels: ``xmin..xmax`` covers ``xmax - xmin + 1``
  pixels starting at 0-based ``xmin - 1``, so ``bbox = [xmin - 1, ymin - 1, xmax - xmin + 1,
  ymax - ymin + 1]`` (a box touching the right border ends exactly at ``width``);
- ``difficult`` objects are kept with ``difficult = 1``: VOC evaluation ignores them and
  training skips them; ``truncated`` and ``pose`` are not kept (the schema has no field);
- only the ``object`` elements directly under ``annotation`` are read: the person-layout
  ``part`` boxes nested in an object (head, hand, foot) are not objects;
- the size comes from ``<size>``; where it is missing or zero, from the image header.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import datasets
from PIL import Image

from hftrain.data.formats.boxes import clean_xywh
from hftrain.data.formats.coco import MISSING_IMAGE, DatasetError, check_missing
from hftrain.data.formats.columns import DetectionColumns
from hftrain.data.formats.report import ConversionReport
from hftrain.data.formats.image_paths import ImageRoot

VOC_CLASSES = [
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
]


def parse_voc_set(spec: str) -> tuple[str, str]:
    """``"2007/trainval"`` or ``"VOC2012/val"`` -> (``"VOC2007"``, ``"trainval"``)."""
    parts = spec.strip().strip("/").split("/")
    if len(parts) != 2 or not parts[0] or not parts[1]:
        raise DatasetError(f"VOC set {spec!r}: expected YEAR/SPLIT, e.g. 2007/trainval")
    year, split = parts
    year = year if year.upper().startswith("VOC") else f"VOC{year}"
    return "VOC" + year[3:], split


def voc_set_files(devkit: str | Path, sets: list[str]) -> list[Path]:
    """The ImageSets/Main list file of each set (for cache keys)."""
    out = []
    for spec in sets:
        year, split = parse_voc_set(spec)
        out.append(Path(devkit) / year / "ImageSets" / "Main" / f"{split}.txt")
    return out


def read_voc_ids(devkit: Path, spec: str) -> tuple[str, list[str]]:
    """(year folder, image ids) listed by one set's split file."""
    year, split = parse_voc_set(spec)
    list_file = devkit / year / "ImageSets" / "Main" / f"{split}.txt"
    if not list_file.is_file():
        raise DatasetError(f"VOC set {spec!r}: split file {list_file} not found")
    ids = []
    for line in list_file.read_text().splitlines():
        fields = line.split()
        if fields:
            ids.append(fields[0])  # per-class lists (<class>_<split>.txt) carry a second column
    return year, ids


def _int_text(element: ET.Element | None, tag: str, default: int | None = None) -> int | None:
    node = element.find(tag) if element is not None else None
    if node is None or node.text is None or not node.text.strip():
        return default
    return int(float(node.text))


def read_voc(
    devkit_dir: str | Path,
    sets: list[str] | tuple[str, ...] = ("2007/trainval",),
    category_map: dict[str, str | None] | None = None,
    max_missing: float = 0.0,
    check_files: bool = True,
) -> tuple[datasets.Dataset, ConversionReport]:
    """Read the listed sets of a ``VOCdevkit`` folder.

    ``category_map`` maps a source name to one of the 20 classes, a new class (appended) or
    ``None`` (dropped, counted). An unmapped unknown name is an error naming the file. An
    image listed by two of the sets is kept once, the repeat counted.
    """
    devkit = Path(devkit_dir)
    if not devkit.is_dir():
        raise DatasetError(f"{devkit}: VOCdevkit folder not found")
    if not sets:
        raise DatasetError(f"{devkit}: no VOC sets given (e.g. 2007/trainval)")
    category_map = dict(category_map or {})
    class_names = list(VOC_CLASSES)
    for target in category_map.values():
        if target is not None and target not in class_names:
            class_names.append(target)
    label_of = {name: i for i, name in enumerate(class_names)}
    report = ConversionReport(source=f"{devkit} {'+'.join(sets)}")
    columns = DetectionColumns(class_names, {"voc_id": datasets.Value("string")})
    root = ImageRoot(devkit)
    seen: set[str] = set()
    missing = total = 0

    for spec in sets:
        year, ids = read_voc_ids(devkit, spec)
        for image_name in ids:
            total += 1
            voc_id = f"{year}/{image_name}"
            if voc_id in seen:
                report.drop_image("listed by more than one set", f"{voc_id} ({spec})")
                continue
            seen.add(voc_id)
            xml_path = devkit / root.check(f"{year}/Annotations/{image_name}.xml", f"VOC set {spec}")[0]
            try:
                annotation = ET.parse(xml_path).getroot()
            except FileNotFoundError:
                raise DatasetError(f"{xml_path}: annotation file not found (listed by set {spec})") from None
            except ET.ParseError as err:
                raise DatasetError(f"{xml_path}: not valid XML ({err})") from None
            file_name = (annotation.findtext("filename") or f"{image_name}.jpg").strip()
            relative, exists = root.check(f"{year}/JPEGImages/{file_name}", str(xml_path))
            path = devkit / relative
            if check_files and not exists:
                missing += 1
                report.drop_image(MISSING_IMAGE, str(path))
                continue
            size = annotation.find("size")
            width, height = _int_text(size, "width", 0), _int_text(size, "height", 0)
            if not width or not height:
                try:
                    with Image.open(path) as image:
                        width, height = image.size
                except OSError as err:
                    raise DatasetError(f"{xml_path}: no <size> and the image {path} cannot be read ({err})") from None
                report.change_box("image size read from the image (no <size>)", str(xml_path))
            for number, obj in enumerate(annotation.findall("object")):
                where = f"{xml_path} object {number}"
                name = (obj.findtext("name") or "").strip()
                if name in category_map:
                    target = category_map[name]
                    if target is None:
                        report.drop_box(f"category {name!r} mapped to nothing", where)
                        continue
                    name = target
                if name not in label_of:
                    raise DatasetError(
                        f"{where}: unknown category {name!r} (VOC classes: {', '.join(VOC_CLASSES)}); "
                        "map it with category_map"
                    )
                bndbox = obj.find("bndbox")
                try:
                    xmin, ymin, xmax, ymax = (float(bndbox.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax"))
                except (AttributeError, TypeError, ValueError):
                    report.drop_box("malformed bbox", where)
                    continue
                box = clean_xywh([xmin - 1, ymin - 1, xmax - xmin + 1, ymax - ymin + 1], width, height, report, where)
                if box is None:
                    continue
                difficult = 1 if _int_text(obj, "difficult", 0) else 0
                columns.add_object_counted(report, columns.objects_added() + 1, box, label_of[name], difficult=difficult)
            columns.add_image(relative, len(columns) + 1, width, height, voc_id=voc_id)
            report.images += 1

    check_missing(report, missing, total, report.source, devkit, max_missing)
    return columns.build(), report
