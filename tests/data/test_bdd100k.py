"""BDD100K reader: real det_20/Scalabel sample files and a hand-written 2018-style file."""

from __future__ import annotations

import json

import pytest
from PIL import Image

import hftrain.data.formats.bdd100k as bdd
from hftrain.data.formats.bdd100k import BDD100K_CLASSES, iter_json_list, read_bdd100k
from hftrain.data.formats.coco import DatasetError
from hftrain.data.schema import class_names_of, objects_of
from helpers.fixtures_path import fixtures_dir

FIX = fixtures_dir() / "bdd100k"
L = {name: i for i, name in enumerate(BDD100K_CLASSES)}


def test_ignored_class_legacy_name_and_null_labels(tmp_path):
    dataset, report = read_bdd100k(tmp_path, FIX / "bdd100k_tests" / "example_ignore_annotation.json", check_files=False)
    assert class_names_of(dataset) == BDD100K_CLASSES
    assert len(dataset) == 2 and objects_of(dataset[1]) == []  # "labels": null is kept as background
    other, person = objects_of(dataset[0])
    # other person -> pedestrian ignore region; box2d corners inclusive: w = x2 - x1 + 1
    assert other["category"] == L["pedestrian"] and other["iscrowd"] == 1
    assert other["bbox"] == pytest.approx([1068.051474568342, 362.7665840944419,
                                           1108.7226195720182 - 1068.051474568342 + 1,
                                           466.2931350128905 - 362.7665840944419 + 1], abs=1e-3)
    assert person["category"] == L["pedestrian"] and person["iscrowd"] == 0  # legacy "person"
    assert person["bbox"] == pytest.approx([68.0515, 301.7666, 41.6711, 125.5265], abs=1e-3)
    assert (dataset[0]["width"], dataset[0]["height"]) == (1280, 720)
    assert report.boxes_per_class == {"pedestrian": 2}


def test_det20_and_legacy_frame_agree_by_hand():
    det20, report = read_bdd100k(FIX, FIX / "det20_style_2021-03" / "unitest_val_bdd.json", check_files=False)
    legacy, _ = read_bdd100k(FIX, FIX / "legacy_2020-10" / "unitest_val_bdd.json", check_files=False)
    row = det20[0]
    assert (row["weather"], row["scene"], row["timeofday"]) == ("overcast", "city street", "daytime")
    assert report.boxes == 34
    assert report.boxes_per_class == {"car": 19, "traffic light": 7, "traffic sign": 6, "rider": 1, "motorcycle": 1}
    first = objects_of(row)[0]
    assert first["category"] == L["traffic sign"]
    assert first["bbox"] == pytest.approx([1000.698742, 281.992415, 40.92813, 45.919145], abs=1e-3)
    assert all(o["iscrowd"] == 0 for o in objects_of(row))
    assert objects_of(legacy[0]) == objects_of(row)  # trafficLightColor as a list changes nothing


def test_poly2d_only_labels_are_skipped_and_counted():
    dataset, report = read_bdd100k(FIX, FIX / "bdd100k_tests" / "example_annotation.json", check_files=False)
    assert len(dataset) == 1 and objects_of(dataset[0]) == []
    assert report.dropped_boxes == {"'car' label has no box2d (poly2d only)": 4}


def _box(x1, y1, x2, y2):
    return {"x1": x1, "y1": y1, "x2": x2, "y2": y2}


def _frames_2018():
    return [
        {"name": "a.jpg", "attributes": {"weather": "rainy", "scene": "highway", "timeofday": "night"},
         "labels": [
             {"id": 1, "category": "bike", "attributes": {"occluded": False}, "box2d": _box(10, 20, 29, 59)},
             {"id": 2, "category": "motor", "box2d": _box(0, 0, 9, 9)},
             {"id": 3, "category": "other vehicle", "box2d": _box(100, 100, 199, 149)},
             {"id": 4, "category": "trailer", "box2d": _box(300, 300, 349, 399)},
             {"id": 5, "category": "car", "attributes": {"crowd": True}, "box2d": _box(500, 500, 519, 509)},
             {"id": 6, "category": "drivable area", "poly2d": [{"vertices": [[0, 0], [5, 5]], "types": "LL"}]},
             {"id": 7, "category": "lane/single white", "poly2d": [{"vertices": [[0, 0], [5, 5]], "types": "LL"}]},
             {"id": 8, "category": "car", "box2d": _box(1270, 710, 1300, 730)},  # clipped to 1280x720
             {"id": 9, "category": "car", "box2d": _box(1279.5, 10, 1300, 20)},  # 0.5 px wide after clipping
             {"id": 10, "category": "car", "box2d": _box(float("nan"), 10, 20, 20)},
         ]},
        {"name": "b.jpg", "labels": []},
        {"name": "c.jpg"},
    ]


def test_2018_style_file_by_hand(tmp_path):
    path = tmp_path / "bdd100k_labels_images_val.json"
    path.write_text(json.dumps(_frames_2018()))
    dataset, report = read_bdd100k(tmp_path, path, check_files=False)
    assert len(dataset) == 3 and objects_of(dataset[1]) == [] and objects_of(dataset[2]) == []
    assert dataset[2]["weather"] is None
    got = [(o["category"], o["bbox"], o["iscrowd"]) for o in objects_of(dataset[0])]
    assert got == [
        (L["bicycle"], [10, 20, 20, 40], 0),
        (L["motorcycle"], [0, 0, 10, 10], 0),
        (L["car"], [100, 100, 100, 50], 1),
        (L["truck"], [300, 300, 50, 100], 1),
        (L["car"], [500, 500, 20, 10], 1),
        (L["car"], [1270, 710, 10, 10], 0),
    ]
    assert report.dropped_boxes == {
        "'drivable area' label has no box2d (poly2d only)": 1,
        "'lane/single white' label has no box2d (poly2d only)": 1,
        "smaller than 1 px after clipping": 1,
        "non-finite coordinates": 1,
    }
    assert report.changed_boxes == {"clipped to image": 2}
    assert report.boxes == 6


def test_unknown_category_error_and_category_map(tmp_path):
    path = tmp_path / "det_val.json"
    path.write_text(json.dumps([{"name": "a.jpg", "labels": [{"id": "x7", "category": "tram", "box2d": _box(1, 1, 5, 5)}]}]))
    with pytest.raises(DatasetError, match=rf"{path} frame 0 \('a.jpg'\) label 'x7': unknown category 'tram'"):
        read_bdd100k(tmp_path, path, check_files=False)
    dataset, _ = read_bdd100k(tmp_path, path, category_map={"tram": "train"}, check_files=False)
    assert objects_of(dataset[0])[0]["category"] == L["train"]
    dataset, _ = read_bdd100k(tmp_path, path, category_map={"tram": "tram"}, check_files=False)
    assert class_names_of(dataset) == BDD100K_CLASSES + ["tram"]


def test_paths_outside_root_and_missing_images(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    Image.new("RGB", (1280, 720)).save(images / "a.jpg")
    path = tmp_path / "det_val.json"
    path.write_text(json.dumps([{"name": "../../x.jpg"}]))
    with pytest.raises(ValueError, match=r"frame 0 \('../../x.jpg'\).*outside the image root"):
        read_bdd100k(images, path)
    path.write_text(json.dumps([{"name": "a.jpg"}, {"name": "b.jpg"}]))
    with pytest.raises(DatasetError, match=r"1 of 2 image files are missing.*b\.jpg"):
        read_bdd100k(images, path)
    dataset, report = read_bdd100k(images, path, max_missing=0.5, read_image_sizes=True)
    assert dataset["image"] == [{"path": "a.jpg", "bytes": None}]
    assert report.dropped_images == {"missing image file": 1}


def test_streaming_parser_across_chunk_boundaries(monkeypatch):
    source = FIX / "det20_style_2021-03" / "unitest_val_bdd.json"
    expected = json.loads(source.read_text())
    for size in (3, 64, 1000):
        monkeypatch.setattr(bdd, "_CHUNK", size)
        assert list(iter_json_list(source)) == expected


def test_streaming_parser_rejects_bad_json(tmp_path, monkeypatch):
    monkeypatch.setattr(bdd, "_CHUNK", 5)
    bad = tmp_path / "bad.json"
    bad.write_text('[{"name": "a.jpg"}, {"name": ')
    with pytest.raises(DatasetError, match=f"{bad}: not valid JSON"):
        list(iter_json_list(bad))
    bad.write_text('{"frames": []}')
    with pytest.raises(DatasetError, match="expected a JSON list"):
        list(iter_json_list(bad))
    bad.write_text('[{"name": "a.jpg"} {"name": "b.jpg"}]')
    with pytest.raises(DatasetError, match="expected ',' or ']'"):
        list(iter_json_list(bad))
    empty = tmp_path / "empty.json"
    empty.write_text(" [ ] ")
    assert list(iter_json_list(empty)) == []


DET20 = FIX / "det20_style_2021-03" / "unitest_val_bdd.json"


def _det20_frames():
    return json.loads(DET20.read_text())


def _labels(dataset, row=0):
    return [(o["category"], o["iscrowd"], [round(v, 3) for v in o["bbox"]]) for o in objects_of(dataset[row])]


def test_van_and_caravan_map_to_car_as_det_toml(tmp_path):
    frames = _det20_frames()
    cars = [label for label in frames[0]["labels"] if label["category"] == "car"]
    cars[0]["category"], cars[1]["category"] = "van", "caravan"
    path = tmp_path / "det_val.json"
    path.write_text(json.dumps(frames))
    dataset, report = read_bdd100k(FIX, path, check_files=False)
    reference, _ = read_bdd100k(FIX, DET20, check_files=False)
    assert report.boxes_per_class["car"] == 19 and _labels(dataset) == _labels(reference)


def test_ignored_labels_become_ignore_regions(tmp_path):
    frames = _det20_frames()
    labels = frames[0]["labels"]
    labels[0]["attributes"]["ignored"] = True  # scalabel's check_ignored: attributes.ignored
    labels[1]["ignored"] = True  # the same flag written on the label itself
    path = tmp_path / "det_val.json"
    path.write_text(json.dumps(frames))
    dataset, report = read_bdd100k(FIX, path, check_files=False)
    assert [o["iscrowd"] for o in objects_of(dataset[0])] == [1, 1] + [0] * 32
    assert report.boxes == 34


def test_scalabel_dataset_object_form_and_its_config_size(tmp_path):
    frames = _det20_frames() + json.loads((FIX / "scalabel_tests" / "scalabel_det.json").read_text())
    frames[1]["name"] = "second.jpg"  # the scalabel sample is the same frame: two names for the test
    listed = tmp_path / "listed.json"
    listed.write_text(json.dumps(frames))
    wrapped = tmp_path / "scalabel.json"
    wrapped.write_text(json.dumps({"frames": frames, "groups": None, "config": None}))
    as_list, _ = read_bdd100k(FIX, listed, check_files=False)
    as_object, report = read_bdd100k(FIX, wrapped, check_files=False)
    assert len(as_object) == 2 and report.boxes == 38
    assert [_labels(as_object, i) for i in range(2)] == [_labels(as_list, i) for i in range(2)]
    # the config's imageSize (scalabel's Config.imageSize) is every frame's size without its own
    wrapped.write_text(json.dumps({"frames": frames, "config": {"imageSize": {"width": 1920, "height": 1080}}}))
    sized, _ = read_bdd100k(FIX, wrapped, check_files=False)
    assert [(row["width"], row["height"]) for row in sized] == [(1920, 1080), (1920, 1080)]
    wrapped.write_text(json.dumps({"images": frames}))
    with pytest.raises(DatasetError, match=f"{wrapped}: a JSON object without a 'frames' list"):
        read_bdd100k(FIX, wrapped, check_files=False)


def test_a_frames_own_size_is_used_and_checked_against_its_image(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for name in ("a.jpg", "b.jpg"):
        Image.new("RGB", (640, 360)).save(images / name)
    box = {"id": 1, "category": "car", "box2d": _box(600, 300, 899, 399)}
    frames = [{"name": "a.jpg", "size": {"width": 640, "height": 360}, "labels": [box]},
              {"name": "b.jpg", "size": {"width": 1280, "height": 720}, "labels": [box]}]
    path = tmp_path / "det_val.json"
    path.write_text(json.dumps(frames))
    dataset, report = read_bdd100k(images, path)
    assert [(row["width"], row["height"]) for row in dataset] == [(640, 360), (1280, 720)]
    assert _labels(dataset, 0) == [(L["car"], 0, [600, 300, 40, 60])]  # clipped to the frame's own 640x360
    assert _labels(dataset, 1) == [(L["car"], 0, [600, 300, 300, 100])]
    dataset, report = read_bdd100k(images, path, read_image_sizes=True)
    assert dataset["image_id"] == [1] and report.images == 1
    assert report.dropped_images == {"frame size differs from its image file's": 1}
    assert "size 1280x720, image 640x360" in report.examples["frame size differs from its image file's"][0]
    frames[0]["size"] = {"width": "640"}
    path.write_text(json.dumps(frames))
    with pytest.raises(DatasetError, match=r"frame 0 \('a.jpg'\) size: .* is not a size"):
        read_bdd100k(images, path)
