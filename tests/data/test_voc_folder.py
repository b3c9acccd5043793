"""VOC as LabelImg, CVAT and Roboflow write it: a folder of XML files beside a folder of images.

The real data is a slice of the kangaroo dataset (LabelImg XMLs, ``images/`` + ``annots/``), copied into
the test's folder; the rest is hand-written bad input.
"""

from __future__ import annotations

import shutil

import pytest
from PIL import Image

from helpers.fixtures_path import shared_dataset
from hftrain.data.convert import convert_main, load_converted, load_converted_report
from hftrain.data.formats.coco import DatasetError
from hftrain.data.formats.voc import BY_FILENAME, read_voc_folder
from hftrain.data.schema import class_names_of, objects_of

KANGAROO = shared_dataset("kangaroo")
SLICE = ["00001", "00002", "00003", "00004", "00005", "00006", "00007", "00090"]  # 00090.jpg: 20 bytes short


@pytest.fixture
def kangaroo(tmp_path):
    """Eight kangaroo images and their XMLs in ``images/`` and ``annots/``, as the dataset ships them."""
    for sub in ("images", "annots"):
        (tmp_path / sub).mkdir()
    for stem in SLICE:
        shutil.copy(KANGAROO / "images" / f"{stem}.jpg", tmp_path / "images")
        shutil.copy(KANGAROO / "annots" / f"{stem}.xml", tmp_path / "annots")
    return tmp_path


def test_kangaroo_slice_boxes_by_hand(kangaroo):
    dataset, report = read_voc_folder(kangaroo / "images", kangaroo / "annots")
    assert class_names_of(dataset) == ["kangaroo"]
    assert [r["voc_id"] for r in dataset] == SLICE
    assert [r["image"]["path"] for r in dataset] == [f"{s}.jpg" for s in SLICE]
    first = dataset[0]
    # 00001.xml: 450x319, kangaroos at 233,89,386,262 and 134,105,341,253 (1-based inclusive corners)
    assert (first["width"], first["height"]) == (450, 319)
    assert [(o["category"], o["bbox"], o["difficult"]) for o in objects_of(first)] == [
        (0, [232, 88, 154, 174], 0), (0, [133, 104, 208, 149], 0)]
    assert report.images == 8 and report.boxes == sum(len(objects_of(r)) for r in dataset)
    assert report.boxes_per_class == {"kangaroo": report.boxes}
    assert not report.dropped_images and not report.dropped_boxes
    assert "classes found in the XML files (sorted by name): kangaroo" in "\n".join(report.lines())


def test_whole_kangaroo_folder_converts_from_the_command_line(tmp_path, capsys):
    out = tmp_path / "out"
    assert convert_main(["voc", "--images", str(KANGAROO / "images"), "--labels", str(KANGAROO / "annots"),
                         "--out", str(out)]) == 0
    dataset, root = load_converted(out)
    report = load_converted_report(out)
    assert len(dataset) == 164 and report.images == 164 and root == (KANGAROO / "images").resolve()
    boxes = sum(len(objects_of(r)) for r in dataset.select_columns(["objects"]))
    assert boxes == report.boxes == report.boxes_per_class["kangaroo"] > 164
    assert class_names_of(dataset) == ["kangaroo"] and "1 classes: kangaroo" in capsys.readouterr().out


def _xml(name: str, objects: list[tuple[str, int, int, int, int, str]], filename: str | None = None,
         size=(40, 20)) -> str:
    body = "".join(f"<object><name>{cls}</name><difficult>{diff}</difficult><bndbox><xmin>{x1}</xmin><ymin>{y1}</ymin>"
                   f"<xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox></object>" for cls, x1, y1, x2, y2, diff in objects)
    return (f"<annotation><folder>x</folder><filename>{filename or name + '.jpg'}</filename>"
            f"<size><width>{size[0]}</width><height>{size[1]}</height></size>{body}</annotation>")


def _folder(tmp_path, xmls: dict[str, str], images: list[str], same_folder=False):
    images_dir = tmp_path / "images"
    labels_dir = images_dir if same_folder else tmp_path / "labels"
    images_dir.mkdir(exist_ok=True)
    labels_dir.mkdir(exist_ok=True)
    for name in images:
        Image.new("RGB", (40, 20)).save(images_dir / name)
    for stem, text in xmls.items():
        (labels_dir / f"{stem}.xml").write_text(text)
    return images_dir, labels_dir


def test_classes_sorted_or_given_and_unknown_names(tmp_path):
    images, labels = _folder(tmp_path, {"a": _xml("a", [("zebra", 1, 1, 5, 5, "0"), ("ant", 2, 2, 9, 9, "1")]),
                                        "b": _xml("b", [("moth", 1, 1, 5, 5, "0")])}, ["a.jpg", "b.png"])
    dataset, report = read_voc_folder(images, labels)
    assert class_names_of(dataset) == ["ant", "moth", "zebra"]
    assert [[(o["category"], o["difficult"]) for o in objects_of(r)] for r in dataset] == [[(2, 0), (0, 1)], [(1, 0)]]
    assert dataset[1]["image"]["path"] == "b.png"  # matched by stem, whatever the extension
    dataset, report = read_voc_folder(images, labels, class_names=["zebra", "moth", "ant", "bee"])
    assert class_names_of(dataset) == ["zebra", "moth", "ant", "bee"]
    assert [o["category"] for o in objects_of(dataset[0])] == [0, 2]
    assert "classes as given: zebra, moth, ant, bee" in report.notes
    with pytest.raises(DatasetError, match=r"a\.xml object 0: unknown category 'zebra' \(classes: ant, moth\)"):
        read_voc_folder(images, labels, class_names=["ant", "moth"])
    dataset, report = read_voc_folder(images, labels, class_names=["ant", "moth"], category_map={"zebra": None})
    assert report.dropped_boxes == {"category 'zebra' mapped to nothing": 1}


def test_image_matching_by_stem_fallback_and_what_is_counted(tmp_path):
    xmls = {
        "a": _xml("a", [("cat", 1, 1, 5, 5, "0")], filename="wrong.jpg"),  # the stem wins over <filename>
        "b": _xml("b", [("cat", 1, 1, 5, 5, "0")], filename="photo_b.jpg"),  # no b.*: <filename> is used, counted
        "c": _xml("c", [("cat", 1, 1, 5, 5, "0")], filename="a.jpg"),  # no c.*; a.jpg is a.xml's already
        "d": _xml("d", [("cat", 1, 1, 5, 5, "0")], filename="gone.jpg"),  # no image at all
    }
    images, labels = _folder(tmp_path, xmls, ["a.jpg", "wrong.jpg", "photo_b.jpg", "extra.jpg"])
    with pytest.raises(DatasetError, match=r"1 of 4 image files are missing"):
        read_voc_folder(images, labels)
    dataset, report = read_voc_folder(images, labels, max_missing=0.5)
    assert {r["voc_id"]: r["image"]["path"] for r in dataset} == {"a": "a.jpg", "b": "photo_b.jpg"}
    assert report.dropped_images == {"missing image file": 1, "image already annotated by another XML": 1,
                                     "image without an XML file": 2}  # extra.jpg, wrong.jpg
    assert report.kept_images == {BY_FILENAME: 1}
    assert report.examples[BY_FILENAME] == [f"{labels / 'b.xml'} -> photo_b.jpg"]


def test_roboflow_layout_list_files_and_bad_input(tmp_path):
    # Roboflow's "Pascal VOC" export: images and XMLs in one folder; a list file picks the split
    images, labels = _folder(tmp_path, {s: _xml(s, [("cat", 1, 1, 5, 5, "0")]) for s in "abc"},
                             ["a.jpg", "b.jpg", "c.jpg"], same_folder=True)
    (tmp_path / "val.txt").write_text("c\na\n\n")
    dataset, report = read_voc_folder(images, labels, list_files=[str(tmp_path / "val.txt")])
    assert [r["voc_id"] for r in dataset] == ["c", "a"] and not report.dropped_images
    (tmp_path / "bad.txt").write_text("z\n")
    with pytest.raises(DatasetError, match=r"z\.xml: annotation file not found \(listed by .*bad\.txt\)"):
        read_voc_folder(images, labels, list_files=[str(tmp_path / "bad.txt")])
    (labels / "c.xml").write_text(_xml("c", [("cat", 1, 1, 5, 5, "hard")]))
    with pytest.raises(DatasetError, match=r"c\.xml object 0: <difficult> 'hard' is not a number"):
        read_voc_folder(images, labels)
    (labels / "c.xml").write_text("<annotations><image/></annotations>")  # e.g. a CVAT-for-images XML
    with pytest.raises(DatasetError, match=r"c\.xml: not a VOC annotation \(root element <annotations>"):
        read_voc_folder(images, labels)


def test_helpful_errors_for_the_wrong_folder(tmp_path, kangaroo, capsys):
    # a LabelImg folder given as a VOCdevkit, and a VOCdevkit given as the XML folder
    assert convert_main(["voc", "--images", str(kangaroo / "images"), "--out", str(tmp_path / "o1")]) == 1
    assert "not a VOCdevkit folder" in capsys.readouterr().err
    (tmp_path / "VOCdevkit" / "VOC2007" / "Annotations").mkdir(parents=True)
    assert convert_main(["voc", "--images", str(kangaroo / "images"), "--labels", str(tmp_path / "VOCdevkit"),
                         "--out", str(tmp_path / "o2")]) == 1
    assert "looks like a VOCdevkit" in capsys.readouterr().err
    assert convert_main(["coco", "--images", "x", "--labels", "y.json", "--classes", "a",
                         "--out", str(tmp_path / "o3")]) == 1
    assert "apply to voc only" in capsys.readouterr().err


def test_conversion_cache_follows_the_folder(kangaroo, tmp_path):
    from hftrain.data.sources import load_split

    cache = tmp_path / "cache"
    args = ("voc", str(kangaroo / "images"), str(kangaroo / "annots"))
    assert "converted" in load_split(*args, cache_dir=cache).notes[0]
    assert "cache hit" in load_split(*args, cache_dir=cache).notes[0]
    (kangaroo / "annots" / "00090.xml").unlink()  # an XML removed: the image stays, without labels
    split = load_split(*args, cache_dir=cache)
    assert "converted" in split.notes[0] and len(split.dataset) == 7
    assert split.report.dropped_images == {"image without an XML file": 1}
    named = load_split(*args, cache_dir=cache, class_names=["wombat", "kangaroo"])
    assert "converted" in named.notes[0] and class_names_of(named.dataset) == ["wombat", "kangaroo"]


def test_dry_run_writes_a_voc_folder_with_its_list_files(tmp_path):
    from hftrain.recipe.schema import DataConfig, SplitConfig
    from hftrain.tools.dry_run import write_split

    split = SplitConfig(images="data/kangaroo/images", labels="data/kangaroo/annots", sets=["lists/a.txt", "b.txt"])
    written = write_split("voc", tmp_path, "train", split, DataConfig(format="voc"), 5, 0, first_sequence=0)
    assert [p.rpartition("/")[2] for p in written.sets] == ["a.txt", "b.txt"]
    first, _ = read_voc_folder(written.images, written.labels, list_files=written.sets[:1])
    both, report = read_voc_folder(written.images, written.labels, list_files=written.sets)
    assert len(first) == 3 and len(both) == 5 and not report.dropped_images and report.boxes >= 5
    assert class_names_of(both) == sorted(class_names_of(both))  # found in the files, sorted by name
