"""Read BDD100K detection labels (``det_20`` and the 2018 release) into the project's schema.

Files: the current ``det_20`` files (``det_train.json``, ``det_val.json``) and the 2018
``bdd100k_labels_images_{train,val}.json`` are both a JSON list of frames
``{name, attributes {weather, scene, timeofday}, labels [{id, category, attributes, box2d
{x1, y1, x2, y2} | poly2d}]}``. Conventions, those of the official ``to_coco`` conversion
(bdd100k ``bdd100k/label/to_coco.py`` and scalabel ``label/to_coco.py``):

- classes, in the official order: pedestrian, rider, car, truck, bus, train, motorcycle,
  bicycle, traffic light, traffic sign; the other names map as the official ``det.toml``'s
  ``name_mapping`` (person -> pedestrian, bike -> bicycle, motor -> motorcycle, van -> car,
  caravan -> car);
- the distracting classes become ignore regions (``iscrowd = 1``) of a kept class, as the
  ``ignore_mapping`` of ``det.toml``: other person -> pedestrian, other vehicle -> car,
  trailer -> truck; a label whose ``crowd`` or ``ignored`` attribute is true is an ignore
  region too (scalabel's ``to_coco``: ``iscrowd = crowd or ignored``; a top-level
  ``"ignored": true`` on the label is read the same way);
- box2d corners are inclusive pixel indices: ``bbox = [x1, y1, x2 - x1 + 1, y2 - y1 + 1]``
  (then clipped to the image like every box, the clipping counted);
- labels without ``box2d`` (the 2018 ``drivable area`` and ``lane`` poly2d entries, or
  segmentation-style poly2d objects) are skipped, counted per category;
- frames with no labels (``labels`` absent, null or empty) are kept as background images;
- the frame attributes weather, scene and timeofday become string columns.

The file is a JSON list of frames (the BDD100K releases) or Scalabel's dataset object
``{"frames": [...], "config": {...}, "groups": ...}`` (what scalabel's ``label.io.save`` writes).

Image size: a frame's own ``size`` (``{"width", "height"}``, Scalabel's ``Frame.size``), else
the object form's ``config.imageSize``, else 1280x720 (every BDD100K image; the release files
record no size). ``read_image_sizes=True`` reads each image's header instead; a frame whose own
``size`` differs from its image's is dropped and counted (its boxes would not fit the pixels).

The list form is parsed one frame at a time (the JSON text is scanned, never turned into one
big list of dicts), so a 70,000-frame, 1.3-million-box file converts with a few hundred MB; the
object form is read whole (its config may follow the frames).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import datasets
from PIL import Image

from hftrain.data.formats.boxes import clean_xywh
from hftrain.data.formats.coco import MISSING_IMAGE, DatasetError, check_missing
from hftrain.data.formats.columns import DetectionColumns
from hftrain.data.formats.report import ConversionReport
from hftrain.data.formats.image_paths import ImageRoot

BDD100K_CLASSES = [
    "pedestrian", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle",
    "traffic light", "traffic sign",
]
NAME_MAPPING = {"bike": "bicycle", "caravan": "car", "motor": "motorcycle", "person": "pedestrian", "van": "car"}
"""The official ``bdd100k/configs/det.toml`` ``[name_mapping]``."""
IGNORED_AS = {"other person": "pedestrian", "other vehicle": "car", "trailer": "truck"}
"""Distracting classes: kept as ignore regions (iscrowd=1) of this class, as ``det.toml``'s ``[ignore_mapping]``."""
SIZE_DIFFERS = "frame size differs from its image file's"
BDD100K_IMAGE_SIZE = (1280, 720)
FRAME_ATTRIBUTES = ("weather", "scene", "timeofday")

_WHITESPACE = re.compile(r"[ \t\n\r]*")
_CHUNK = 1 << 24


def iter_json_list(path: Path) -> Iterator[object]:
    """Yield the elements of the JSON list in ``path`` one at a time, reading it in chunks.

    Only one element's objects exist at a time; a malformed file raises DatasetError naming
    the file and the character offset.
    """
    decoder = json.JSONDecoder()
    with open(path, encoding="utf-8") as handle:
        buffer, pos, consumed, eof = "", 0, 0, False

        def refill() -> None:
            nonlocal buffer, pos, consumed, eof
            more = handle.read(_CHUNK)
            eof = len(more) < _CHUNK
            consumed += pos
            buffer, pos = buffer[pos:] + more, 0

        def next_char() -> str:
            """The next non-whitespace character ("" at the end of the file), not consumed."""
            nonlocal pos
            while True:
                pos = _WHITESPACE.match(buffer, pos).end()
                if pos < len(buffer) or eof:
                    return buffer[pos] if pos < len(buffer) else ""
                refill()

        if next_char() != "[":
            raise DatasetError(f"{path}: expected a JSON list of frames at the top level")
        pos += 1
        first = True
        while True:
            char = next_char()
            if char == "]":
                return
            if not first:
                if char != ",":
                    raise DatasetError(f"{path}: expected ',' or ']' at character {consumed + pos}")
                pos += 1
                next_char()
            first = False
            while True:
                try:
                    element, end = decoder.raw_decode(buffer, pos)
                    if end >= len(buffer) and not eof:  # a number may continue in the next chunk
                        raise json.JSONDecodeError("element may continue", buffer, end)
                    break
                except json.JSONDecodeError as err:
                    if eof:
                        raise DatasetError(f"{path}: not valid JSON at character {consumed + err.pos} ({err.msg})") from None
                    refill()
            yield element
            pos = end


def label_file_frames(path: Path) -> tuple[Iterator[object], dict]:
    """(the frames, the Scalabel config or {}) of a label file in either form: a JSON list of
    frames (streamed by :func:`iter_json_list`) or Scalabel's ``{"frames": [...], "config": ...}``."""
    if _first_char(path) != "{":
        return iter_json_list(path), {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise DatasetError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(data.get("frames"), list):
        raise DatasetError(f"{path}: a JSON object without a 'frames' list (expected a list of frames, or "
                           "Scalabel's dataset object {\"frames\": [...], \"config\": ...})")
    config = data.get("config") or {}
    if not isinstance(config, dict):
        raise DatasetError(f"{path}: 'config' is a {type(config).__name__}, not an object")
    return iter(data["frames"]), config


def _first_char(path: Path) -> str:
    """The file's first non-whitespace character ("" for a blank file), read without loading it."""
    with open(path, encoding="utf-8") as handle:
        for chunk in iter(lambda: handle.read(4096), ""):
            if stripped := chunk.lstrip():
                return stripped[0]
    return ""


def _size(size, where: str) -> tuple[int, int] | None:
    """(width, height) of a Scalabel ``ImageSize`` ``{"width", "height"}``; None when absent."""
    if size is None:
        return None
    try:
        width, height = size["width"], size["height"]
        if isinstance(width, bool) or isinstance(height, bool) or int(width) != width or int(height) != height:
            raise ValueError
        if width <= 0 or height <= 0:
            raise ValueError
    except (TypeError, KeyError, ValueError):
        raise DatasetError(f"{where}: {size!r} is not a size {{\"width\": W, \"height\": H}} "
                           "in positive integers") from None
    return int(width), int(height)


def bdd100k_class_names(category_map: dict[str, str | None] | None = None) -> list[str]:
    """The official 10 classes, plus any new name a ``category_map`` introduces (appended)."""
    names = list(BDD100K_CLASSES)
    for target in (category_map or {}).values():
        if target is not None and target not in names:
            names.append(target)
    return names


def _attribute(attributes: dict | None, key: str):
    """An attribute by case-insensitive key (the Scalabel test files write ``Occluded``)."""
    if not attributes:
        return None
    if key in attributes:
        return attributes[key]
    for name, value in attributes.items():
        if name.lower() == key:
            return value
    return None


def read_bdd100k(
    images_dir: str | Path,
    labels_path: str | Path,
    category_map: dict[str, str | None] | None = None,
    max_missing: float = 0.0,
    check_files: bool = True,
    read_image_sizes: bool = False,
) -> tuple[datasets.Dataset, ConversionReport]:
    """Read a BDD100K detection label file whose frame names are relative to ``images_dir``.

    ``category_map`` maps a source category to a class name (one of the ten, or a new name,
    appended after them) or to ``None`` (dropped, counted); it is looked up before the
    built-in legacy and ignore mappings. An unmapped unknown category with a box is an error.
    """
    images_dir, labels_path = Path(images_dir), Path(labels_path)
    if not labels_path.is_file():
        raise DatasetError(f"{labels_path}: label file not found")
    category_map = dict(category_map or {})
    class_names = bdd100k_class_names(category_map)
    label_of = {name: i for i, name in enumerate(class_names)}
    report = ConversionReport(source=str(labels_path))
    columns = DetectionColumns(class_names, {name: datasets.Value("string") for name in FRAME_ATTRIBUTES})
    root = ImageRoot(images_dir)
    seen: set[str] = set()
    missing = total = 0
    # (category) -> (label, iscrowd) or None for "mapped to nothing"; filled on first sight.
    resolved: dict[str, tuple[int, int] | None] = {}

    frames, config = label_file_frames(labels_path)
    default_size = _size(config.get("imageSize"), f"{labels_path} config.imageSize") or BDD100K_IMAGE_SIZE
    for index, frame in enumerate(frames):
        total += 1
        if not isinstance(frame, dict) or "name" not in frame:
            raise DatasetError(f"{labels_path}: frame {index} is not an object with a 'name'")
        name = frame["name"]
        where = f"{labels_path} frame {index} ({name!r})"
        if name in seen:
            raise DatasetError(f"{where}: duplicate frame name")
        seen.add(name)
        relative, exists = root.check(name, where)
        path = images_dir / relative
        if check_files and not exists:
            missing += 1
            report.drop_image(MISSING_IMAGE, str(path))
            continue
        own_size = _size(frame.get("size"), f"{where} size")
        if read_image_sizes:
            try:
                with Image.open(path) as image:
                    width, height = image.size
            except OSError as err:
                raise DatasetError(f"{where}: cannot read the image size of {path} ({err})") from None
            if own_size is not None and own_size != (width, height):
                report.drop_image(SIZE_DIFFERS, f"{where}: size {own_size[0]}x{own_size[1]}, image {width}x{height}")
                continue
        else:
            width, height = own_size or default_size
        for number, label in enumerate(frame.get("labels") or ()):
            category = label.get("category")
            box2d = label.get("box2d")
            label_where = f"{where} label {label.get('id', number)!r}"
            if box2d is None:
                report.drop_box(f"{category!r} label has no box2d (poly2d only)", label_where)
                continue
            if category not in resolved:
                resolved[category] = _resolve_category(category, category_map, label_of, label_where)
            target = resolved[category]
            if target is None:
                report.drop_box(f"category {category!r} mapped to nothing", label_where)
                continue
            class_label, ignore = target
            try:
                x1, y1, x2, y2 = box2d["x1"], box2d["y1"], box2d["x2"], box2d["y2"]
                bbox = [x1, y1, x2 - x1 + 1, y2 - y1 + 1]
            except (KeyError, TypeError):
                report.drop_box("malformed bbox", label_where)
                continue
            box = clean_xywh(bbox, width, height, report, label_where)
            if box is None:
                continue
            attributes = label.get("attributes")
            crowd = 1 if ignore or _attribute(attributes, "crowd") or _attribute(attributes, "ignored") \
                or label.get("ignored") else 0
            columns.add_object_counted(report, columns.objects_added() + 1, box, class_label, iscrowd=crowd)
        attributes = frame.get("attributes") or {}
        columns.add_image(
            relative, index + 1, width, height,
            **{key: attributes.get(key) for key in FRAME_ATTRIBUTES},
        )
        report.images += 1

    check_missing(report, missing, total, labels_path, images_dir, max_missing)
    return columns.build(), report


def _resolve_category(
    category: str, category_map: dict[str, str | None], label_of: dict[str, int], where: str
) -> tuple[int, int] | None:
    """(class label, iscrowd) for a source category; None when the map drops it."""
    if category in category_map:
        target = category_map[category]
        return None if target is None else (label_of[target], 0)
    if category in label_of:
        return label_of[category], 0
    if category in NAME_MAPPING:
        return label_of[NAME_MAPPING[category]], 0
    if category in IGNORED_AS:
        return label_of[IGNORED_AS[category]], 1
    raise DatasetError(
        f"{where}: unknown category {category!r} (known: {', '.join(BDD100K_CLASSES)}, the mapped names "
        f"{sorted(NAME_MAPPING)} and the ignored {sorted(IGNORED_AS)}); map it with category_map"
    )
