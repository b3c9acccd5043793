"""Read FRED (Florence RGB-Event Drone, 2025) sequences into the project's schema.

The release as its authors publish it (FRED README; their loader ``src/data/data.py``)::

    FRED/train/<seq>/RGB/*.jpg              RGB frames (padded to the event camera's geometry)
    FRED/train/<seq>/Event/Frames/*.png     event frames, as many as RGB frames
    FRED/train/<seq>/coordinates.txt        "time: x1, y1, x2, y2, id, class", boxes in the padded
                                            coordinate space shared by both streams ("extended")
    FRED/train/<seq>/coordinates_rgb.txt    the same without the padding
    FRED/test/<seq>/...

Choose the half with a split (``--split train`` / ``data.<split>.sets: [train]``). The challenging
split is built by the authors' ``create_FRED_challenging_split.py`` as ``FRED_challenging/{train,
test}/<seq>`` symbolic links into the canonical tree: give that folder as the root the same way.
Links in the user's tree are followed; the image root of the converted dataset is then the
deepest folder holding the root and every linked sequence (``fred_layout.fred_image_root``). A split file of
the dataset (``dataset_splits/challenging/challenging_train_split.txt``, or its name
``challenging/train``) also works on the release root: each listed sequence is looked for in
``<root>/<seq>``, ``<root>/train/<seq>`` and ``<root>/test/<seq>``.

Frames of a sequence that holds ``RGB/*.jpg`` are matched by the authors' rule: each stream's
frames are natural-sorted, both streams must have the same count (a mismatch is an error naming
the sequence; a sequence without ``Event/Frames/`` is read on its RGB frames alone), and frame i
(from 0) is labelled by the lines whose time string is ``str(float(f"{(i + 1) * 0.033333:.6f}"))``
(``authors_time_key``), compared as written in the file. As in their loader, a frame with no line
at its time is left out (counted: ``frame has no line at its time``), and lines at a time that no
frame carries are counted as dropped boxes (``time matches no frame``). ``boxes`` picks the box
file: ``extended`` (``coordinates.txt``, the README's recommendation) or ``rgb``
(``coordinates_rgb.txt``).

Older variants, still read:

- a flat root of sequence folders (``0/``, ``1/``, ...), all of them or those of the dataset's split
  files (``dataset_splits/canonical/train_split.txt``, named ``canonical/train``; one ``<seq>/``
  per line);
- ``<seq>/RGB_YOLO/*.txt`` / ``<seq>/Event_YOLO/*.txt`` (one YOLO file per frame of the stream,
  same stem, "class cx cy w h" in 0..1), used when the modality's folder exists: a frame without a
  label file is dropped (counted, ``frame has no label file``); a label file whose frame is missing
  counts as a missing image; an empty label file is a frame with no drone and is kept;
- a sequence with event frames and no RGB frames (an older release): the event frames are named
  ``Video_<seq>_frame_<microseconds>.png`` and each time of the box file is matched to the frame
  carrying it (``13.533198`` -> ``..._frame_13533198.png``; the name with the dot removed is tried
  too). Frames with no line at their time are dropped (counted). When the frames folder does not
  exist the image path is the name the frame would have (counted as missing when files are checked).

Lines: 4, 5 or 6 fields (track ids written ``1`` or ``1.0``, Windows line endings, several boxes at
one time when two drones fly); a malformed line is dropped and counted. Boxes are corner pixels:
``bbox = [x1, y1, x2 - x1, y2 - y1]``, clipped to the image (counted; some boxes reach past the
border). Image size: that of the sequence's first frame of the stream (header only), or 1280x720
(both FRED streams are HD) when there is no frame to read.

Classes: one ``drone`` class by default; ``drone_classes="models"`` uses the five drone models,
which needs the 6-field lines that name them. YOLO files and 4/5-field lines carry no model name,
and are an error in that mode. Track ids are not kept (object ids are unique running numbers, as
evaluation needs); extra columns: ``sequence``, ``frame`` (file stem) and ``timestamp`` (seconds
in the recording's time base, or null for wall-clock-named frames labelled by YOLO files).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import datasets
from PIL import Image

from hftrain.data.formats.boxes import clean_xywh
from hftrain.data.formats.coco import MISSING_IMAGE, DatasetError, check_missing
from hftrain.data.formats.columns import DetectionColumns
from hftrain.data.formats.fred_layout import (
    image_root_of, is_split_folder, list_sequences, natural_key, resolve_split_file, splits_dir_of,
)
from hftrain.data.formats.report import ConversionReport
from hftrain.data.formats.image_paths import ImageRoot

FRED_MODELS = ["DJI Mini 2", "DJI Mini 3", "DJI Tello EDU", "DarwinFPV cineape20", "Betafpv air75"]
"""The five drone models of the FRED paper (section 3), in the order used as class labels."""
FRED_IMAGE_SIZE = (1280, 720)
STREAMS = {
    "rgb": ("RGB", "RGB_YOLO", ".jpg"),
    "event": ("Event/Frames", "Event_YOLO", ".png"),
}
BOX_FILES = {"extended": "coordinates.txt", "rgb": "coordinates_rgb.txt"}
"""``boxes`` choice -> the sequence's box file."""
FRAME_PERIOD = 0.033333
"""Seconds between frames in the authors' loader (their ``to_timestamp``)."""
FRAME_EXTENSIONS = {".jpg", ".jpeg", ".png"}
_TIMESTAMP_NAME = re.compile(r"^Video_\d+_(?:frame_)?(\d+)$")


def authors_time_key(index: int) -> str:
    """The time string the authors' loader looks up for frame ``index`` (from 0) of a sequence."""
    return str(float(f"{(index + 1) * FRAME_PERIOD:.6f}"))


def _normalise_model(name: str) -> str:
    return " ".join(name.split()).casefold()


def fred_class_names(drone_classes: str) -> list[str]:
    if drone_classes == "single":
        return ["drone"]
    if drone_classes == "models":
        return list(FRED_MODELS)
    raise DatasetError(f"drone_classes: {drone_classes!r} is not 'single' or 'models'")


def box_file_name(boxes: str) -> str:
    """``coordinates.txt`` (``extended``) or ``coordinates_rgb.txt`` (``rgb``)."""
    if boxes not in BOX_FILES:
        raise DatasetError(f"fred_boxes: {boxes!r} is not one of {', '.join(BOX_FILES)}")
    return BOX_FILES[boxes]


def fred_label_files(root: str | Path, splits_dir: str | Path | None, sets: list[str] | None,
                     modality: str, boxes: str = "extended") -> list[Path]:
    """Every file the conversion reads labels from, and the frame folders whose listing pairs
    frames with times (for cache keys: a folder's mtime changes when frames come or go)."""
    root = Path(root)
    splits = splits_dir_of(root, splits_dir)
    files = [resolve_split_file(splits, name) for name in sets or [] if not is_split_folder(root, name)]
    yolo_dir = STREAMS[modality][1]
    for seq in list_sequences(root, splits, sets):
        yolo = seq.folder / yolo_dir
        if yolo.is_dir():
            files.extend(sorted(yolo.glob("*.txt")))
        else:
            files.extend([seq.folder / box_file_name(boxes), seq.folder / "RGB", seq.folder / "Event" / "Frames"])
    return files


def parse_coordinates(path: Path, report: ConversionReport) -> dict[str, list[tuple]]:
    """``time -> [(x1, y1, x2, y2, track_id | None, class | None, where), ...]`` in file order.

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


def stream_frames(folder: Path, extension: str) -> list[Path]:
    """The authors' ``natsorted(glob(folder/*<extension>))``: [] when the folder does not exist."""
    if not folder.is_dir():
        return []
    return sorted((p for p in folder.iterdir() if p.name.endswith(extension) and not p.name.startswith(".")),
                  key=lambda p: natural_key(p.name))


def named_frames(folder: Path) -> list[Path]:
    """The frames of an older layout's stream folder, sorted by name: [] when it does not exist."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in FRAME_EXTENSIONS)


def read_fred(
    root: str | Path,
    splits_dir: str | Path | None = None,
    sets: list[str] | None = None,
    modality: str = "rgb",
    drone_classes: str = "single",
    category_map: dict[str, str | None] | None = None,
    max_missing: float = 0.0,
    check_files: bool = True,
    boxes: str = "extended",
) -> tuple[datasets.Dataset, ConversionReport]:
    """Read the sequences of ``sets`` (split folders, split names or files; every numbered
    sequence folder when empty). Image paths are relative to ``fred_image_root(root, splits_dir, sets)``.

    ``splits_dir`` is the dataset's ``dataset_splits`` folder (default ``root/dataset_splits``).
    ``category_map`` maps a drone model name (as written in the labels) to a class or ``None``.
    ``boxes``: ``extended`` (coordinates.txt) or ``rgb`` (coordinates_rgb.txt).
    """
    root = Path(root)
    if modality not in STREAMS:
        raise DatasetError(f"modality: {modality!r} is not one of {sorted(STREAMS)}")
    if not root.is_dir():
        raise DatasetError(f"{root}: FRED root folder not found")
    box_name = box_file_name(boxes)
    splits = splits_dir_of(root, splits_dir)
    class_names = fred_class_names(drone_classes)
    category_map = dict(category_map or {})
    for target in category_map.values():
        if target is not None and target not in class_names:
            class_names.append(target)
    model_label = {_normalise_model(name): i for i, name in enumerate(class_names)}
    sequences = list_sequences(root, splits, sets)
    image_root = image_root_of(root, sequences)
    report = ConversionReport(source=f"FRED {root.resolve()} ({modality}{', ' + '+'.join(sets) if sets else ''}"
                                     f"{', ' + box_name if boxes != 'extended' else ''})")
    columns = DetectionColumns(class_names, {
        "sequence": datasets.Value("string"), "frame": datasets.Value("string"),
        "timestamp": datasets.Value("float64"),
    })
    state = _State(image_root, report, columns, class_names, model_label, category_map, drone_classes)
    frames_sub, yolo_sub, extension = STREAMS[modality]
    for seq in sequences:
        seq_dir = Path(os.path.realpath(seq.folder))
        frames_dir = seq_dir / frames_sub
        box_file = seq_dir / box_name
        if (seq_dir / yolo_sub).is_dir():
            frames = named_frames(frames_dir)
            state.read_yolo_sequence(seq.name, frames, seq_dir / yolo_sub, frames_dir, extension,
                                     _frame_size(frames), check_files)
            continue
        if not box_file.is_file():
            raise DatasetError(f"{seq_dir}: no {yolo_sub}/ folder and no {box_name} (fred_boxes: {boxes})")
        rgb = stream_frames(seq_dir / "RGB", ".jpg")
        if rgb:  # the release: both streams paired by position
            events = stream_frames(seq_dir / "Event" / "Frames", ".png")
            if events and len(events) != len(rgb):
                raise DatasetError(
                    f"FRED sequence {seq.name} ({seq_dir}): {len(rgb)} RGB frames (RGB/*.jpg) but {len(events)} "
                    "event frames (Event/Frames/*.png); frames are labelled by their position in the sequence "
                    "(the authors' rule), which needs the same count in both streams")
            frames = rgb if modality == "rgb" else events
            if not frames:
                raise DatasetError(f"FRED sequence {seq.name} ({seq_dir}): no event frames (Event/Frames/*.png)")
            state.read_paired_sequence(seq.name, frames, box_file, _frame_size(frames), check_files)
        else:
            frames = named_frames(frames_dir)
            state.read_coordinates_sequence(seq.name, frames, box_file, frames_dir, extension,
                                            _frame_size(frames), check_files, modality)
    check_missing(report, state.missing, state.total, report.source, image_root, max_missing)
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

    def read_paired_sequence(self, seq, frames, box_file, size, check_files) -> None:
        """The authors' rule: frame i carries the lines at time ``authors_time_key(i)``."""
        by_time = parse_coordinates(box_file, self.report)
        used: set[str] = set()
        for index, frame in enumerate(frames):
            time = authors_time_key(index)
            lines = by_time.get(time)
            if lines is None:
                self.report.drop_image(f"frame has no line at its time in {box_file.name}", str(frame))
                continue
            used.add(time)
            self.add_coordinates_frame(frame, lines, seq, size, time, check_files, f"{box_file} time {time}")
        for time, lines in by_time.items():
            if time not in used:
                for line in lines:
                    self.report.drop_box("time matches no frame", line[-1])

    def add_coordinates_frame(self, frame, lines, seq, size, time: str, check_files, where_frame: str) -> None:
        """One frame and its ``coordinates*.txt`` lines (corners -> xywh); nothing if its file is missing."""
        relative = self.frame_path(frame, check_files, where_frame)
        if relative is None:
            return
        for x1, y1, x2, y2, _track, model, where in lines:
            self.add_box([x1, y1, x2 - x1, y2 - y1], model, size, where)
        self.add_frame(relative, frame.stem, seq, size, float(time))

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
            self.add_coordinates_frame(frame, boxes, seq, size, time, check_files, f"{coords} time {time}")
        for key, frame in by_key.items():
            if key not in matched:
                self.report.drop_image("frame has no annotation at its timestamp", str(frame))


def _name_timestamp(stem: str) -> float | None:
    """Seconds from a microsecond-named frame (``Video_3_frame_13533198``); None otherwise."""
    match = _TIMESTAMP_NAME.match(stem)
    if not match:
        return None
    return int(match.group(1)) / 1_000_000
