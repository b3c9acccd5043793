"""FRED in the layout its authors release: ``FRED/{train,test}/<seq>/`` with ``RGB/*.jpg``,
``Event/Frames/*.png``, ``coordinates.txt`` and ``coordinates_rgb.txt``, and the challenging split as a
folder of symbolic links. The trees are built from the REAL coordinates.txt fixtures (older release:
4 or 5 fields), frames named as FRED names them; the counts are compared with an independent
re-statement of the authors' loader rule (``src/data/data.py``: natsorted streams of equal length,
frame i labelled by the lines at ``str(float(f"{(i+1)*0.033333:.6f}"))``)."""

from __future__ import annotations

import glob
import io
import os
import re

import pytest
from PIL import Image

from hftrain.data.convert import convert_main, load_converted
from hftrain.data.formats.coco import DatasetError
from hftrain.data.formats.fred import FRED_MODELS, read_fred
from hftrain.data.formats.fred_layout import fred_image_root
from hftrain.data.schema import class_names_of, objects_of, resolve_image_path
from hftrain.data.sources import load_split
from helpers.fixtures_path import fixtures_dir

SEQUENCES = fixtures_dir() / "fred" / "sequences"
WIDTH, HEIGHT = 1280, 720
# frames per sequence: enough to reach each recording's first annotated times (seq 0 starts at
# 13.533198 s = frame 405, seq 132 at 9.966567 s = frame 298) while keeping the test fast
FRAMES = {"0": 440, "60": 60, "132": 320, "230": 40}
RELEASE = {"train": ["0", "60"], "test": ["132", "230"]}
PADDING = 160  # the made-up RGB padding used to derive coordinates_rgb.txt (no real one is public)


def _encoded(fmt: str) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (WIDTH, HEIGHT), (30, 30, 30)).save(out, format=fmt)
    return out.getvalue()


def _rgb_lines(coordinates: str) -> str:
    """coordinates_rgb.txt derived from a real coordinates.txt: the boxes without a 160-px padding on
    each side (a box inside the padding has no line), in the README's 6-field form with model names."""
    out = []
    for line in coordinates.splitlines():
        time, rest = line.split(": ")
        x1, y1, x2, y2 = (float(v) for v in rest.split(", ")[:4])
        if x1 >= PADDING and x2 <= WIDTH - PADDING:
            model = FRED_MODELS[3] if x1 > WIDTH / 2 else FRED_MODELS[0]
            out.append(f"{time}: {x1 - PADDING}, {y1}, {x2 - PADDING}, {y2}, 1, {model}\n")
    return "".join(out)


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    """``FRED/`` (train: 0, 60; test: 132, 230) and ``FRED_challenging/`` (train: links to test/132 and
    train/0, test: a link to train/60), as create_FRED_challenging_split.py makes it."""
    base = tmp_path_factory.mktemp("fred_release")
    jpg, png = base / "frame.jpg", base / "frame.png"  # every frame a hard link to one of these (fast)
    jpg.write_bytes(_encoded("JPEG"))
    png.write_bytes(_encoded("PNG"))
    for split, sequences in RELEASE.items():
        for seq in sequences:
            folder = base / "FRED" / split / seq
            (folder / "RGB").mkdir(parents=True)
            (folder / "Event" / "Frames").mkdir(parents=True)
            for i in range(FRAMES[seq]):
                micro = 363444 + i * 33333  # wall clock 16:03:03.363444 + i frames
                os.link(jpg, folder / "RGB" / f"Video_{seq}_16_03_{3 + micro // 10**6:02d}.{micro % 10**6:06d}.jpg")
                os.link(png, folder / "Event" / "Frames" / f"Video_{seq}_frame_{(i + 1) * 33333}.png")
            text = (SEQUENCES / seq / "coordinates.txt").read_text()  # CRLF read as LF
            (folder / "coordinates.txt").write_bytes((SEQUENCES / seq / "coordinates.txt").read_bytes())
            (folder / "coordinates_rgb.txt").write_text(_rgb_lines(text))
    challenging = base / "FRED_challenging"
    for split, links in {"train": [("test", "132"), ("train", "0")], "test": [("train", "60")]}.items():
        (challenging / split).mkdir(parents=True)
        for source_split, seq in links:
            os.symlink(base / "FRED" / source_split / seq, challenging / split / seq, target_is_directory=True)
    return base


def _natsorted(paths):
    return sorted(paths, key=lambda p: [int(c) if c.isdigit() else c for c in re.split(r"(\d+)", p)])


def authors_rule(root, split, modality, box_file):
    """What the authors' loader keeps: [(frame path, [(x1, y1, x2, y2), ...])] in its order."""
    kept = []
    for folder in _natsorted(glob.glob(f"{root}/{split}/*/")):
        rgb = _natsorted(glob.glob(f"{folder}RGB/*.jpg"))
        event = _natsorted(glob.glob(f"{folder}Event/Frames/*.png"))
        assert len(rgb) == len(event)
        coordinates = {}
        with open(f"{folder}{box_file}") as handle:
            for line in handle:
                if line.strip():
                    timestamp, rest = line.strip().split(": ")
                    coordinates.setdefault(timestamp, []).append(tuple(float(v) for v in rest.split(", ")[:4]))
        for i in range(len(rgb)):
            timestamp = str(float("{:.6f}".format((i + 1) * 0.033333)))
            if timestamp in coordinates:
                kept.append(((rgb if modality == "rgb" else event)[i], coordinates[timestamp]))
    return kept


def _degenerate(box):
    x1, y1, x2, y2 = max(box[0], 0), max(box[1], 0), min(box[2], WIDTH), min(box[3], HEIGHT)
    return x2 - x1 < 1 or y2 - y1 < 1


@pytest.mark.parametrize("split, modality, boxes, box_file", [  # each modality with each box file, both halves
    ("train", "rgb", "extended", "coordinates.txt"), ("train", "event", "rgb", "coordinates_rgb.txt"),
    ("test", "event", "extended", "coordinates.txt"), ("test", "rgb", "rgb", "coordinates_rgb.txt"),
])
def test_release_counts_equal_the_authors_rule(release, modality, boxes, box_file, split):
    root = release / "FRED"
    dataset, report = read_fred(root, sets=[split], modality=modality, boxes=boxes)
    expected = authors_rule(root, split, modality, box_file)
    assert expected  # the fixture windows reach annotated times
    assert len(dataset) == report.images == len(expected)
    assert dataset["frame"] == [os.path.splitext(os.path.basename(path))[0] for path, _ in expected]
    image_root = fred_image_root(root, None, [split])
    assert image_root == root.resolve()
    assert [str(image_root / row["image"]["path"]) for row in dataset] == [os.path.realpath(p) for p, _ in expected]
    lines = [box for _, boxes_ in expected for box in boxes_]
    tiny = sum(map(_degenerate, lines))
    assert report.boxes == len(lines) - tiny
    assert report.dropped_boxes.get("smaller than 1 px after clipping", 0) == tiny
    first_path, first_boxes = expected[0]
    x1, y1, x2, y2 = first_boxes[0]
    assert objects_of(dataset[0])[0]["bbox"] == pytest.approx([x1, y1, min(x2, WIDTH) - x1, y2 - y1])
    # every frame left out, every line never used, is counted
    frames = sum(FRAMES[seq] for seq in RELEASE[split])
    assert report.dropped_images == {f"frame has no line at its time in {box_file}": frames - len(expected)}
    all_lines = sum(1 for seq in RELEASE[split] for line in (root / split / seq / box_file).read_text().splitlines()
                    if line.strip())
    assert report.dropped_boxes["time matches no frame"] == all_lines - len(lines)


def test_release_counts_by_hand(release):
    # the figures behind the test above, for the train half (sequences 0 and 60), event stream:
    # seq 0's 440 frames reach its first annotated time 13.533198 s at frame 405 (35 frames labelled),
    # seq 60's first line is at 0.299997 s (frame 8), and it has none from 1.6 s (frame 47) to 5.6 s
    dataset, report = read_fred(release / "FRED", sets=["train"], modality="event")
    assert dataset["sequence"].count("0") == 440 - 405
    assert dataset["frame"][0] == "Video_0_frame_13533198" and dataset["timestamp"][0] == 13.533198
    assert objects_of(dataset[0])[0]["bbox"] == [1253.0, 413.0, 27.0, 42.0]
    assert dataset["sequence"].count("60") == 48 - 8
    # the 6-field lines of coordinates_rgb.txt name the drone models
    dataset, report = read_fred(release / "FRED", sets=["train"], modality="rgb", boxes="rgb", drone_classes="models")
    assert class_names_of(dataset) == FRED_MODELS
    assert set(report.boxes_per_class) == {"DJI Mini 2", "DarwinFPV cineape20"}


def test_challenging_split_of_links(release, tmp_path):
    challenging = release / "FRED_challenging"
    expected = authors_rule(challenging, "train", "event", "coordinates.txt")
    dataset, report = read_fred(challenging, sets=["train"], modality="event")
    assert len(dataset) == len(expected) and list(dict.fromkeys(dataset["sequence"])) == ["0", "132"]
    # the links leave the challenging folder: paths are rooted at the folder holding both trees
    image_root = fred_image_root(challenging, None, ["train"])
    assert image_root == release.resolve()
    assert dataset[0]["image"]["path"].startswith("FRED/train/0/Event/Frames/")
    assert any(row["image"]["path"].startswith("FRED/test/132/") for row in dataset)
    # through the command line, with the rgb box file: the saved dataset opens its images
    out = tmp_path / "converted"
    assert convert_main(["fred", "--images", str(challenging), "--split", "train", "--modality", "rgb",
                         "--fred-boxes", "rgb", "--out", str(out)]) == 0
    converted, root = load_converted(out)
    assert root == release.resolve()
    assert len(converted) == len(authors_rule(challenging, "train", "rgb", "coordinates_rgb.txt"))
    path = resolve_image_path(root, converted[0]["image"]["path"], "row 0")
    assert Image.open(path).size == (WIDTH, HEIGHT)
    # the same split from the dataset's split file, on the release root (sequences found in train/ or test/)
    splits = tmp_path / "dataset_splits" / "challenging"
    splits.mkdir(parents=True)
    (splits / "challenging_train_split.txt").write_text("0/\n132/")
    same, _ = read_fred(release / "FRED", tmp_path / "dataset_splits", ["challenging/train"], modality="event")
    assert same["frame"] == dataset["frame"] and same["timestamp"] == dataset["timestamp"]


def test_stream_count_mismatch_names_the_sequence(release, tmp_path):
    root = tmp_path / "FRED"
    folder = root / "test" / "230"
    (folder / "Event" / "Frames").mkdir(parents=True)
    (folder / "RGB").mkdir(parents=True)
    for source in (release / "FRED" / "test" / "230").rglob("*"):
        if source.is_file():
            os.link(source, folder / source.relative_to(release / "FRED" / "test" / "230"))
    os.remove(folder / "Event" / "Frames" / f"Video_230_frame_{40 * 33333}.png")
    with pytest.raises(DatasetError, match=r"FRED sequence 230 \(.*\): 40 RGB frames \(RGB/\*\.jpg\) but 39 event"):
        read_fred(root, sets=["test"], modality="rgb")


def test_release_root_needs_a_split_and_unzipped_sequences(release, tmp_path):
    with pytest.raises(DatasetError, match=r"FRED release root \(holds train/, test/\): choose the split with --split"):
        read_fred(release / "FRED", modality="rgb")
    (tmp_path / "FRED" / "train" / "0").mkdir(parents=True)
    (tmp_path / "FRED" / "train" / "0.zip").write_bytes(b"")  # unzipped already: fine
    (tmp_path / "FRED" / "train" / "7.zip").write_bytes(b"")
    with pytest.raises(DatasetError, match=r"train: 1 sequence\(s\) still zipped \(7\.zip\): unzip"):
        read_fred(tmp_path / "FRED", sets=["train"], modality="rgb")
    with pytest.raises(DatasetError, match="sequence folder '999'"):
        read_fred(release / "FRED", release / "nosplits", [str(_split_file(release))], modality="rgb")


def _split_file(release):
    path = release / "missing_split.txt"
    path.write_text("999/\n")
    return path


def test_box_file_is_part_of_the_cache_key(release, tmp_path):
    split = {"sets": ["test"], "modality": "event", "cache_dir": str(tmp_path / "cache")}
    extended = load_split("fred", str(release / "FRED"), **split)
    padded = load_split("fred", str(release / "FRED"), fred_boxes="rgb", **split)
    assert len(list((tmp_path / "cache").iterdir())) == 2
    assert extended.report.images == len(authors_rule(release / "FRED", "test", "event", "coordinates.txt"))
    assert padded.report.images == len(authors_rule(release / "FRED", "test", "event", "coordinates_rgb.txt"))
    assert extended.report.images != padded.report.images
