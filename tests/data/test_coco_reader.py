"""COCO reader: the real fixture file and a hand-written file with every kind of bad entry."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from hftrain.data.formats.coco import DatasetError, read_coco
from hftrain.data.schema import class_names_of, objects_of
from helpers.fixtures_path import fixtures_dir

COCO = fixtures_dir() / "coco"


def test_real_coco_fixture_boxes_and_labels():
    dataset, report = read_coco(COCO, COCO / "test_coco.json")
    assert class_names_of(dataset) == ["person"]
    assert dataset["image_id"] == [785, 40083, 196141, 197388]
    assert [(r["width"], r["height"]) for r in dataset] == [(640, 425), (500, 333), (640, 429), (640, 392)]
    assert [len(objects_of(r)) for r in dataset] == [1, 3, 5, 5]
    first = objects_of(dataset[0])[0]
    assert first["id"] == 442619
    assert first["bbox"] == pytest.approx([280.79, 44.73, 218.7, 346.68], abs=1e-4)
    assert first["area"] == pytest.approx(27789.11055, rel=1e-6)
    assert first["category"] == 0 and first["iscrowd"] == 0
    # 543117 starts at x = 0.5, inside the image: not clipped
    last = objects_of(dataset[3])[4]
    assert last["id"] == 543117 and last["bbox"] == pytest.approx([0.5, 43.74, 90.1, 220.09], abs=1e-4)
    assert report.images == 4 and report.boxes == 14
    assert not report.dropped_boxes and not report.changed_boxes and not report.dropped_images
    assert dataset[0]["image"] == {"path": "000000000785.jpg", "bytes": None}


def _write(tmp_path, images, annotations, categories):
    path = tmp_path / "instances.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return path


@pytest.fixture
def images_dir(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    for name in ("a.jpg", "b.jpg", "c.jpg"):
        Image.new("RGB", (100, 50)).save(folder / name)
    return folder


CATEGORIES = [{"id": 90, "name": "toothbrush"}, {"id": 1, "name": "person"}, {"id": 18, "name": "dog"}]


def test_handwritten_coco_every_condition(tmp_path, images_dir):
    images = [
        {"id": 1, "file_name": "a.jpg", "width": 100, "height": 50},
        {"id": 2, "file_name": "b.jpg", "width": 100, "height": 50},  # no annotations: kept
        {"id": 3, "file_name": "c.jpg", "width": 100, "height": 50},
    ]
    annotations = [
        {"id": 10, "image_id": 1, "category_id": 90, "bbox": [10, 10, 20, 20], "iscrowd": 0, "area": 400},
        {"id": 11, "image_id": 1, "category_id": 1, "bbox": [0, 0, 60, 30], "iscrowd": 1, "area": 1800},
        {"id": 12, "image_id": 1, "category_id": 18, "bbox": [90, 40, 30, 30], "iscrowd": 0},  # out of image
        {"id": 13, "image_id": 3, "category_id": 1, "bbox": [5, 5, 0.5, 10], "iscrowd": 0},  # 0.5 px wide
        {"id": 14, "image_id": 3, "category_id": 1, "bbox": [5, 5, float("nan"), 10], "iscrowd": 0},  # NaN
        {"id": 15, "image_id": 3, "category_id": 18, "bbox": [-10, -5, 30, 20], "iscrowd": 0},  # clipped at 0
    ]
    dataset, report = read_coco(images_dir, _write(tmp_path, images, annotations, CATEGORIES))
    # contiguous labels in increasing id order: 1 person, 18 dog, 90 toothbrush
    assert class_names_of(dataset) == ["person", "dog", "toothbrush"]
    rows = {r["image_id"]: r for r in dataset}
    assert sorted(rows) == [1, 2, 3]
    assert objects_of(rows[2]) == []
    a = {o["id"]: o for o in objects_of(rows[1])}
    assert a[10]["category"] == 2 and a[10]["bbox"] == [10, 10, 20, 20]
    assert a[11]["category"] == 0 and a[11]["iscrowd"] == 1
    assert a[12]["category"] == 1 and a[12]["bbox"] == [90, 40, 10, 10]  # clipped to 100x50
    assert a[12]["area"] == 100  # no area given: w*h after clipping
    c = {o["id"]: o for o in objects_of(rows[3])}
    assert set(c) == {15} and c[15]["bbox"] == [0, 0, 20, 15]
    assert report.dropped_boxes == {"smaller than 1 px after clipping": 1, "non-finite coordinates": 1}
    assert report.changed_boxes == {"clipped to image": 2}
    assert report.boxes == 4 and report.boxes_per_class == {"person": 1, "dog": 2, "toothbrush": 1}


def test_path_leaving_the_root_is_rejected_naming_the_entry(tmp_path, images_dir):
    images = [{"id": 7, "file_name": "../../x.jpg", "width": 10, "height": 10}]
    with pytest.raises(ValueError, match=r"image id 7 .*'\.\./\.\./x\.jpg'.*outside the image root"):
        read_coco(images_dir, _write(tmp_path, images, [], CATEGORIES))
    images = [{"id": 8, "file_name": str(images_dir / "a.jpg"), "width": 10, "height": 10}]
    with pytest.raises(ValueError, match="image id 8.*absolute"):
        read_coco(images_dir, _write(tmp_path, images, [], CATEGORIES))


def test_a_symlink_in_the_users_tree_is_followed_out_of_the_root(tmp_path, images_dir):
    outside = tmp_path / "outside.jpg"
    Image.new("RGB", (10, 10)).save(outside)
    (images_dir / "link.jpg").symlink_to(outside)
    images = [{"id": 9, "file_name": "link.jpg", "width": 10, "height": 10}]
    dataset, report = read_coco(images_dir, _write(tmp_path, images, [], CATEGORIES))
    assert dataset[0]["image"]["path"] == "link.jpg" and report.images == 1 and not report.dropped_images


def test_unknown_category_id_names_file_and_id(tmp_path, images_dir):
    images = [{"id": 1, "file_name": "a.jpg", "width": 100, "height": 50}]
    annotations = [{"id": 99, "image_id": 1, "category_id": 5, "bbox": [1, 1, 5, 5]}]
    path = _write(tmp_path, images, annotations, CATEGORIES)
    with pytest.raises(DatasetError, match=rf"{path}.*annotation id 99.*category id 5"):
        read_coco(images_dir, path)


def test_category_map_renames_and_drops(tmp_path, images_dir):
    images = [{"id": 1, "file_name": "a.jpg", "width": 100, "height": 50}]
    annotations = [
        {"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 5, 5]},
        {"id": 2, "image_id": 1, "category_id": 90, "bbox": [1, 1, 5, 5]},
    ]
    dataset, report = read_coco(images_dir, _write(tmp_path, images, annotations, CATEGORIES),
                                category_map={"person": "human", "toothbrush": None})
    assert class_names_of(dataset) == ["human", "dog"]
    assert [o["id"] for o in objects_of(dataset[0])] == [1]
    assert report.dropped_boxes == {"category 'toothbrush' mapped to nothing": 1}


def test_missing_file_is_reported_and_fails_past_max_missing(tmp_path, images_dir):
    images = [
        {"id": 1, "file_name": "a.jpg", "width": 100, "height": 50},
        {"id": 2, "file_name": "gone.jpg", "width": 100, "height": 50},
    ]
    path = _write(tmp_path, images, [], CATEGORIES)
    with pytest.raises(DatasetError, match=r"1 of 2 image files are missing.*gone\.jpg"):
        read_coco(images_dir, path)
    dataset, report = read_coco(images_dir, path, max_missing=0.5)
    assert dataset["image_id"] == [1]
    assert report.dropped_images == {"missing image file": 1}
    assert report.examples["missing image file"] == [str(images_dir / "gone.jpg")]


def test_not_json_names_the_file(tmp_path, images_dir):
    path = tmp_path / "broken.json"
    path.write_text("{not json")
    with pytest.raises(DatasetError, match=f"{path}: not valid JSON"):
        read_coco(images_dir, path)


def _real_coco():
    return json.loads((COCO / "test_coco.json").read_text())


def _write_coco(tmp_path, coco):
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(coco))
    return path


def test_annotations_without_an_image_and_boxes_of_missing_files_are_counted(tmp_path):
    coco = _real_coco()
    orphan = dict(coco["annotations"][0], id=1, image_id=123456)  # no image has this id
    coco["annotations"].append(orphan)
    path = _write_coco(tmp_path, coco)
    dataset, report = read_coco(COCO, path)
    assert report.images == 4 and report.boxes == 14
    assert report.dropped_boxes == {"annotation whose image_id names no image": 1}
    assert "image_id 123456" in report.examples["annotation whose image_id names no image"][0]
    # an image whose file is missing: its image and its 5 boxes are both counted
    coco["images"][2]["file_name"] = "gone.jpg"
    dataset, report = read_coco(COCO, _write_coco(tmp_path, coco), max_missing=0.5)
    assert report.images == 3 and report.boxes == 9
    assert report.dropped_images == {"missing image file": 1}
    assert report.dropped_boxes == {"annotation whose image_id names no image": 1, "box of a missing image file": 5}


def test_annotations_without_id_get_unique_ids(tmp_path):
    coco = _real_coco()
    for ann in coco["annotations"]:
        if ann["image_id"] != 40083:
            del ann["id"]  # 11 of 14 without an id, on three images; 40083's keep theirs
    kept = {a["id"] for a in coco["annotations"] if "id" in a}
    dataset, report = read_coco(COCO, _write_coco(tmp_path, coco))
    ids = [o["id"] for row in dataset for o in objects_of(row)]
    assert len(ids) == 14 and len(set(ids)) == 14  # unique across images
    assert kept < set(ids) and min(set(ids) - kept) == max(kept) + 1
    assert report.changed_boxes == {"annotation without an integer id: given a new unique id": 11}


def test_string_image_ids_are_numbered_and_kept(tmp_path):
    coco = _real_coco()
    names = {785: "a-785", 40083: "b-40083", 196141: "c-196141", 197388: "d-197388"}
    for image in coco["images"]:
        image["id"] = names[image["id"]]
    for ann in coco["annotations"]:
        ann["image_id"] = names[ann["image_id"]]
    dataset, report = read_coco(COCO, _write_coco(tmp_path, coco))
    assert dataset["image_id"] == [1, 2, 3, 4]
    assert dataset["coco_image_id"] == ["a-785", "b-40083", "c-196141", "d-197388"]
    assert [len(objects_of(row)) for row in dataset] == [1, 3, 5, 5] and report.boxes == 14


@pytest.mark.parametrize("edit, message", [
    (lambda c: c["images"][1].pop("width"), r"image id 40083 \('000000040083.jpg'\): no 'width'"),
    (lambda c: c["images"][1].update(height="tall"), r"image id 40083 .*height 'tall' is not a number"),
    (lambda c: c["annotations"][3].pop("category_id"),
     r"annotation id \d+ \(annotations\[3\], image 40083\): no 'category_id'"),
    (lambda c: c["annotations"][2].pop("image_id"), r"annotations\[2\] \(id \d+\): no 'image_id'"),
    (lambda c: c["categories"][0].pop("name"), r"categories\[0\]: no 'name'"),
    (lambda c: c.update(annotations={"1": c["annotations"][0]}), r"'annotations' is a dict, not a list"),
    (lambda c: c["images"][0].update(id=[785]), r"images\[0\]: image id \[785\] is neither an integer nor a string"),
    (lambda c: c["annotations"][0].update(iscrowd="no"), r"annotation id \d+ .*iscrowd 'no' is not a number"),
])
def test_malformed_entries_name_the_file_and_the_entry(tmp_path, edit, message):
    coco = _real_coco()
    edit(coco)
    path = _write_coco(tmp_path, coco)
    with pytest.raises(DatasetError, match=f"{path}.*{message}"):
        read_coco(COCO, path)
