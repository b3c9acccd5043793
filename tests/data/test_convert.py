"""`hftrain convert` end to end, the loader for converted folders, and load_split's cache."""

from __future__ import annotations

import json
import os
import shutil

import datasets
import pytest
from PIL import Image

from hftrain.data.collate import Collate
from hftrain.data.convert import convert_main, load_converted, load_converted_report
from hftrain.data.loader import DetectionDataset
from hftrain.data.schema import IMAGE_ROOT_FILE, check_schema, class_names_of, objects_of
from hftrain.data.sources import load_split
from hftrain.data.transforms import Resize
from helpers.fixtures_path import fixtures_dir
from tests.data.test_fred import _fred

FIX = fixtures_dir()


def _bdd_images(tmp_path):
    images = tmp_path / "bdd_images"
    images.mkdir()
    Image.new("RGB", (1280, 720), (90, 90, 90)).save(images / "b1c66a42-6f7d68ca.jpg")
    return images


def _sources(tmp_path):
    """(format, argv) for each format, on the real fixtures where they have images."""
    return {
        "coco": ["--images", str(FIX / "coco"), "--labels", str(FIX / "coco" / "test_coco.json")],
        "voc": ["--images", str(FIX / "voc" / "VOCdevkit"), "--split", "2007/trainval", "--split", "2012/trainval"],
        "bdd100k": ["--images", str(_bdd_images(tmp_path)),
                    "--labels", str(FIX / "bdd100k" / "det20_style_2021-03" / "unitest_val_bdd.json")],
        "fred": ["--images", str(_fred(tmp_path)), "--split", "canonical/train", "--modality", "event",
                 "--max-missing", "0.2"],
    }


EXPECTED = {"coco": (4, 14, 1), "voc": (10, 28, 20), "bdd100k": (1, 34, 10), "fred": (6, 7, 1)}


def test_each_format_converts_loads_and_feeds_training(tmp_path, capsys):
    for fmt, argv in _sources(tmp_path).items():
        out = tmp_path / f"out_{fmt}"
        assert convert_main([fmt, *argv, "--out", str(out)]) == 0, fmt
        printed = capsys.readouterr().out
        images, boxes, classes = EXPECTED[fmt]
        assert f"{images} images, {boxes} boxes" in printed, (fmt, printed)
        plain = datasets.load_from_disk(str(out))
        check_schema(plain, fmt)
        assert len(class_names_of(plain)) == classes
        sidecar = json.loads((out / IMAGE_ROOT_FILE).read_text())
        assert sidecar["format"] == fmt
        report = json.loads((out / "report.json").read_text())
        assert report["images"] == images and report["boxes"] == boxes
        # the training pipeline reads it: load_split("hf") -> DetectionDataset -> Collate
        split = load_split("hf", str(out))
        assert split.image_root == plain_root(out) and len(split.dataset) == images
        dataset = DetectionDataset(split, Resize(64, 96))
        batch = Collate(normalize_by_canvas=False)([dataset[i] for i in range(min(3, len(dataset)))])
        assert batch["pixel_values"].dtype.is_floating_point is False and batch["pixel_values"].shape[1] == 3


def plain_root(out):
    return load_converted(out)[1]


def test_embed_images_subset_and_report(tmp_path):
    out = tmp_path / "voc_embedded"
    argv = ["voc", "--images", str(FIX / "voc" / "VOCdevkit"), "--split", "2007/trainval",
            "--subset", "3", "--seed", "1", "--embed-images", "--out", str(out)]
    assert convert_main(argv) == 0
    dataset, root = load_converted(out)
    assert len(dataset) == 3
    for row in dataset:
        assert row["image"]["bytes"] == (root / row["image"]["path"]).read_bytes()
    report = load_converted_report(out)
    assert report.dropped_images == {"left out by subset 3 (seed 1)": 2}
    assert report.boxes == sum(len(objects_of(r)) for r in dataset)
    again = tmp_path / "again"
    assert convert_main([*argv[:-1], str(again)]) == 0
    assert load_converted(again)[0]["voc_id"] == dataset["voc_id"]  # the seed decides the sample


def test_convert_errors(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "x").write_text("")
    assert convert_main(["coco", "--images", str(FIX / "coco"), "--labels", str(FIX / "coco" / "test_coco.json"),
                         "--out", str(out)]) == 2
    assert "is not empty and holds no earlier conversion" in capsys.readouterr().err
    assert convert_main(["coco", "--images", str(FIX / "coco"), "--out", str(tmp_path / "o2")]) == 1
    assert "a label file is needed" in capsys.readouterr().err
    assert convert_main(["bdd100k", "--images", str(tmp_path), "--labels",
                         str(FIX / "bdd100k" / "det20_style_2021-03" / "unitest_val_bdd.json"), "--out", str(tmp_path / "o3")]) == 1
    assert "1 of 1 image files are missing" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        convert_main(["coco", "--images", "x", "--out", "y", "--max-missing", "2"])
    with pytest.raises(Exception, match="not a dataset written by"):
        load_converted(tmp_path)


def test_cache_hit_and_rebuild_when_label_file_changes(tmp_path):
    labels = tmp_path / "labels.json"
    shutil.copy(FIX / "coco" / "test_coco.json", labels)
    cache = tmp_path / "cache"
    first = load_split("coco", str(FIX / "coco"), str(labels), cache_dir=cache)
    assert "converted and cached" in first.notes[0] and len(first.dataset) == 4
    second = load_split("coco", str(FIX / "coco"), str(labels), cache_dir=cache)
    assert "conversion cache hit" in second.notes[0]
    assert second.dataset["image_id"] == first.dataset["image_id"]
    assert second.report.boxes == 14
    # change the labels (drop one image), same size class of edit: mtime and size change
    data = json.loads(labels.read_text())
    data["images"] = data["images"][:3]
    labels.write_text(json.dumps(data))
    third = load_split("coco", str(FIX / "coco"), str(labels), cache_dir=cache)
    assert "converted and cached" in third.notes[0] and len(third.dataset) == 3
    # touching alone (same bytes, new mtime) rebuilds too
    stat = labels.stat()
    os.utime(labels, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    fourth = load_split("coco", str(FIX / "coco"), str(labels), cache_dir=cache)
    assert "converted and cached" in fourth.notes[0]
    assert len([p for p in cache.iterdir() if p.name.startswith("coco-")]) == 3
    # other options are part of the key
    fifth = load_split("coco", str(FIX / "coco"), str(labels), cache_dir=cache, category_map={"person": "human"})
    assert "converted and cached" in fifth.notes[0]
    assert class_names_of(fifth.dataset) == ["human"]


def test_voc_cache_follows_the_xml_files(tmp_path):
    devkit = tmp_path / "VOCdevkit"
    shutil.copytree(FIX / "voc" / "VOCdevkit", devkit)
    cache = tmp_path / "cache"
    assert "converted" in load_split("voc", str(devkit), sets=["2007/trainval"], cache_dir=cache).notes[0]
    assert "cache hit" in load_split("voc", str(devkit), sets=["2007/trainval"], cache_dir=cache).notes[0]
    xml = devkit / "VOC2007" / "Annotations" / "000002.xml"
    xml.write_text(xml.read_text().replace("<name>train</name>", "<name>bus</name>"))
    split = load_split("voc", str(devkit), sets=["2007/trainval"], cache_dir=cache)
    assert "converted" in split.notes[0] and split.report.boxes_per_class["bus"] == 1


def test_blacklist_auto_scans_once_and_filters(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    shutil.copy(FIX / "images" / "hopper.jpg", images / "a.jpg")
    shutil.copy(FIX / "images" / "zero_length.jpg", images / "b.jpg")
    labels = tmp_path / "labels.json"
    labels.write_text(json.dumps({
        "images": [{"id": 1, "file_name": "a.jpg", "width": 128, "height": 128},
                   {"id": 2, "file_name": "b.jpg", "width": 128, "height": 128}],
        "annotations": [{"id": 5, "image_id": 2, "category_id": 1, "bbox": [1, 1, 9, 9]}],
        "categories": [{"id": 1, "name": "thing"}],
    }))
    cache = tmp_path / "cache"
    split = load_split("coco", str(images), str(labels), cache_dir=cache, blacklist="auto", scan_workers=2)
    assert split.dataset["image_id"] == [1]
    assert "scanned 2 images" in split.notes[1] and "removed 1 of 2 images" in split.notes[1]
    assert split.report.images == 1 and split.report.boxes == 0
    again = load_split("coco", str(images), str(labels), cache_dir=cache, blacklist="auto")
    assert "cached scan" in again.notes[1] and again.dataset["image_id"] == [1]
    saved = next(cache.glob("blacklist-*.json"))
    by_path = load_split("coco", str(images), str(labels), blacklist=str(saved))
    assert by_path.dataset["image_id"] == [1] and "removed 1 of 2" in by_path.notes[0]
    with pytest.raises(ValueError, match="data.blacklist: .*nope.json not found"):
        load_split("coco", str(images), str(labels), blacklist=str(tmp_path / "nope.json"))


def test_load_split_fred_and_subset(tmp_path):
    root = _fred(tmp_path)
    split = load_split("fred", str(root), sets=["canonical/train"], modality="event", max_missing=0.2,
                       subset=4, seed=0, cache_dir=tmp_path / "cache")
    assert len(split.dataset) == 4 and split.report.dropped_images["left out by subset 4 (seed 0)"] == 2
    assert set(split.dataset.column_names) >= {"sequence", "frame", "timestamp"}
    with pytest.raises(ValueError, match="unknown format 'kitti'"):
        load_split("kitti", str(root))
