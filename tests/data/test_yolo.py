"""YOLO (ultralytics) reader: datasets in the real layout (data.yaml, images/, labels/) built here,
with images of real sizes, and one real label file of ultralytics' coco128 checked against COCO."""

from __future__ import annotations

import json
import os

import pytest
import yaml
from PIL import Image

from hftrain.data.convert import convert_main
from hftrain.data.decode import decode_image
from hftrain.data.formats.coco import DatasetError
from hftrain.data.formats.yolo import label_path_of, read_yolo
from hftrain.data.schema import class_names_of, objects_of
from hftrain.data.sources import load_split
from hftrain.recipe import RecipeError, load_recipe

COCO80 = (
    "person,bicycle,car,motorcycle,airplane,bus,train,truck,boat,traffic light,fire hydrant,stop sign,"
    "parking meter,bench,bird,cat,dog,horse,sheep,cow,elephant,bear,zebra,giraffe,backpack,umbrella,handbag,"
    "tie,suitcase,frisbee,skis,snowboard,sports ball,kite,baseball bat,baseball glove,skateboard,surfboard,"
    "tennis racket,bottle,wine glass,cup,fork,knife,spoon,bowl,banana,apple,sandwich,orange,broccoli,carrot,"
    "hot dog,pizza,donut,cake,chair,couch,potted plant,bed,dining table,toilet,tv,laptop,mouse,remote,"
    "keyboard,cell phone,microwave,oven,toaster,sink,refrigerator,book,clock,vase,scissors,teddy bear,"
    "hair drier,toothbrush"
).split(",")

# ultralytics coco128 labels/train2017/000000000009.txt (COCO train2017 image 9, 640 x 480), verbatim
COCO128_000000000009 = """45 0.479492 0.688771 0.955609 0.5955
45 0.736516 0.247188 0.498875 0.476417
50 0.637063 0.732938 0.494125 0.510583
45 0.339438 0.418896 0.678875 0.7815
49 0.646836 0.132552 0.118047 0.0969375
49 0.773148 0.129802 0.0907344 0.0972292
49 0.668297 0.226906 0.131281 0.146896
49 0.642859 0.0792187 0.148063 0.148062
"""
# the same objects in COCO's instances_train2017.json (category, bbox)
COCO_000000000009 = [
    ("bowl", [1.08, 187.69, 611.59, 285.84]), ("bowl", [311.73, 4.31, 319.28, 228.68]),
    ("broccoli", [249.6, 229.27, 316.24, 245.08]), ("bowl", [0.0, 13.51, 434.48, 375.12]),
    ("orange", [376.2, 40.36, 75.55, 46.53]), ("orange", [465.78, 38.97, 58.07, 46.67]),
    ("orange", [385.7, 73.66, 84.02, 70.51]), ("orange", [364.05, 2.49, 94.76, 71.07]),
]


def _image(path, size, orientation=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.new("RGB", size, (120, 80, 40))
    if orientation is None:
        image.save(path)
    else:
        exif = Image.Exif()
        exif[0x0112] = orientation
        image.save(path, exif=exif.tobytes())


def _labels(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def _yaml(target, **data):
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(yaml.safe_dump(data))
    return target


def _boxes(row, names):
    return [(names[o["category"]], o["bbox"]) for o in objects_of(row)]


def _rows(dataset):
    return {row["image"]["path"]: row for row in dataset}


def test_a_coco128_label_file_gives_cocos_own_boxes(tmp_path):
    """coco8.yaml's layout: the yaml elsewhere, `path` relative to its folder, names as {id: name}."""
    root = tmp_path / "datasets" / "coco8"
    _image(root / "images" / "train" / "000000000009.jpg", (640, 480))
    _labels(root / "labels" / "train" / "000000000009.txt", COCO128_000000000009)
    data_yaml = _yaml(tmp_path / "cfg" / "coco8.yaml", path="../datasets/coco8", train="images/train",
                      val="images/val", test=None, names=dict(enumerate(COCO80)))
    dataset, report = read_yolo(data_yaml, ["train"])
    names = class_names_of(dataset)
    assert names == COCO80
    (row,) = dataset
    assert row["image"]["path"] == "images/train/000000000009.jpg"
    assert (row["width"], row["height"]) == (640, 480)
    got = _boxes(row, names)
    assert [name for name, _ in got] == [name for name, _ in COCO_000000000009]
    for (_, box), (_, expected) in zip(got, COCO_000000000009):
        assert box == pytest.approx(expected, abs=0.01)
    assert report.images == 1 and report.boxes == 8
    assert report.boxes_per_class == {"bowl": 3, "broccoli": 1, "orange": 4}
    assert not report.dropped_boxes and not report.changed_boxes and not report.kept_images


def test_the_real_image_size_is_used_non_square_and_exif_rotated(tmp_path):
    root = tmp_path / "ds"
    # 300 x 150 landscape: a reader swapping width and height would give [60, 90, 30, 120]
    _image(root / "images" / "train" / "wide.png", (300, 150))
    _labels(root / "labels" / "train" / "wide.txt", "0 0.5 0.5 0.2 0.4\n")
    # stored 200 x 100, EXIF orientation 6: shown (and decoded for training) as 100 x 200
    _image(root / "images" / "train" / "turned.jpg", (200, 100), orientation=6)
    _labels(root / "labels" / "train" / "turned.txt", "1 0.5 0.25 0.2 0.1\n")
    dataset, _ = read_yolo(_yaml(root / "data.yaml", train="images/train", names=["a", "b"]), ["train"])
    rows = _rows(dataset)
    wide, turned = rows["images/train/wide.png"], rows["images/train/turned.jpg"]
    assert (wide["width"], wide["height"]) == (300, 150)
    assert _boxes(wide, ["a", "b"]) == [("a", [120, 45, 60, 60])]
    assert (turned["width"], turned["height"]) == (100, 200)
    assert _boxes(turned, ["a", "b"]) == [("b", [40, 40, 20, 20])]  # stored size would give [80, 20, 40, 10]
    assert decode_image(root / "images" / "train" / "turned.jpg").size == (100, 200)  # as training sees it


def test_missing_and_empty_label_files_are_images_without_objects(tmp_path, capsys):
    root = tmp_path / "ds"
    for name in ("a", "b", "c"):
        _image(root / "images" / "val" / f"{name}.jpg", (64, 48))
    _labels(root / "labels" / "val" / "a.txt", "0 0.5 0.5 0.5 0.5\n")
    _labels(root / "labels" / "val" / "b.txt", "\n  \n")  # blank lines only: empty
    data_yaml = _yaml(root / "data.yaml", val="images/val", names=["x"])  # c has no label file
    dataset, report = read_yolo(data_yaml, ["val"])
    counts = {row["image"]["path"].rsplit("/", 1)[1]: len(objects_of(row)) for row in dataset}
    assert counts == {"a.jpg": 1, "b.jpg": 0, "c.jpg": 0}
    assert report.kept_images == {"no label file (image without objects)": 1,
                                  "empty label file (image without objects)": 1}
    assert report.examples["no label file (image without objects)"] == [str(root / "images" / "val" / "c.jpg")]
    assert report.images == 3 and not report.dropped_images
    assert any("kept images: 1 no label file" in line for line in report.lines())


def test_bad_lines_are_dropped_or_changed_and_counted_with_file_and_line(tmp_path):
    root = tmp_path / "ds"
    _image(root / "images" / "train" / "a.jpg", (200, 100))
    label_file = root / "labels" / "train" / "a.txt"
    _labels(label_file, "\n".join([
        "0 0.5 0.5 0.2 0.2",                # 1 kept: [80, 40, 40, 20]
        "0 0.5 0.5 0.2",                    # 2 four fields
        "0 0.5 abc 0.2 0.2",                # 3 non-numeric
        "0 nan 0.5 0.2 0.2",                # 4 non-finite
        "0 1.5 0.5 0.2 0.2",                # 5 not normalised (pixels?)
        "0 0.5 0.5 0 0.2",                  # 6 zero width
        "0 0.5 0.5 0.2 0.2",                # 7 repeats line 1
        "1 1.005 0.5 0.2 0.2",              # 8 within the 1 % tolerance: clipped to [181, 40, 19, 20]
        "1 0.1 0.1 0.3 0.1 0.2 0.4",        # 9 a polygon: its bounding box [20, 10, 40, 30]
        "0 0.5 0.5 0.2 0.2 0.9",            # 10 six fields
        "",
    ]))
    dataset, report = read_yolo(_yaml(root / "data.yaml", train="images/train", names=["p", "q"]), ["train"])
    (row,) = dataset
    boxes = _boxes(row, ["p", "q"])
    assert [name for name, _ in boxes] == ["p", "q", "q"]
    for (_, box), expected in zip(boxes, [[80, 40, 40, 20], [181, 40, 19, 20], [20, 10, 40, 30]]):
        assert box == pytest.approx(expected, abs=1e-3)
    where = str(label_file)
    assert report.dropped_boxes == {
        "malformed line (4 fields, expected 5: class cx cy w h)": 1,
        "malformed line (non-numeric coordinate)": 1,
        "malformed line (non-finite coordinate)": 1,
        "coordinates outside [0, 1] (not normalised?)": 1,
        "smaller than 1 px after clipping": 1,
        "duplicate line": 1,
        "malformed line (6 fields, expected 5: class cx cy w h)": 1,
    }
    assert report.examples["duplicate line"] == [f"{where}:7"]
    assert report.examples["coordinates outside [0, 1] (not normalised?)"] == [f"{where}:5"]
    assert report.examples["smaller than 1 px after clipping"] == [f"{where}:6"]
    assert report.changed_boxes == {"clipped to image": 1, "polygon converted to its bounding box": 1}
    assert report.examples["clipped to image"] == [f"{where}:8"]
    assert report.boxes == 3


def test_a_class_id_outside_names_is_an_error_naming_file_and_line(tmp_path):
    root = tmp_path / "ds"
    _image(root / "images" / "train" / "a.jpg", (64, 64))
    _labels(root / "labels" / "train" / "a.txt", "0 0.5 0.5 0.2 0.2\n2 0.5 0.5 0.2 0.2\n")
    with pytest.raises(DatasetError, match=r"a\.txt:2: class '2' is not a class id 0\.\.1"):
        read_yolo(_yaml(root / "data.yaml", train="images/train", names=["p", "q"]), ["train"])


def test_names_as_list_or_dict_and_nc(tmp_path):
    root = tmp_path / "ds"
    _image(root / "images" / "train" / "a.jpg", (64, 64))
    _labels(root / "labels" / "train" / "a.txt", "1 0.5 0.5 0.5 0.5\n")

    def names_of(**keys):
        dataset, _ = read_yolo(_yaml(root / "data.yaml", train="images/train", **keys), ["train"])
        return class_names_of(dataset), _boxes(dataset[0], class_names_of(dataset))[0][0]

    assert names_of(names=["cat", "dog"], nc=2) == (["cat", "dog"], "dog")
    assert names_of(names={1: "dog", 0: "cat"}) == (["cat", "dog"], "dog")
    assert names_of(names={"0": "cat", "1": "dog"}) == (["cat", "dog"], "dog")  # quoted keys
    assert names_of(nc=3) == (["class_0", "class_1", "class_2"], "class_1")
    with pytest.raises(DatasetError, match="nc is 3 but names has 2 classes"):
        names_of(names=["cat", "dog"], nc=3)
    with pytest.raises(DatasetError, match=r"class ids must run 0\.\.1 \(got \[0, 2\]\)"):
        names_of(names={0: "cat", 2: "dog"})
    with pytest.raises(DatasetError, match="neither 'names' nor 'nc'"):
        names_of()


def test_sets_as_folder_list_file_and_list_of_folders(tmp_path):
    root = tmp_path / "ds"
    for name in ("a", "b"):
        _image(root / "images" / "part1" / f"{name}.jpg", (80, 40))
        _labels(root / "labels" / "part1" / f"{name}.txt", "0 0.5 0.5 0.5 0.5\n")
    _image(root / "images" / "part2" / "deep" / "c.png", (40, 80))  # found recursively
    _labels(root / "labels" / "part2" / "deep" / "c.txt", "0 0.25 0.25 0.5 0.5\n")
    (root / "images" / "part2" / "notes.md").write_text("not an image")
    _image(root / "images" / "part2" / ".hidden.jpg", (8, 8))  # hidden: skipped, as ultralytics' glob
    # ultralytics' list file: ./ lines from the list file's folder; also a plain relative and an absolute line
    (root / "train.txt").write_text(f"./images/part1/a.jpg\nimages/part1/b.jpg\n{root / 'images/part2/deep/c.png'}\n"
                                    "./images/part1/readme.md\n")
    data_yaml = _yaml(root / "data.yaml", path=str(root), train="train.txt", val=["images/part1", "images/part2"],
                      test="images/part1", names=["x"])
    expected = {"images/part1/a.jpg": [20, 10, 40, 20], "images/part1/b.jpg": [20, 10, 40, 20],
                "images/part2/deep/c.png": [0, 0, 20, 40]}
    for sets in (["train"], ["val"]):
        dataset, report = read_yolo(data_yaml, sets)
        rows = _rows(dataset)
        assert {path: _boxes(row, ["x"])[0][1] for path, row in rows.items()} == expected, sets
    assert report.images == 3 and not report.dropped_images
    _, report = read_yolo(data_yaml, ["train"])
    assert report.dropped_images == {"list entry without an image suffix": 1}
    assert report.examples["list entry without an image suffix"] == [f"{root / 'train.txt'}:4"]
    dataset, report = read_yolo(data_yaml, ["val", "test"])  # test repeats part1: kept once, counted
    assert len(dataset) == 3 and report.dropped_images == {"listed twice (or by two sets)": 2}


def test_roboflow_layout_and_the_label_path_rule(tmp_path):
    """Roboflow writes `train: ../train/images` beside the yaml, no `path`: ultralytics' fallback reads
    train/images. The label path replaces the LAST /images/ only."""
    root = tmp_path / "export"
    _image(root / "train" / "images" / "images" / "x.jpg", (100, 50))
    _labels(root / "train" / "images" / "labels" / "x.txt", "0 0.5 0.5 1 1\n")
    _labels(root / "train" / "labels" / "images" / "x.txt", "0 0.5 0.5 0.1 0.1\n")  # the wrong one
    dataset, _ = read_yolo(_yaml(root / "data.yaml", train="../train/images", nc=1, names=["k"]), ["train"])
    (row,) = dataset
    assert row["image"]["path"] == "train/images/images/x.jpg"
    assert _boxes(row, ["k"]) == [("k", [0, 0, 100, 50])]
    sep = os.sep
    assert label_path_of(f"{sep}d{sep}images{sep}a.b.JPG") == f"{sep}d{sep}labels{sep}a.b.txt"
    assert label_path_of(f"{sep}d{sep}imgs{sep}a.jpg") == f"{sep}d{sep}imgs{sep}a.txt"  # no images/: beside it


def test_missing_images_unknown_sets_and_images_outside_the_root(tmp_path):
    root = tmp_path / "ds"
    _image(root / "images" / "a.jpg", (32, 32))
    (root / "images" / "broken.jpg").write_bytes(b"not a jpeg")
    (root / "list.txt").write_text("./images/a.jpg\n./images/gone.jpg\n")
    (root / "broken.txt").write_text("./images/a.jpg\n./images/broken.jpg\n")
    _image(tmp_path / "elsewhere" / "images" / "o.jpg", (32, 32))
    (root / "outside.txt").write_text(f"{tmp_path / 'elsewhere' / 'images' / 'o.jpg'}\n")
    data_yaml = _yaml(root / "data.yaml", train="list.txt", val="broken.txt", test="outside.txt", names=["x"],
                      extra=None)
    with pytest.raises(DatasetError, match=r"1 of 2 images are missing or unreadable \(e\.g\. .*gone\.jpg\)"):
        read_yolo(data_yaml, ["train"])
    dataset, report = read_yolo(data_yaml, ["train"], max_missing=0.5)
    assert len(dataset) == 1 and report.dropped_images == {"missing image file": 1}
    with pytest.raises(DatasetError, match=r"broken\.jpg"):
        read_yolo(data_yaml, ["val"])
    _, report = read_yolo(data_yaml, ["val"], max_missing=0.5)
    assert report.dropped_images == {"unreadable image": 1}
    with pytest.raises(DatasetError, match="lies outside the dataset root"):
        read_yolo(data_yaml, ["test"])
    with pytest.raises(DatasetError, match=r"no set 'minival' \(sets with images: train, val, test\)"):
        read_yolo(data_yaml, ["minival"])
    with pytest.raises(DatasetError, match="set 'extra' is empty"):
        read_yolo(data_yaml, ["extra"])
    with pytest.raises(DatasetError, match="path 'nowhere': no such folder"):
        read_yolo(_yaml(root / "bad.yaml", path="nowhere", train="list.txt", names=["x"]), ["train"])


def _small(tmp_path):
    root = tmp_path / "ds"
    for key, count in (("train", 3), ("val", 2)):
        for i in range(count):
            _image(root / "images" / key / f"{i}.jpg", (64, 32))
            _labels(root / "labels" / key / f"{i}.txt", f"{i % 2} 0.5 0.5 0.5 0.5\n")
    return _yaml(root / "data.yaml", train="images/train", val="images/val", names=["p", "q"])


def test_convert_command_and_its_errors(tmp_path, capsys):
    data_yaml = _small(tmp_path)
    out = tmp_path / "out"
    assert convert_main(["yolo", "--images", str(data_yaml), "--split", "train", "--out", str(out)]) == 0
    assert "3 images, 3 boxes" in capsys.readouterr().out
    sidecar = json.loads((out / "hftrain_dataset.json").read_text())
    assert sidecar["format"] == "yolo" and sidecar["image_root"] == str(data_yaml.parent.resolve())
    split = load_split("hf", str(out))
    assert (split.image_root / split.dataset[0]["image"]["path"]).is_file()
    assert convert_main(["yolo", "--images", str(data_yaml), "--out", str(tmp_path / "o2")]) == 1
    assert "name the data.yaml set(s)" in capsys.readouterr().err
    assert convert_main(["yolo", "--images", str(data_yaml), "--labels", str(data_yaml), "--split", "val",
                         "--out", str(tmp_path / "o3")]) == 1
    assert "found from data.yaml" in capsys.readouterr().err


def test_recipes_read_yolo_through_the_cache_which_follows_labels_and_images(tmp_path):
    data_yaml = _small(tmp_path)
    cache = tmp_path / "cache"

    def load():
        return load_split("yolo", str(data_yaml), sets=["val"], cache_dir=cache)

    first = load()
    assert len(first.dataset) == 2 and "converted and cached" in first.notes[0]
    assert "cache hit" in load().notes[0]
    label = data_yaml.parent / "labels" / "val" / "1.txt"
    label.write_text("1 0.5 0.5 0.5 0.5\n0 0.25 0.25 0.25 0.25\n")  # one box more, new size and mtime
    again = load()
    assert "converted and cached" in again.notes[0] and again.report.boxes == 3
    _image(data_yaml.parent / "images" / "val" / "new" / "2.jpg", (64, 32))  # a new image, no label yet
    grown = load()
    assert "converted and cached" in grown.notes[0] and len(grown.dataset) == 3


def test_a_yolo_recipe_must_name_its_sets(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump({"data": {"format": "yolo", "train": {"images": "d.yaml", "sets": ["train"]},
                                             "val": {"images": "d.yaml", "labels": "x.txt"}}}))
    with pytest.raises(RecipeError) as err:
        load_recipe(path, check_paths=False)
    text = str(err.value)
    assert "data.val.sets: format yolo reads the data.yaml sets named here" in text
    assert "data.val.labels: format yolo finds the label files from data.yaml" in text
    assert "data.train" not in text
