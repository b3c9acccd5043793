"""FRED reader: the real coordinates.txt files (older release) and synthetic sequence folders."""

from __future__ import annotations

import shutil

import pytest
from PIL import Image

from hftrain.data.formats.coco import DatasetError
from hftrain.data.formats.fred import FRED_MODELS, parse_coordinates, read_fred
from hftrain.data.formats.fred_layout import read_split_sequences, resolve_split_file
from hftrain.data.formats.report import ConversionReport
from hftrain.data.schema import class_names_of, objects_of
from helpers.fixtures_path import fixtures_dir

FRED = fixtures_dir() / "fred"
SEQUENCES = FRED / "sequences"


def test_real_coordinates_all_variants():
    report = ConversionReport(source="t")
    seq60 = parse_coordinates(SEQUENCES / "60" / "coordinates.txt", report)
    lines60 = sum(len(v) for v in seq60.values())
    assert lines60 == 3655 and len(seq60) == 2894
    assert sum(1 for v in seq60.values() if len(v) == 2) == 761
    first = seq60["0.299997"][0]
    assert first[:6] == (511.0, 245.0, 546.0, 273.0, 2, None)  # track id written "2.0"
    # 8 lines are written all-int ("92, 485, 127, 508, 1"): same parse, track id 1
    text = (SEQUENCES / "60" / "coordinates.txt").read_text().splitlines()
    int_lines = [(t, rest) for t, rest in (line.split(":", 1) for line in text) if "." not in rest]
    assert len(int_lines) == 8
    for time, rest in int_lines:
        values = [float(v) for v in rest.split(",")]
        assert any(box[:5] == (*values[:4], 1) for box in seq60[time])
    seq0 = parse_coordinates(SEQUENCES / "0" / "coordinates.txt", report)  # CRLF, 4 fields
    assert sum(len(v) for v in seq0.values()) == 1790 and len(seq0) == 1789
    assert seq0["13.533198"][0][:6] == (1253.0, 413.0, 1280.0, 455.0, None, None)
    seq132 = parse_coordinates(SEQUENCES / "132" / "coordinates.txt", report)  # LF, full float precision
    assert seq132["9.966567"][0][0] == 0.094451904296875
    assert not report.dropped_boxes


def _line_counts(path):
    clipped = tiny = 0
    for line in path.read_text().splitlines():
        x1, y1, x2, y2 = (float(v) for v in line.split(":", 1)[1].split(",")[:4])
        cx1, cy1, cx2, cy2 = max(x1, 0), max(y1, 0), min(x2, 1280), min(y2, 720)
        if cx2 - cx1 < 1 or cy2 - cy1 < 1:
            tiny += 1
        elif (cx1, cy1, cx2, cy2) != (x1, y1, x2, y2):
            clipped += 1
    return clipped, tiny


def test_real_sequences_by_hand(tmp_path):
    # every sequence folder under the fixtures, no split: 0, 60, 132, 230 in numeric order
    dataset, report = read_fred(SEQUENCES, modality="event", check_files=False)
    assert class_names_of(dataset) == ["drone"]
    assert list(dict.fromkeys(dataset["sequence"])) == ["0", "60", "132", "230"]
    assert len(dataset) == 1789 + 2894 + 2625 + 3662
    first = dataset[0]
    assert first["image"]["path"] == "0/Event/Frames/Video_0_frame_13533198.png"
    assert first["timestamp"] == pytest.approx(13.533198)
    assert objects_of(first)[0]["bbox"] == [1253.0, 413.0, 27.0, 42.0]  # x2 = 1280 = width: not clipped
    assert (first["width"], first["height"]) == (1280, 720)
    clipped, tiny = _line_counts(SEQUENCES / "0" / "coordinates.txt")
    assert (clipped, tiny) == (10, 1)
    assert report.changed_boxes == {"clipped to image": clipped}
    assert report.dropped_boxes == {"smaller than 1 px after clipping": tiny}
    assert report.examples["smaller than 1 px after clipping"] == [f"{SEQUENCES / '0' / 'coordinates.txt'}:860"]
    assert report.boxes == 1790 + 3655 + 2637 + 3673 - tiny
    objects = [objects_of({"objects": o}) for o in dataset["objects"]]
    seq60 = [objs for seq, objs in zip(dataset["sequence"], objects) if seq == "60"]
    assert sum(len(objs) == 2 for objs in seq60) == 761
    row = dataset[1789 + 0]  # seq 60's first timestamp 0.299997 holds one box, track 2
    assert row["frame"] == "Video_60_frame_299997" and objects_of(row)[0]["bbox"] == [511, 245, 35, 28]
    ids = [o["id"] for objs in objects for o in objs]
    assert len(ids) == len(set(ids))  # unique object ids (track ids are not ids)


def test_split_files():
    splits = FRED / "dataset_splits"
    assert resolve_split_file(splits, "canonical/train") == splits / "canonical" / "train_split.txt"
    challenging = resolve_split_file(splits, "challenging/test")
    assert challenging == splits / "challenging" / "challenging_test_split.txt"
    sequences = read_split_sequences(challenging)  # no newline at the end of the file
    assert sequences[-1] == "195" and len(sequences) == 59 and "" not in sequences
    assert read_split_sequences(splits / "canonical" / "test_split.txt")[:3] == ["8", "9", "12"]
    with pytest.raises(DatasetError, match="canonical/nosuch"):
        resolve_split_file(splits, "canonical/nosuch")


def _image(path, size=(64, 36), mode="RGB"):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, 40).save(path)


def _fred(tmp_path):
    """Seq 3: RGB (3 frames) and event (4 frames) with their own YOLO folders; seq 4: coordinates only."""
    root = tmp_path / "FRED"
    rgb = ["Video_3_16_03_03.363444", "Video_3_16_03_03.396777", "Video_3_16_03_03.430110"]
    for stem in rgb:
        _image(root / "3" / "RGB" / f"{stem}.jpg")
    (root / "3" / "RGB_YOLO").mkdir(parents=True)
    (root / "3" / "RGB_YOLO" / f"{rgb[0]}.txt").write_text("0 0.5 0.5 0.25 0.5\n")
    (root / "3" / "RGB_YOLO" / f"{rgb[1]}.txt").write_text("")  # no drone in this frame: kept
    # rgb[2] has no label file: dropped, counted; a label file whose frame is missing:
    (root / "3" / "RGB_YOLO" / "Video_3_16_03_03.463443.txt").write_text("0 0.5 0.5 0.1 0.1\n")
    events = [100000, 133333, 166666, 199999]
    for us in events:
        _image(root / "3" / "Event" / "Frames" / f"Video_3_frame_{us}.png")
    (root / "3" / "Event_YOLO").mkdir(parents=True)
    for i, us in enumerate(events):  # a different box per event frame: x centre moves by 0.1
        (root / "3" / "Event_YOLO" / f"Video_3_frame_{us}.txt").write_text(f"0 {0.2 + 0.1 * i:.1f} 0.5 0.125 0.25\r\n")
    seq4 = root / "4"
    for us in (500000, 533333, 566666):
        _image(seq4 / "Event" / "Frames" / f"Video_4_frame_{us}.png")
    (seq4 / "coordinates.txt").write_bytes(
        b"0.5: 10.0, 5.0, 20.0, 15.0, 1, DJI Mini 2\r\n"
        b"0.5: 30, 5, 40, 15, 2.0, DarwinFPV cineape20\r\n"
        b"0.533333: 10.0, 5.0, 90.0, 15.0, 1, dji  mini 2\r\n"
        b"0.6: 1, 1, 5, 5, 1, DJI Mini 2\r\n"  # no frame at 0.6 s: a missing image
    )
    splits = root / "dataset_splits" / "canonical"
    splits.mkdir(parents=True)
    (splits / "train_split.txt").write_text("3/\n4/\n")
    (splits / "test_split.txt").write_text("3/")
    return root


def test_rgb_frames_use_their_own_label_files(tmp_path):
    root = _fred(tmp_path)
    dataset, report = read_fred(root, sets=["canonical/test"], modality="rgb", max_missing=0.5)
    rows = dataset
    assert rows["frame"] == ["Video_3_16_03_03.363444", "Video_3_16_03_03.396777"]
    assert objects_of(rows[0])[0]["bbox"] == [24.0, 9.0, 16.0, 18.0]  # (0.5 - 0.125) * 64, (0.5 - 0.25) * 36
    assert objects_of(rows[1]) == []
    assert rows[0]["timestamp"] is None  # wall-clock names carry no recording time
    assert report.dropped_images["frame has no label file"] == 1
    assert report.examples["frame has no label file"] == [str(root / "3" / "RGB" / "Video_3_16_03_03.430110.jpg")]
    # the label file without its frame is a missing image: 1 of 3 labelled frames
    assert report.dropped_images["missing image file"] == 1
    with pytest.raises(DatasetError, match=r"1 of 3 image files are missing.*Video_3_16_03_03\.463443\.jpg"):
        read_fred(root, sets=["canonical/test"], modality="rgb")


def test_rgb_without_yolo_folder_is_read_by_position(tmp_path):
    # this used to be refused ("needs RGB_YOLO/"), which no FRED release has: the RGB stream is now
    # labelled by the authors' rule, frame i <- the lines at time (i + 1) * 0.033333
    root = _fred(tmp_path)
    _image(root / "4" / "RGB" / "Video_4_16_03_03.363444.jpg")
    with pytest.raises(DatasetError, match=r"FRED sequence 4 \(.*\): 1 RGB frames \(RGB/\*\.jpg\) but 3 event"):
        read_fred(root, sets=["canonical/train"], modality="rgb", max_missing=0.5)
    for stem in ("Video_4_16_03_03.396777", "Video_4_16_03_03.430110"):
        _image(root / "4" / "RGB" / f"{stem}.jpg")
    (root / "4" / "coordinates.txt").write_text(
        "0.033333: 10.0, 5.0, 20.0, 15.0, 1, DJI Mini 2\n0.099999: 1, 2, 9, 12, 1, DJI Mini 2\n0.5: 1, 1, 5, 5, 1, x\n")
    dataset, report = read_fred(root, sets=["canonical/train"], modality="rgb", max_missing=0.5)
    seq4 = dataset.filter(lambda r: r["sequence"] == "4")
    assert seq4["frame"] == ["Video_4_16_03_03.363444", "Video_4_16_03_03.430110"]
    assert seq4["timestamp"] == [0.033333, 0.099999]
    assert [objects_of(row)[0]["bbox"] for row in seq4] == [[10, 5, 10, 10], [1, 2, 8, 10]]
    assert report.dropped_images["frame has no line at its time in coordinates.txt"] == 1
    assert report.dropped_boxes["time matches no frame"] == 1


def test_event_frames_matched_by_name_not_position(tmp_path):
    root = _fred(tmp_path)
    dataset, report = read_fred(root, sets=["canonical/train"], modality="event", max_missing=0.5)
    seq3 = dataset.filter(lambda r: r["sequence"] == "3")
    assert len(seq3) == 4
    # frame i carries x centre 0.2 + 0.1 i: x = (cx - 0.0625) * 64
    assert [objects_of(r)[0]["bbox"][0] for r in seq3] == pytest.approx([8.8, 15.2, 21.6, 28.0], abs=1e-4)
    assert seq3["timestamp"] == pytest.approx([0.1, 0.133333, 0.166666, 0.199999])
    seq4 = dataset.filter(lambda r: r["sequence"] == "4")
    assert seq4["frame"] == ["Video_4_frame_500000", "Video_4_frame_533333"]
    assert [o["bbox"] for o in objects_of(seq4[0])] == [[10, 5, 10, 10], [30, 5, 10, 10]]  # two drones
    assert objects_of(seq4[1])[0]["bbox"] == [10, 5, 54, 10]  # clipped at the 64-px width
    assert report.dropped_images == {"missing image file": 1, "frame has no annotation at its timestamp": 1}
    assert report.examples["frame has no annotation at its timestamp"] == [
        str(root / "4" / "Event" / "Frames" / "Video_4_frame_566666.png")]
    with pytest.raises(DatasetError, match=r"1 of 7 image files are missing.*Video_4_frame_600000\.png"):
        read_fred(root, sets=["canonical/train"], modality="event")


def test_drone_model_classes(tmp_path):
    root = _fred(tmp_path)
    with pytest.raises(DatasetError, match="Event_YOLO.*no drone model name"):
        read_fred(root, sets=["canonical/train"], modality="event", drone_classes="models", max_missing=0.5)
    shutil.rmtree(root / "3")
    dataset, report = read_fred(root, sets=None, modality="event", drone_classes="models", max_missing=0.5)
    assert class_names_of(dataset) == FRED_MODELS
    assert [o["category"] for o in objects_of(dataset[0])] == [0, 3]
    assert objects_of(dataset[1])[0]["category"] == 0  # "dji  mini 2": case and spacing normalised
    assert report.boxes_per_class == {"DJI Mini 2": 2, "DarwinFPV cineape20": 1}
    (root / "4" / "coordinates.txt").write_text("0.5: 1, 1, 5, 5, 1, Parrot Anafi\n")
    with pytest.raises(DatasetError, match=r"coordinates.txt:1: unknown drone model 'Parrot Anafi'"):
        read_fred(root, modality="event", drone_classes="models", max_missing=0.5)
    dataset, _ = read_fred(root, modality="event", drone_classes="models", max_missing=0.5,
                           category_map={"Parrot Anafi": "DJI Mini 3"})
    assert objects_of(dataset[0])[0]["category"] == 1
    (root / "4" / "coordinates.txt").write_text("0.5: 1, 1, 5, 5\n")
    with pytest.raises(DatasetError, match="no drone model name"):
        read_fred(root, modality="event", drone_classes="models", max_missing=0.5)


def test_missing_sequence_and_malformed_lines(tmp_path):
    root = _fred(tmp_path)
    (root / "dataset_splits" / "canonical" / "test_split.txt").write_text("9/\n")  # replaces "3/"
    with pytest.raises(DatasetError, match="sequence folder '9'"):
        read_fred(root, sets=["canonical/test"], modality="event")
    (root / "4" / "coordinates.txt").write_text("0.5: 1, 1, 5\n0.5 1 1 5 5\n0.533333: 1, 1, 9, nan\n0.533333: 1, 1, 9, 9\n")
    dataset, report = read_fred(root, sets=["canonical/train"], modality="event", max_missing=0.5)
    assert report.dropped_boxes == {"malformed coordinates line": 2, "non-finite coordinates": 1}
