"""VOC reader: the real VOC2007/VOC2012 sample files and hand-written bad input."""

from __future__ import annotations

import pytest
from PIL import Image

from hftrain.data.formats.coco import DatasetError
from hftrain.data.formats.voc import RENAMED, VOC_CLASSES, parse_voc_set, read_voc
from hftrain.data.schema import class_names_of, objects_of
from helpers.fixtures_path import fixtures_dir

DEVKIT = fixtures_dir() / "voc" / "VOCdevkit"
L = {name: i for i, name in enumerate(VOC_CLASSES)}


def _objects(row):
    return [(o["category"], o["bbox"], o["difficult"], o["iscrowd"]) for o in objects_of(row)]


def test_voc07_plus_12_trainval_boxes_by_hand():
    dataset, report = read_voc(DEVKIT, ["2007/trainval", "VOC2012/trainval"])
    assert class_names_of(dataset) == VOC_CLASSES
    rows = {r["voc_id"]: r for r in dataset}
    assert len(rows) == 10 and report.images == 10 and report.boxes == 28
    # 1-based inclusive corners -> 0-based xywh: dog 48,240,195,371; person 8,12,352,498
    assert _objects(rows["VOC2007/000001"]) == [
        (L["dog"], [47, 239, 148, 132], 0, 0),
        (L["person"], [7, 11, 345, 487], 0, 0),
    ]
    assert (rows["VOC2007/000001"]["width"], rows["VOC2007/000001"]["height"]) == (353, 500)
    # the car touching the right border (xmax = 500 = width) ends exactly at the border, unclipped
    car = [o for o in objects_of(rows["VOC2007/000004"]) if o["bbox"][0] == 361][0]
    assert car["bbox"] == [361, 329, 139, 60]
    assert car["bbox"][0] + car["bbox"][2] == 500
    # 000005: five chairs, two of them difficult (kept, marked)
    chairs = _objects(rows["VOC2007/000005"])
    assert [c[0] for c in chairs] == [L["chair"]] * 5
    assert [c[2] for c in chairs] == [0, 0, 1, 0, 1]
    assert chairs[2][1] == [4, 243, 63, 131] and chairs[4][1] == [276, 185, 36, 35]
    # 2007_000027: the nested <part> boxes (head, hands, feet) are not objects
    assert _objects(rows["VOC2012/2007_000027"]) == [(L["person"], [173, 100, 176, 251], 0, 0)]
    assert rows["VOC2012/2007_000027"]["image"]["path"] == "VOC2012/JPEGImages/2007_000027.jpg"
    assert report.boxes_per_class == {"aeroplane": 5, "car": 7, "chair": 6, "dog": 1, "person": 4,
                                      "sofa": 1, "train": 3, "tvmonitor": 1}
    assert not report.dropped_boxes and not report.changed_boxes and not report.dropped_images
    assert len(set(dataset["image_id"])) == 10


def test_same_image_in_two_sets_is_kept_once_and_counted():
    dataset, report = read_voc(DEVKIT, ["2007/trainval", "2007/test"])
    assert len(dataset) == 5
    assert report.dropped_images == {"listed by more than one set": 5}


def test_set_names():
    assert parse_voc_set("2007/trainval") == ("VOC2007", "trainval")
    assert parse_voc_set("VOC2012/val") == ("VOC2012", "val")
    with pytest.raises(DatasetError, match="YEAR/SPLIT"):
        parse_voc_set("trainval")
    with pytest.raises(DatasetError, match="split file .*VOC2007/ImageSets/Main/nosuch.txt"):
        read_voc(DEVKIT, ["2007/nosuch"])


XML = """<annotation><filename>{name}.jpg</filename>{size}
<object><name>{cls}</name><difficult>0</difficult>
<bndbox><xmin>{x1}</xmin><ymin>2</ymin><xmax>{x2}</xmax><ymax>10</ymax></bndbox></object></annotation>"""


def _devkit(tmp_path, entries, image=True):
    year = tmp_path / "VOCdevkit" / "VOC2007"
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (year / sub).mkdir(parents=True, exist_ok=True)
    for name, cls, x1, x2, size in entries:
        size_xml = f"<size><width>{size[0]}</width><height>{size[1]}</height></size>" if size else ""
        (year / "Annotations" / f"{name}.xml").write_text(XML.format(name=name, cls=cls, x1=x1, x2=x2, size=size_xml))
        if image:
            Image.new("RGB", (40, 20)).save(year / "JPEGImages" / f"{name}.jpg")
    (year / "ImageSets" / "Main" / "train.txt").write_text("".join(f"{e[0]}\n" for e in entries))
    return tmp_path / "VOCdevkit"


def test_unknown_class_names_file_and_class(tmp_path):
    devkit = _devkit(tmp_path, [("a", "unicorn", 1, 5, (40, 20))])
    with pytest.raises(DatasetError, match=r"a\.xml object 0: unknown category 'unicorn'"):
        read_voc(devkit, ["2007/train"])
    dataset, report = read_voc(devkit, ["2007/train"], category_map={"unicorn": "horse"})
    assert objects_of(dataset[0])[0]["category"] == L["horse"]
    dataset, report = read_voc(devkit, ["2007/train"], category_map={"unicorn": None})
    assert objects_of(dataset[0]) == [] and report.dropped_boxes == {"category 'unicorn' mapped to nothing": 1}


def test_clipping_degenerate_and_missing_size(tmp_path):
    # box 1: xmax past the 40-px width -> clipped; box 2: xmin == xmax -> one pixel wide, kept;
    # image c has no <size>: read from the 40x20 JPEG
    devkit = _devkit(tmp_path, [("a", "cat", 30, 60, (40, 20)), ("b", "cat", 7, 7, (40, 20)), ("c", "cat", 1, 4, None)])
    dataset, report = read_voc(devkit, ["2007/train"])
    boxes = [objects_of(r)[0]["bbox"] for r in dataset]
    assert boxes == [[29, 1, 11, 9], [6, 1, 1, 9], [0, 1, 4, 9]]
    assert (dataset[2]["width"], dataset[2]["height"]) == (40, 20)
    assert report.changed_boxes["clipped to image"] == 1


def test_missing_image_fails_past_max_missing(tmp_path):
    devkit = _devkit(tmp_path, [("a", "cat", 1, 5, (40, 20))], image=False)
    with pytest.raises(DatasetError, match=r"1 of 1 image files are missing.*a\.jpg"):
        read_voc(devkit, ["2007/train"])
    dataset, report = read_voc(devkit, ["2007/train"], max_missing=1.0)
    assert len(dataset) == 0 and report.dropped_images == {"missing image file": 1}


def test_devkit_image_is_jpegimages_id_not_filename(tmp_path):
    # a.xml names b.jpg in <filename>: the devkit's image of a.xml is JPEGImages/a.jpg all the same
    devkit = _devkit(tmp_path, [("a", "cat", 1, 5, (40, 20)), ("b", "dog", 10, 30, (40, 20))])
    xml = devkit / "VOC2007" / "Annotations" / "a.xml"
    xml.write_text(xml.read_text().replace("<filename>a.jpg</filename>", "<filename>b.jpg</filename>"))
    dataset, report = read_voc(devkit, ["2007/train"])
    rows = {r["voc_id"]: r for r in dataset}
    assert rows["VOC2007/a"]["image"]["path"] == "VOC2007/JPEGImages/a.jpg"
    assert rows["VOC2007/b"]["image"]["path"] == "VOC2007/JPEGImages/b.jpg"
    assert [o["category"] for o in objects_of(rows["VOC2007/a"])] == [L["cat"]]
    assert report.kept_images == {RENAMED: 1} and RENAMED in "\n".join(report.lines())


def test_non_numeric_difficult_names_the_file(tmp_path):
    devkit = _devkit(tmp_path, [("a", "cat", 1, 5, (40, 20))])
    xml = devkit / "VOC2007" / "Annotations" / "a.xml"
    xml.write_text(xml.read_text().replace("<difficult>0</difficult>", "<difficult>yes</difficult>"))
    with pytest.raises(DatasetError, match=r"a\.xml object 0: <difficult> 'yes' is not a number"):
        read_voc(devkit, ["2007/train"])
