"""Read an ultralytics YOLO detection dataset (``data.yaml`` + one ``.txt`` per image) into the schema.

The conventions are ultralytics' (``check_det_dataset``, ``BaseDataset.get_img_files``,
``img2label_paths``, ``verify_image_label``), with the differences marked *hftrain*:

- ``data.yaml``: ``path`` is the dataset root; absent or empty, the yaml's folder; relative,
  taken from the yaml's folder (*hftrain*; ultralytics takes it from the working directory, which
  is tried second). ``train``/``val``/``test`` (any key can be named as a set) are each a folder
  of images, a list file of image paths, or a list of those, relative to the root; an entry
  ``../x`` that does not exist is tried as ``x`` (Roboflow exports write ``train: ../train/images``
  beside the yaml). ``names`` is a list or a dict ``{0: name, 1: ...}`` with ids 0..n-1; ``nc``,
  when given, must equal their number (without ``names``: ``class_0`` ... ``class_{nc-1}``).
- Images: a folder is searched recursively for files with an image suffix (``jpg``, ``png`` ...,
  any case), hidden files and folders skipped; a list file holds one path per line, ``./x`` and
  plain relative paths from the list file's folder (*hftrain*: ultralytics reads plain relative
  lines from the working directory), absolute paths as they are. Entries without an image
  suffix are counted. Images are sorted by path; one listed twice (or by two sets) is kept once,
  counted. Every image must lie under the root; image paths are stored relative to it.
- Labels: the image path with its last ``/images/`` component replaced by ``/labels/`` and the
  suffix by ``.txt`` (the path as written: symbolic links are not resolved first). No label
  file, or an empty one, is an image without objects, kept and counted (``kept_images``).
- Lines ``class cx cy w h``, normalised by the image's width and height, become absolute COCO
  ``[x, y, w, h]`` with the image's real size: its header read with PIL, width and height
  swapped for the EXIF orientations that turn it by 90 degrees (5-8), as training decodes it.
- A line of ``class x1 y1 x2 y2 x3 y3 ...`` (an odd count of at least 7 fields: a segmentation
  polygon) becomes the box around its points, as ultralytics' ``segments2boxes``; counted
  (*hftrain*: decided per line; ultralytics switches a whole file to polygons when any line has
  more than 6 fields).
- Coordinates may leave [0, 1] by ``COORDINATE_TOLERANCE`` (ultralytics' 1 %); the box is then
  clipped to the image, counted. Further out, a non-numeric or non-finite value, or a field
  count that is neither 5 nor a polygon's: the line is dropped, counted with ``file:line``
  (*hftrain*: ultralytics drops the whole image). Boxes under 1 px after clipping are dropped,
  counted, as by every reader (``boxes.MIN_BOX_SIDE``). A line repeating an earlier line of the file is dropped,
  counted (ultralytics removes duplicate rows too).
- A class id outside 0..n-1 is an error naming the file and line (the names do not fit the
  labels; as an unknown category is for COCO and VOC).
- A missing or unreadable image is dropped and counted; more than ``max_missing`` of them (a
  fraction, default 0) is an error.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import datasets
import yaml
from PIL import Image

from hftrain.data.decode import SWAPPING_ORIENTATIONS, exif_orientation
from hftrain.data.formats.boxes import MIN_BOX_SIDE
from hftrain.data.formats.coco import MISSING_IMAGE, DatasetError
from hftrain.data.formats.columns import DetectionColumns
from hftrain.data.formats.image_paths import ImageRoot
from hftrain.data.formats.report import ConversionReport

IMAGE_SUFFIXES = {"bmp", "dng", "jpeg", "jpg", "mpo", "png", "tif", "tiff", "webp", "pfm", "heic"}
"""ultralytics' ``IMG_FORMATS``: the suffixes (compared lower-case) that make a file an image."""
COORDINATE_TOLERANCE = 0.01
"""Normalised coordinates may lie this far outside [0, 1] (then clipped); further out, dropped."""
UNREADABLE_IMAGE = "unreadable image"
NO_LABEL_FILE = "no label file (image without objects)"
EMPTY_LABEL_FILE = "empty label file (image without objects)"


class YoloDataset:
    """A parsed ``data.yaml``: its root, class names and split entries."""

    def __init__(self, data_yaml: str | Path):
        self.yaml_path = Path(data_yaml)
        if self.yaml_path.is_dir():
            raise DatasetError(f"{self.yaml_path}: a folder; give the dataset's data.yaml file")
        try:
            data = yaml.safe_load(self.yaml_path.read_text())
        except FileNotFoundError:
            raise DatasetError(f"{self.yaml_path}: data.yaml not found") from None
        except yaml.YAMLError as err:
            raise DatasetError(f"{self.yaml_path}: not valid YAML ({err})") from None
        if not isinstance(data, dict):
            raise DatasetError(f"{self.yaml_path}: top level is a {type(data).__name__}, not a mapping "
                               "(is this an ultralytics data.yaml?)")
        self.data = data
        self.root = self._root()
        self.class_names = self._class_names()

    def _root(self) -> Path:
        folder = Path(os.path.abspath(self.yaml_path.parent))
        given = self.data.get("path")
        if given in (None, ""):
            return folder
        given = Path(str(given)).expanduser()
        if given.is_absolute():
            candidates = [given]
        else:
            candidates = [folder / given, Path(os.path.abspath(given))]
        for candidate in candidates:
            if candidate.is_dir():
                return Path(os.path.normpath(candidate))
        raise DatasetError(f"{self.yaml_path}: path {str(given)!r}: no such folder (tried "
                           + ", ".join(str(c) for c in candidates) + ")")

    def _class_names(self) -> list[str]:
        names, nc = self.data.get("names"), self.data.get("nc")
        where = f"{self.yaml_path}: names"
        if names is None:
            if nc is None:
                raise DatasetError(f"{self.yaml_path}: neither 'names' nor 'nc' is given")
            names = [f"class_{i}" for i in range(_count(nc, self.yaml_path))]
        elif isinstance(names, dict):
            try:
                by_id = {int(k): str(v) for k, v in names.items()}
            except (TypeError, ValueError):
                raise DatasetError(f"{where}: the keys must be class ids 0, 1, ... (got {list(names)})") from None
            if sorted(by_id) != list(range(len(by_id))):
                raise DatasetError(f"{where}: the class ids must run 0..{len(by_id) - 1} (got {sorted(by_id)})")
            names = [by_id[i] for i in range(len(by_id))]
        elif isinstance(names, list):
            names = [str(n) for n in names]
        else:
            raise DatasetError(f"{where}: must be a list or a dict {{id: name}}, got {type(names).__name__}")
        if not names:
            raise DatasetError(f"{where}: no classes")
        if nc is not None and _count(nc, self.yaml_path) != len(names):
            raise DatasetError(f"{self.yaml_path}: nc is {nc} but names has {len(names)} classes")
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise DatasetError(f"{where}: repeated class names {repeated}")
        return names

    def entries(self, key: str) -> list[Path]:
        """The folders and list files of one set (``train``, ``val``, ``test`` ...), checked to exist."""
        if key not in self.data:
            known = [k for k in ("train", "val", "test") if self.data.get(k)]
            raise DatasetError(f"{self.yaml_path}: no set {key!r} (sets with images: {', '.join(known) or 'none'})")
        value = self.data[key]
        if value in (None, "", []):
            raise DatasetError(f"{self.yaml_path}: set {key!r} is empty")
        values = value if isinstance(value, list) else [value]
        out = []
        for item in values:
            if not isinstance(item, str) or not item:
                raise DatasetError(f"{self.yaml_path}: {key}: {item!r} is not a folder or list file path")
            path = self.root / item
            if not path.exists() and item.startswith("../"):
                path = self.root / item[3:]  # ultralytics' fallback, for Roboflow's "../train/images"
            if not path.exists():
                raise DatasetError(f"{self.yaml_path}: {key}: {item!r} not found (looked for {self.root / item})")
            out.append(Path(os.path.normpath(path)))
        return out


def _count(nc, where) -> int:
    try:
        count = int(nc)
    except (TypeError, ValueError):
        raise DatasetError(f"{where}: nc {nc!r} is not a number") from None
    if count < 1:
        raise DatasetError(f"{where}: nc must be at least 1, got {count}")
    return count


def is_image_name(name: str) -> bool:
    return name.rpartition(".")[2].lower() in IMAGE_SUFFIXES and "." in name


def label_path_of(image_path: str) -> str:
    """ultralytics' ``img2label_paths``: the last ``/images/`` becomes ``/labels/``, the suffix ``.txt``."""
    images, labels = f"{os.sep}images{os.sep}", f"{os.sep}labels{os.sep}"
    head, found, tail = image_path.rpartition(images)
    path = head + labels + tail if found else image_path
    return path.rpartition(".")[0] + ".txt"


def _walk(folder: Path, folders: list[Path]) -> list[str]:
    """Image files under ``folder`` (hidden entries skipped, linked folders followed once)."""
    found, seen = [], set()
    for current, subdirs, files in os.walk(folder, followlinks=True):
        real = os.path.realpath(current)
        if real in seen:
            subdirs[:] = []
            continue
        seen.add(real)
        folders.append(Path(current))
        subdirs[:] = [d for d in subdirs if not d.startswith(".")]
        found.extend(os.path.join(current, f) for f in files if not f.startswith(".") and is_image_name(f))
    return found


def _read_list(list_file: Path, report: ConversionReport) -> list[str]:
    """Image paths of a list file: ``./x`` and ``x`` from the list file's folder, absolute as they are."""
    try:
        lines = list_file.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise DatasetError(f"{list_file}: not a text list of image paths") from None
    parent = os.path.abspath(list_file.parent)
    out = []
    for number, line in enumerate(lines, start=1):
        entry = line.strip()
        if not entry:
            continue
        if not is_image_name(entry):
            report.drop_image("list entry without an image suffix", f"{list_file}:{number}")
            continue
        path = entry if os.path.isabs(entry) else os.path.join(parent, entry[2:] if entry.startswith("./") else entry)
        out.append(os.path.normpath(path))
    return out


def list_images(dataset: YoloDataset, sets: list[str], report: ConversionReport | None = None
                ) -> tuple[list[str], list[Path]]:
    """(absolute image paths of the sets, sorted and without repeats; the list files and folders read)."""
    report = report or ConversionReport(source=str(dataset.yaml_path))
    images: list[str] = []
    read: list[Path] = []
    for key in sets:
        found = []
        for entry in dataset.entries(key):
            if entry.is_dir():
                found.extend(_walk(entry, read))
            else:
                read.append(entry)
                found.extend(_read_list(entry, report))
        images.extend(sorted(found))
    unique, seen = [], set()
    for path in images:
        if path in seen:
            report.drop_image("listed twice (or by two sets)", path)
            continue
        seen.add(path)
        unique.append(path)
    return unique, read


def yolo_source_files(data_yaml: str | Path, sets: list[str]) -> list[Path]:
    """The files a conversion reads, to key its cache: data.yaml, the list files, every folder
    searched (images added or removed change its mtime) and each image's label file."""
    dataset = YoloDataset(data_yaml)
    images, read = list_images(dataset, sets)
    return [dataset.yaml_path, *read, *(Path(label_path_of(p)) for p in images)]


def displayed_size(path: str) -> tuple[int, int]:
    """(width, height) of an image as training decodes it, from its header: swapped when the EXIF
    orientation turns it by 90 degrees. A PNG's eXIf chunk is read only when it precedes the
    pixels (PIL would decode the whole image to look behind them)."""
    with Image.open(path) as image:
        width, height = image.size
        if image.format == "PNG" and "exif" not in image.info:
            return width, height
        turned = exif_orientation(image) in SWAPPING_ORIENTATIONS  # a corrupt EXIF block: none, as the scan
    return (height, width) if turned else (width, height)


def _parse_line(fields: list[str]) -> tuple[str, float, float, float, float] | str:
    """(class field, x1, y1, x2, y2) normalised corners, or the reason the line is dropped."""
    if len(fields) == 5:
        try:
            cx, cy, w, h = (float(v) for v in fields[1:])
        except ValueError:
            return "malformed line (non-numeric coordinate)"
        values = (cx, cy, w, h)
        corners = (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)
    elif len(fields) >= 7 and len(fields) % 2 == 1:
        try:
            values = tuple(float(v) for v in fields[1:])
        except ValueError:
            return "malformed line (non-numeric coordinate)"
        xs, ys = values[0::2], values[1::2]
        corners = (min(xs), min(ys), max(xs), max(ys))
    else:
        return f"malformed line ({len(fields)} fields, expected 5: class cx cy w h)"
    if not all(math.isfinite(v) for v in values):
        return "malformed line (non-finite coordinate)"
    if not all(-COORDINATE_TOLERANCE <= v <= 1 + COORDINATE_TOLERANCE for v in values):
        return "coordinates outside [0, 1] (not normalised?)"
    return (fields[0], *corners)


def _class_id(field: str, count: int, where: str) -> int:
    try:
        value = float(field)
    except ValueError:
        raise DatasetError(f"{where}: class {field!r} is not a class id") from None
    if not value.is_integer() or not 0 <= value < count:
        raise DatasetError(f"{where}: class {field!r} is not a class id 0..{count - 1} of data.yaml's names")
    return int(value)


def read_yolo(
    data_yaml: str | Path,
    sets: list[str],
    category_map: dict[str, str | None] | None = None,
    max_missing: float = 0.0,
) -> tuple[datasets.Dataset, ConversionReport]:
    """Read the sets (``["train"]``, ``["val"]``, several combine) of the dataset ``data_yaml`` describes.

    ``category_map`` renames classes of ``names`` (``None`` drops that class, counted); two names
    mapped to one class merge. Image paths in the rows are relative to the dataset root.
    """
    if not sets:
        raise DatasetError(f"{data_yaml}: name the set(s) to read (train, val or test)")
    source = YoloDataset(data_yaml)
    report = ConversionReport(source=f"{source.yaml_path} {'+'.join(sets)}")
    category_map = category_map or {}
    class_names: list[str] = []
    label_of: list[int | None] = []
    for name in source.class_names:
        target = category_map.get(name, name)
        if target is not None and target not in class_names:
            class_names.append(target)
        label_of.append(None if target is None else class_names.index(target))
    if not class_names:
        raise DatasetError(f"{source.yaml_path}: category_map drops every class")

    images, _ = list_images(source, list(sets), report)
    if not images:
        raise DatasetError(f"{source.yaml_path}: no images in set(s) {', '.join(sets)}")
    columns = DetectionColumns(class_names)
    root = ImageRoot(source.root)
    root_text = str(source.root)
    missing = 0
    for path in images:
        relative = os.path.relpath(path, root_text)
        if relative == os.pardir or relative.startswith(os.pardir + os.sep):
            raise DatasetError(f"{source.yaml_path}: image {path} lies outside the dataset root {source.root} "
                               "(set 'path' in data.yaml to a folder holding every image)")
        relative, exists = root.check(relative, str(source.yaml_path))
        if not exists:
            missing += 1
            report.drop_image(MISSING_IMAGE, path)
            continue
        try:
            width, height = displayed_size(path)
        except Exception as err:  # PIL raises several types for a damaged header
            missing += 1
            report.drop_image(UNREADABLE_IMAGE, f"{path} ({err})")
            continue
        label_file = label_path_of(path)
        try:
            with open(label_file, encoding="utf-8") as handle:
                lines = handle.read().splitlines()
        except FileNotFoundError:
            lines = None
            report.keep_image(NO_LABEL_FILE, path)
        except (OSError, UnicodeDecodeError) as err:
            raise DatasetError(f"{label_file}: cannot read the label file ({err})") from None
        if lines is not None and not any(line.strip() for line in lines):
            report.keep_image(EMPTY_LABEL_FILE, label_file)
        seen_lines: set[tuple] = set()
        for number, line in enumerate(lines or (), start=1):
            fields = line.split()
            if not fields:
                continue
            where = f"{label_file}:{number}"
            parsed = _parse_line(fields)
            if isinstance(parsed, str):
                report.drop_box(parsed, where)
                continue
            cls = _class_id(parsed[0], len(source.class_names), where)
            if (cls, *parsed[1:]) in seen_lines:
                report.drop_box("duplicate line", where)
                continue
            seen_lines.add((cls, *parsed[1:]))
            label = label_of[cls]
            if label is None:
                report.drop_box(f"category {source.class_names[cls]!r} mapped to nothing", where)
                continue
            if len(fields) > 5:
                report.change_box("polygon converted to its bounding box", where)
            box = _pixel_box(parsed[1:], width, height, report, where)
            if box is not None:
                columns.add_object_counted(report, columns.objects_added() + 1, box, label)
        columns.add_image(relative, len(columns) + 1, width, height)
        report.images += 1

    if images and missing / len(images) > max_missing:
        reason = MISSING_IMAGE if MISSING_IMAGE in report.dropped_images else UNREADABLE_IMAGE
        raise DatasetError(
            f"{source.yaml_path}: {missing} of {len(images)} images are missing or unreadable "
            f"(e.g. {report.examples[reason][0]}); allowed fraction is {max_missing:g} (max_missing)"
        )
    return columns.build(), report


def _pixel_box(corners, width: int, height: int, report: ConversionReport, where: str) -> list[float] | None:
    """Normalised corners -> absolute ``[x, y, w, h]``, clipped to the image (counted); None
    (counted) when a side is under ``MIN_BOX_SIDE`` pixels."""
    x1, y1, x2, y2 = corners
    clipped = (max(0.0, x1), max(0.0, y1), min(1.0, x2), min(1.0, y2))
    if clipped != (x1, y1, x2, y2):
        report.change_box("clipped to image", where)
    x1, y1, x2, y2 = clipped
    box = [x1 * width, y1 * height, (x2 - x1) * width, (y2 - y1) * height]
    if box[2] < MIN_BOX_SIDE or box[3] < MIN_BOX_SIDE:
        report.drop_box(f"smaller than {MIN_BOX_SIDE:g} px after clipping", where)
        return None
    return box
