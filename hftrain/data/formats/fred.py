"""Read FRED (Florence RGB-Event Drone, 2025) sequences into the project's schema.

Layout, one folder per sequence under the dataset root (``0/``, ``1/``, ...)::

    <seq>/RGB/*.jpg            RGB frames, named Video_<seq>_<HH_MM_SS.micro>.jpg (wall clock)
    <seq>/Event/Frames/*.png   event frames, named Video_<seq>_frame_<microseconds>.png
    <seq>/RGB_YOLO/*.txt       one YOLO file per RGB frame, same stem: "class cx cy w h" (0..1)
    <seq>/Event_YOLO/*.txt     one YOLO file per event frame, same stem
    <seq>/coordinates.txt      "time: x1, y1, x2, y2[, id[, class]]" in pixels, time in seconds

Choices (FRED's README and released files; documented here because they are choices):

- ``modality`` picks the stream (``rgb`` or ``event``); frames are never matched by position
  across modalities (the two streams have different frame counts).
- Labels come from the modality's per-frame YOLO folder when it exists: each frame is matched
  to the label file with its own stem. A frame without a label file is dropped (counted,
  ``frame has no label file``); a label file whose frame is missing counts as a missing image.
  An empty label file is a frame with no drone and is kept.
- Otherwise from ``coordinates.txt``: one image per timestamp, matched to the frame whose name
  carries that timestamp in microseconds (``13.533198`` -> ``..._frame_13533198.png``; the
  name with the dot removed is tried too). All 4-, 5- and 6-field lines are accepted (track
  ids written as ``1`` or ``1.0``, Windows line endings, several boxes per timestamp when two
  drones fly). Frames with no line at their timestamp are dropped (counted). When the frames
  folder does not exist the image path is the name the frame would have (counted as missing
  when files are checked). RGB frames are named by wall-clock time, which coordinates.txt does
  not use: the RGB stream needs ``RGB_YOLO/``.
- coordinates.txt boxes are corner pixels: ``bbox = [x1, y1, x2 - x1, y2 - y1]``, clipped to
  the image (the older release has boxes reaching past the border).
- Image size: that of the sequence's first frame of the stream (header only), or 1280x720 (both
  FRED streams are HD) when there is no frame to read.
- Classes: one ``drone`` class by default; ``drone_classes="models"`` uses the five drone
  models, which needs labels that name them (the 6-field coordinates.txt form). YOLO files and
  4/5-field lines carry no model name, and are an error in that mode.
- Track ids are not kept (object ids are unique running numbers, as evaluation needs);
  extra columns: ``sequence``, ``frame`` (file stem) and ``timestamp`` (seconds in the
  recording's time base, or null for wall-clock-named RGB frames).
- Sequence lists come from the dataset's split files (``dataset_splits/canonical/
  train_split.txt``, ``challenging/challenging_test_split.txt``: one ``<seq>/`` per line).
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import datasets
from PIL import Image

from hftrain.data.formats.boxes import clean_xywh
from hftrain.data.formats.coco import MISSING_IMAGE, DatasetError, check_missing
from hftrain.data.formats.columns import DetectionColumns
from hftrain.data.formats.report import ConversionReport
from hftrain.data.formats.image_paths import ImageRoot

FRED_MODELS = ["DJI Mini 2", "DJI Mini 3", "DJI Tello EDU", "DarwinFPV cineape20", "Betafpv air75"]
"""The five drone models of the FRED paper (section 3), in the order used as class labels."""
FRED_IMAGE_SIZE = (1280, 720)
STREAMS = {
    "rgb": ("RGB", "RGB_YOLO", ".jpg"),
    "event": ("Event/Frames", "Event_YOLO", ".png"),
}
FRAME_EXTENSIONS = {".jpg", ".jpeg", ".png"}
_TIMESTAMP_NAME = re.compile(r"^Video_\d+_(?:frame_)?(\d+)$")


def _normalise_model(name: str) -> str:
    return " ".join(name.split()).casefold()


def fred_class_names(drone_classes: str) -> list[str]:
    if drone_classes == "single":
        return ["drone"]
    if drone_classes == "models":
        return list(FRED_MODELS)
    raise DatasetError(f"drone_classes: {drone_classes!r} is not 'single' or 'models'")


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


def list_sequences(root: Path, splits_dir: Path | None, sets: list[str] | None) -> list[str]:
    """The sequences of the given splits (in split order, each once), or every numbered folder."""
    if not sets:
        found = [p.name for p in root.iterdir() if p.is_dir() and p.name.isdigit()]
        if not found:
            raise DatasetError(f"{root}: no sequence folders (0/, 1/, ...) and no split given")
        return sorted(found, key=int)
    sequences: list[str] = []
    for name in sets:
        for seq in read_split_sequences(resolve_split_file(splits_dir, name)):
            if seq not in sequences:
                sequences.append(seq)
    return sequences


def fred_label_files(root: str | Path, splits_dir: str | Path | None, sets: list[str] | None,
                     modality: str) -> list[Path]:
    """Every file the conversion reads labels from (for cache keys)."""
    root = Path(root)
    splits = Path(splits_dir) if splits_dir else None
    files = [resolve_split_file(splits, name) for name in sets or []]
    _, yolo_dir, _ = STREAMS[modality]
    for seq in list_sequences(root, splits, sets):
        yolo = root / seq / yolo_dir
        if yolo.is_dir():
            files.extend(sorted(yolo.glob("*.txt")))
        else:
            files.append(root / seq / "coordinates.txt")
    return files


def parse_coordinates(path: Path, report: ConversionReport) -> dict[str, list[tuple]]:
    """``time -> [(x1, y1, x2, y2, track_id | None, class | None), ...]`` in file order.

    Times are kept as written (strings). A line that is not ``time: 4 to 6 fields`` is
    dropped and counted.
    """
    by_time: dict[str, list[tuple]] = {}
    with open(path, encoding="utf-8", newline=None) as handle:  # universal newlines: CRLF too
        for number, line in enumerate(handle, start=1):
            line = line.strip()
            if not line:
                continue
            where = f"{path}:{number}"
            time, sep, rest = line.partition(":")
            fields = [f.strip() for f in rest.split(",", 5)]
            if not sep or len(fields) < 4:
                report.drop_box("malformed coordinates line", where)
                continue
            try:
                float(time)
                x1, y1, x2, y2 = (float(v) for v in fields[:4])
                track = int(float(fields[4])) if len(fields) > 4 and fields[4] else None
            except ValueError:
                report.drop_box("malformed coordinates line", where)
                continue
            model = fields[5] if len(fields) > 5 and fields[5] else None
            by_time.setdefault(time.strip(), []).append((x1, y1, x2, y2, track, model, where))
    return by_time


def _frame_size(frames: list[Path]) -> tuple[int, int]:
    if not frames:
        return FRED_IMAGE_SIZE
    try:
        with Image.open(frames[0]) as image:
            return image.size
    except OSError as err:
        raise DatasetError(f"{frames[0]}: cannot read the frame size ({err})") from None


def _timestamp_keys(time: str) -> list[int]:
    keys = [round(float(time) * 1_000_000)]
    digits = time.replace(".", "")
    if digits.isdigit() and int(digits) not in keys:
        keys.append(int(digits))
    return keys


def read_fred(
    root: str | Path,
    splits_dir: str | Path | None = None,
    sets: list[str] | None = None,
    modality: str = "rgb",
    drone_classes: str = "single",
    category_map: dict[str, str | None] | None = None,
    max_missing: float = 0.0,
    check_files: bool = True,
) -> tuple[datasets.Dataset, ConversionReport]:
    """Read the sequences of ``sets`` (split names or files; all sequences when empty).

    ``splits_dir`` is the dataset's ``dataset_splits`` folder (default ``root/dataset_splits``).
    ``category_map`` maps a drone model name (as written in the labels) to a class or ``None``.
    """
    root = Path(root).resolve()
    if modality not in STREAMS:
        raise DatasetError(f"modality: {modality!r} is not one of {sorted(STREAMS)}")
    if not root.is_dir():
        raise DatasetError(f"{root}: FRED root folder not found")
    splits = Path(splits_dir) if splits_dir else root / "dataset_splits"
    class_names = fred_class_names(drone_classes)
    category_map = dict(category_map or {})
    for target in category_map.values():
        if target is not None and target not in class_names:
            class_names.append(target)
    model_label = {_normalise_model(name): i for i, name in enumerate(class_names)}
    report = ConversionReport(source=f"FRED {root} ({modality}{', ' + '+'.join(sets) if sets else ''})")
    columns = DetectionColumns(class_names, {
        "sequence": datasets.Value("string"), "frame": datasets.Value("string"),
        "timestamp": datasets.Value("float64"),
    })
    state = _State(root, report, columns, class_names, model_label, category_map, drone_classes)
    frames_sub, yolo_sub, extension = STREAMS[modality]
    for seq in list_sequences(root, splits, sets):
        seq_dir = root / seq
        if not seq_dir.is_dir():
            raise DatasetError(f"{seq_dir}: sequence folder {seq!r} (listed by {sets}) not found")
        frames_dir = seq_dir / frames_sub
        frames = sorted(p for p in frames_dir.iterdir() if p.suffix.lower() in FRAME_EXTENSIONS) \
            if frames_dir.is_dir() else []
        size = _frame_size(frames)
        if (seq_dir / yolo_sub).is_dir():
            state.read_yolo_sequence(seq, frames, seq_dir / yolo_sub, frames_dir, extension, size, check_files)
        elif (seq_dir / "coordinates.txt").is_file():
            state.read_coordinates_sequence(seq, frames, seq_dir / "coordinates.txt", frames_dir, extension,
                                            size, check_files, modality)
        else:
            raise DatasetError(f"{seq_dir}: no {yolo_sub}/ folder and no coordinates.txt")
    check_missing(report, state.missing, state.total, report.source, root, max_missing)
    return columns.build(), report


class _State:
    """What ``read_fred`` carries across sequences."""

    def __init__(self, root, report, columns, class_names, model_label, category_map, drone_classes):
        self.root, self.report, self.columns = ImageRoot(root), report, columns
        self.class_names, self.model_label = class_names, model_label
        self.category_map, self.drone_classes = category_map, drone_classes
        self.missing = self.total = 0

    def label_of(self, model: str | None, where: str) -> int | None:
        """Class label of a box (None: mapped to nothing, counted by the caller)."""
        if model is not None and model in self.category_map:
            target = self.category_map[model]
            return None if target is None else self.class_names.index(target)
        if self.drone_classes == "single":
            return 0
        if model is None:
            raise DatasetError(f"{where}: no drone model name; drone_classes='models' needs labels "
                               "that name the model (coordinates.txt 'time: x1, y1, x2, y2, id, class')")
        label = self.model_label.get(_normalise_model(model))
        if label is None:
            raise DatasetError(f"{where}: unknown drone model {model!r} (known: {', '.join(FRED_MODELS)}); "
                               "map it with category_map")
        return label

    def add_box(self, xywh: list[float], model: str | None, size: tuple[int, int], where: str) -> None:
        label = self.label_of(model, where)
        if label is None:
            self.report.drop_box(f"category {model!r} mapped to nothing", where)
            return
        box = clean_xywh(xywh, size[0], size[1], self.report, where)
        if box is not None:
            self.columns.add_object_counted(self.report, self.columns.objects_added() + 1, box, label)

    def frame_path(self, path: Path, check_files: bool, where: str) -> str | None:
        """The frame's path relative to the root; None (counted) when the file is missing."""
        self.total += 1
        relative, exists = self.root.check(str(path.relative_to(self.root.given)), where)
        if check_files and not exists:
            self.missing += 1
            self.report.drop_image(MISSING_IMAGE, str(path))
            return None
        return relative

    def add_frame(self, relative: str, stem: str, seq: str, size: tuple[int, int], timestamp: float | None) -> None:
        """Close a frame whose boxes were added."""
        self.columns.add_image(relative, len(self.columns) + 1, size[0], size[1],
                               sequence=seq, frame=stem, timestamp=timestamp)
        self.report.images += 1

    def read_yolo_sequence(self, seq, frames, yolo_dir, frames_dir, extension, size, check_files) -> None:
        by_stem = {p.stem: p for p in frames}
        label_files = {p.stem: p for p in yolo_dir.glob("*.txt")}
        for stem in sorted(set(by_stem) | set(label_files)):
            frame = by_stem.get(stem, frames_dir / f"{stem}{extension}")
            label_file = label_files.get(stem)
            if label_file is None:
                self.report.drop_image("frame has no label file", str(frame))
                continue
            if self.drone_classes == "models":
                self.label_of(None, str(label_file))  # raises: YOLO files carry no model names
            relative = self.frame_path(frame, check_files, str(label_file))
            if relative is None:
                continue
            for number, line in enumerate(label_file.read_text().splitlines(), start=1):
                fields = line.split()
                if not fields:
                    continue
                where = f"{label_file}:{number}"
                try:
                    int(fields[0])
                    cx, cy, w, h = (float(v) for v in fields[1:5])
                    if len(fields) != 5:
                        raise ValueError
                except (ValueError, IndexError):
                    self.report.drop_box("malformed YOLO line", where)
                    continue
                W, H = size
                self.add_box([(cx - w / 2) * W, (cy - h / 2) * H, w * W, h * H], None, size, where)
            self.add_frame(relative, stem, seq, size, _name_timestamp(stem))

    def read_coordinates_sequence(self, seq, frames, coords, frames_dir, extension, size, check_files,
                                  modality) -> None:
        by_key: dict[int, Path] = {}
        for frame in frames:
            match = _TIMESTAMP_NAME.match(frame.stem)
            if match:
                by_key[int(match.group(1))] = frame
        if frames and not by_key:
            raise DatasetError(
                f"{frames_dir}: no frame name carries a timestamp (e.g. {frames[0].name}); "
                f"matching {coords} needs names like Video_{seq}_frame_<microseconds>{extension}"
                + (" or per-frame labels in RGB_YOLO/" if modality == "rgb" else "")
            )
        matched: set[int] = set()
        for time, boxes in parse_coordinates(coords, self.report).items():
            keys = _timestamp_keys(time)
            key = next((k for k in keys if k in by_key), None)
            if key is not None:
                matched.add(key)
                frame = by_key[key]
            else:
                frame = frames_dir / f"Video_{seq}_frame_{keys[0]}{extension}"
            relative = self.frame_path(frame, check_files, f"{coords} time {time}")
            if relative is None:
                continue
            for x1, y1, x2, y2, _track, model, where in boxes:
                self.add_box([x1, y1, x2 - x1, y2 - y1], model, size, where)
            self.add_frame(relative, frame.stem, seq, size, float(time))
        for key, frame in by_key.items():
            if key not in matched:
                self.report.drop_image("frame has no annotation at its timestamp", str(frame))


def _name_timestamp(stem: str) -> float | None:
    """Seconds from a microsecond-named frame (``Video_3_frame_13533198``); None otherwise."""
    match = _TIMESTAMP_NAME.match(stem)
    if not match:
        return None
    value = int(match.group(1)) / 1_000_000
    return value if math.isfinite(value) else None
