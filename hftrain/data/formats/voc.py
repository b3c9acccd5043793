"""Read PASCAL VOC XML annotations into the project's schema, in two layouts.

**Devkit** (``read_voc``): ``VOCdevkit/VOC<year>/{Annotations/<id>.xml, JPEGImages/<id>.jpg,
ImageSets/Main/<split>.txt}``. A set is named ``<year>/<split>`` (``2007/trainval``; the
``VOC`` prefix is optional), and several combine: ``["2007/trainval", "2012/trainval"]`` is the
usual VOC07+12. The image of ``Annotations/<id>.xml`` is ``JPEGImages/<id>.jpg``, as the devkit
and every reference loader take it; ``<filename>`` is not used (XMLs whose ``<filename>`` names
another file are counted in the report's kept images). Image paths are relative to the ``VOCdevkit``
folder. Classes: the 20 PASCAL classes in the standard order, unless ``class_names`` is given.

**Folder** (``read_voc_folder``): what LabelImg, CVAT and Roboflow write as "Pascal VOC", a
folder of XML files (one per image, ``<annotation>`` root) and a folder of images, which may be
the same folder. The image of ``<stem>.xml`` is the file of the image folder with the same stem
(``.jpg``, ``.jpeg``, ``.png``, ``.bmp``, ``.webp``, ``.tif``, ``.tiff``, any case); only when
no image has that stem is the XML's ``<filename>`` (its last path component, looked up in the
image folder) used, each such image counted in the report's kept images. Optional list files (one image id,
i.e. XML stem, per line, as ``ImageSets/Main/<split>.txt``) choose the XMLs; without them every
XML of the folder is read, and images without an XML are counted as dropped. Classes: the names
found in the XML files sorted by name, unless ``class_names`` is given (then any other name is
an error naming the file). Image paths are relative to the image folder (not recursive).

Conventions (the devkit's, and those of py-faster-rcnn / detectron2 / mmdetection, for both
layouts):

- ``bndbox`` corners are 1-based inclusive pixels: ``xmin..xmax`` covers ``xmax - xmin + 1``
  pixels starting at 0-based ``xmin - 1``, so ``bbox = [xmin - 1, ymin - 1, xmax - xmin + 1,
  ymax - ymin + 1]`` (a box touching the right border ends exactly at ``width``; a 0-based
  ``xmin = 0`` from another tool is clipped to the image and counted);
- ``difficult`` objects are kept with ``difficult = 1``: VOC evaluation ignores them, COCO
  evaluation treats them as ignore regions (like crowd) and training skips them; a
  ``<difficult>`` that is not a number is an error naming the file; ``truncated`` and ``pose``
  are not kept (the schema has no field);
- only the ``object`` elements directly under ``annotation`` are read: the person-layout
  ``part`` boxes nested in an object (head, hand, foot) are not objects;
- the size comes from ``<size>``; where it is missing or zero, from the image header.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

import datasets
from PIL import Image

from hftrain.data.formats.boxes import clean_xywh
from hftrain.data.formats.coco import MISSING_IMAGE, DatasetError, check_missing
from hftrain.data.formats.columns import DetectionColumns
from hftrain.data.formats.report import ConversionReport
from hftrain.data.formats.image_paths import ImageRoot
from hftrain.data.decode import IMAGE_EXTENSIONS

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


RENAMED = "<filename> names another file: the image is JPEGImages/<id>.jpg, as in the devkit"
BY_FILENAME = "image found by the XML's <filename> (no image has the XML's name)"


@dataclass
class _Image:
    """One parsed XML: its image and its objects (name, corners or None when malformed, difficult, where)."""

    relative: str
    voc_id: str
    width: int
    height: int
    objects: list[tuple[str, tuple[float, float, float, float] | None, int, str]] = field(default_factory=list)


def _number(element: ET.Element | None, tag: str, where: str) -> int:
    """The integer in ``element/tag`` (0 when absent or empty); DatasetError naming ``where`` when it is no number."""
    node = element.find(tag) if element is not None else None
    if node is None or node.text is None or not node.text.strip():
        return 0
    try:
        return int(float(node.text))
    except (ValueError, OverflowError):
        raise DatasetError(f"{where}: <{tag}> {node.text.strip()!r} is not a number") from None


def _parse_xml(xml_path: Path, where_listed: str) -> ET.Element:
    try:
        annotation = ET.parse(xml_path).getroot()
    except FileNotFoundError:
        raise DatasetError(f"{xml_path}: annotation file not found ({where_listed})") from None
    except ET.ParseError as err:
        raise DatasetError(f"{xml_path}: not valid XML ({err})") from None
    if annotation.tag != "annotation":
        raise DatasetError(f"{xml_path}: not a VOC annotation (root element <{annotation.tag}>, expected <annotation>)")
    return annotation


def _read_image(annotation: ET.Element, xml_path: Path, path: Path, relative: str, voc_id: str,
                report: ConversionReport) -> _Image:
    """The size (from ``<size>``, else the image header) and objects of one parsed XML."""
    size = annotation.find("size")
    width, height = _number(size, "width", str(xml_path)), _number(size, "height", str(xml_path))
    if not width or not height:
        try:
            with Image.open(path) as image:
                width, height = image.size
        except OSError as err:
            raise DatasetError(f"{xml_path}: no <size> and the image {path} cannot be read ({err})") from None
        report.change_box("image size read from the image (no <size>)", str(xml_path))
    parsed = _Image(relative, voc_id, width, height)
    for number, obj in enumerate(annotation.findall("object")):
        where = f"{xml_path} object {number}"
        name = (obj.findtext("name") or "").strip()
        if not name:
            raise DatasetError(f"{where}: no <name>")
        bndbox = obj.find("bndbox")
        try:
            corners = tuple(float(bndbox.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax"))
        except (AttributeError, TypeError, ValueError):
            corners = None
        parsed.objects.append((name, corners, 1 if _number(obj, "difficult", where) else 0, where))
    return parsed


def _class_list(base: list[str], category_map: dict[str, str | None]) -> list[str]:
    names = list(base)
    for target in category_map.values():
        if target is not None and target not in names:
            names.append(target)
    return names


def _build(images: list[_Image], class_names: list[str], category_map: dict[str, str | None],
           report: ConversionReport, known: str) -> datasets.Dataset:
    """The dataset of the parsed images; ``known`` names the class list in errors."""
    label_of = {name: i for i, name in enumerate(class_names)}
    columns = DetectionColumns(class_names, {"voc_id": datasets.Value("string")})
    for image in images:
        for name, corners, difficult, where in image.objects:
            if name in category_map:
                target = category_map[name]
                if target is None:
                    report.drop_box(f"category {name!r} mapped to nothing", where)
                    continue
                name = target
            if name not in label_of:
                raise DatasetError(f"{where}: unknown category {name!r} ({known}: {', '.join(class_names)}); "
                                   "map it with category_map")
            if corners is None:
                report.drop_box("malformed bbox", where)
                continue
            xmin, ymin, xmax, ymax = corners
            box = clean_xywh([xmin - 1, ymin - 1, xmax - xmin + 1, ymax - ymin + 1], image.width, image.height,
                             report, where)
            if box is not None:
                columns.add_object_counted(report, columns.objects_added() + 1, box, label_of[name],
                                           difficult=difficult)
        columns.add_image(image.relative, len(columns) + 1, image.width, image.height, voc_id=image.voc_id)
        report.images += 1
    return columns.build()


def read_voc(
    devkit_dir: str | Path,
    sets: list[str] | tuple[str, ...] = ("2007/trainval",),
    category_map: dict[str, str | None] | None = None,
    max_missing: float = 0.0,
    check_files: bool = True,
    class_names: list[str] | None = None,
) -> tuple[datasets.Dataset, ConversionReport]:
    """Read the listed sets of a ``VOCdevkit`` folder.

    ``category_map`` maps a source name to one of the classes, a new class (appended) or
    ``None`` (dropped, counted). An unmapped unknown name is an error naming the file. An
    image listed by two of the sets is kept once, the repeat counted. ``class_names``
    replaces the 20 PASCAL classes (a custom dataset in the devkit layout).
    """
    devkit = Path(devkit_dir)
    if not devkit.is_dir():
        raise DatasetError(f"{devkit}: VOCdevkit folder not found")
    if not sets:
        raise DatasetError(f"{devkit}: no VOC sets given (e.g. 2007/trainval)")
    if not any(child.is_dir() and child.name.upper().startswith("VOC") for child in devkit.iterdir()):
        raise DatasetError(
            f"{devkit}: not a VOCdevkit folder (no VOC<year> folder in it); for a folder of XML files beside "
            "an image folder give both: --images IMAGES --labels ANNOTATIONS (data.<split>.images / labels)"
        )
    category_map = dict(category_map or {})
    classes = _class_list(class_names or VOC_CLASSES, category_map)
    report = ConversionReport(source=f"{devkit} {'+'.join(sets)}")
    root = ImageRoot(devkit)
    seen: set[str] = set()
    parsed: list[_Image] = []
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
            annotation = _parse_xml(xml_path, f"listed by set {spec}")
            relative, exists = root.check(f"{year}/JPEGImages/{image_name}.jpg", str(xml_path))
            file_name = (annotation.findtext("filename") or "").strip()
            if file_name and file_name != f"{image_name}.jpg":
                report.keep_image(RENAMED, f"{xml_path}: {file_name}")
            path = devkit / relative
            if check_files and not exists:
                missing += 1
                report.drop_image(MISSING_IMAGE, str(path))
                continue
            parsed.append(_read_image(annotation, xml_path, path, relative, voc_id, report))

    check_missing(report, missing, total, report.source, devkit, max_missing)
    if class_names:
        report.notes.append(f"classes as given: {', '.join(classes)}")
    return _build(parsed, classes, category_map, report, "classes" if class_names else "VOC classes"), report


def read_id_list(list_file: Path) -> list[str]:
    """The ids of a list file: the first field of each non-empty line."""
    if not list_file.is_file():
        raise DatasetError(f"{list_file}: list file not found")
    return [line.split()[0] for line in list_file.read_text().splitlines() if line.split()]


def _image_index(images_dir: Path) -> dict[str, list[str]]:
    """Image file names of a folder by stem."""
    index: dict[str, list[str]] = {}
    with os.scandir(images_dir) as entries:
        for entry in entries:
            stem, extension = os.path.splitext(entry.name)
            if extension.lower() in IMAGE_EXTENSIONS and entry.is_file():
                index.setdefault(stem, []).append(entry.name)
    return index


def voc_folder_xmls(annotations_dir: str | Path, list_files: list[str] | None = None) -> list[tuple[Path, str]]:
    """(XML path, where it was listed) of a VOC folder: those named by the list files, or every ``*.xml``."""
    annotations = Path(annotations_dir)
    if not annotations.is_dir():
        raise DatasetError(f"{annotations}: annotation folder not found")
    if list_files:
        return [(annotations / f"{image_id}.xml", f"listed by {list_file}")
                for list_file in list_files for image_id in read_id_list(Path(list_file))]
    xmls = sorted(annotations / name for name in os.listdir(annotations) if name.lower().endswith(".xml"))
    if not xmls:
        devkit_like = any(child.name.upper().startswith("VOC") and (child / "Annotations").is_dir()
                          for child in annotations.iterdir())
        hint = ("; it looks like a VOCdevkit: give it as --images (data.<split>.images) without --labels"
                if devkit_like else "")
        raise DatasetError(f"{annotations}: no .xml files in this folder{hint}")
    return [(xml, f"in {annotations}") for xml in xmls]


def read_voc_folder(
    images_dir: str | Path,
    annotations_dir: str | Path,
    list_files: list[str] | None = None,
    class_names: list[str] | None = None,
    category_map: dict[str, str | None] | None = None,
    max_missing: float = 0.0,
    check_files: bool = True,
) -> tuple[datasets.Dataset, ConversionReport]:
    """Read a folder of VOC XML files whose images lie in ``images_dir`` (see the module docstring).

    ``list_files``: files of image ids choosing the XMLs (None: every XML). ``class_names``: the
    classes in this order (None: those found in the files, sorted by name). ``category_map``:
    as for :func:`read_voc`; the targets join the found classes. ``check_files=False`` keeps an XML
    whose image is not in the folder (as ``<filename>``, else ``<stem>.jpg``) instead of counting it missing.
    """
    images_root, annotations = Path(images_dir), Path(annotations_dir)
    if not images_root.is_dir():
        raise DatasetError(f"{images_root}: image folder not found")
    xmls = voc_folder_xmls(annotations, list_files)
    category_map = dict(category_map or {})
    report = ConversionReport(source=f"{annotations}" + (f" {'+'.join(map(str, list_files))}" if list_files else ""))
    index = _image_index(images_root)
    by_name = {name for names in index.values() for name in names}
    used: dict[str, str] = {}
    seen: set[str] = set()
    parsed: list[_Image] = []
    missing = 0

    for xml_path, listed in xmls:
        stem = xml_path.stem
        if stem in seen:
            report.drop_image("listed more than once", f"{stem} ({listed})")
            continue
        seen.add(stem)
        annotation = _parse_xml(xml_path, listed)
        file_name = os.path.basename((annotation.findtext("filename") or "").strip().replace("\\", "/"))
        candidates = index.get(stem, [])
        fallback = False
        if len(candidates) > 1:
            if file_name not in candidates:
                raise DatasetError(f"{xml_path}: several images are named {stem}.* ({', '.join(sorted(candidates))}) "
                                   f"and <filename> {file_name!r} names none of them")
            name = file_name
        elif candidates:
            name = candidates[0]
        elif file_name in by_name:
            name, fallback = file_name, True
        elif not check_files:  # kept unchecked: <filename>, else <stem>.jpg
            name = file_name or f"{stem}.jpg"
        else:
            missing += 1
            report.drop_image(MISSING_IMAGE, f"{images_root / stem}.* ({xml_path})")
            continue
        if name in used:
            report.drop_image("image already annotated by another XML", f"{xml_path} ({name}, first: {used[name]})")
            continue
        used[name] = xml_path.name
        if fallback:
            report.keep_image(BY_FILENAME, f"{xml_path} -> {file_name}")
        parsed.append(_read_image(annotation, xml_path, images_root / name, name, stem, report))

    check_missing(report, missing, len(xmls), report.source, images_root, max_missing)
    if not list_files:
        for stem, names in sorted(index.items()):
            for name in names:
                if name not in used:
                    report.drop_image("image without an XML file", str(images_root / name))
    if class_names:
        classes = _class_list(class_names, category_map)
        report.notes.append(f"classes as given: {', '.join(classes)}")
    else:
        found = {category_map.get(name, name) for image in parsed for name, *_ in image.objects}
        classes = sorted(name for name in found if name is not None)
        if not classes:
            raise DatasetError(f"{annotations}: no objects in the XML files, so no class names; give them "
                               "(--classes / data.class_names)")
        report.notes.append(f"classes found in the XML files (sorted by name): {', '.join(classes)}")
    return _build(parsed, classes, category_map, report, "classes"), report
