"""Image paths: traversal written in annotation files is refused; symbolic links in the user's
own tree (an image folder or a VOC year folder that is a link to elsewhere) are followed."""

from __future__ import annotations

import json
import shutil

import pytest

from hftrain.data.convert import convert_main
from hftrain.data.formats.image_paths import ImageRoot
from hftrain.data.loader import DetectionDataset
from hftrain.data.schema import objects_of, resolve_image_path
from hftrain.data.sources import load_split
from hftrain.data.transforms import Resize
from helpers.fixtures_path import fixtures_dir

FIX = fixtures_dir()


def _loads(out, images):
    split = load_split("hf", str(out))
    assert len(split.dataset) == images
    dataset = DetectionDataset(split, Resize(32, 64))
    samples = [dataset.load(i) for i in range(len(dataset))]
    assert all(s["failed"] == 0 for s in samples)
    return split, samples


def test_coco_image_folder_that_is_a_symlink_to_elsewhere_converts_and_loads(tmp_path):
    elsewhere = tmp_path / "disk2" / "coco_images"
    shutil.copytree(FIX / "coco", elsewhere)
    root = tmp_path / "dataset"
    root.mkdir()
    (root / "images").symlink_to(elsewhere, target_is_directory=True)
    labels = json.loads((FIX / "coco" / "test_coco.json").read_text())
    for image in labels["images"]:
        image["file_name"] = f"images/{image['file_name']}"
    (root / "instances.json").write_text(json.dumps(labels))
    out = tmp_path / "out"
    assert convert_main(["coco", "--images", str(root), "--labels", str(root / "instances.json"),
                         "--out", str(out)]) == 0
    split, samples = _loads(out, 4)
    assert split.dataset[0]["image"]["path"] == "images/000000000785.jpg"
    assert sum(len(objects_of(row)) for row in split.dataset) == 14
    assert sum(len(s["boxes"]) for s in samples) == 14


def test_vocdevkit_whose_year_folders_are_symlinks_converts_and_loads(tmp_path):
    devkit = tmp_path / "VOCdevkit"
    devkit.mkdir()
    for year in ("VOC2007", "VOC2012"):
        (devkit / year).symlink_to(FIX / "voc" / "VOCdevkit" / year, target_is_directory=True)
    out = tmp_path / "out"
    assert convert_main(["voc", "--images", str(devkit), "--split", "2007/trainval", "--split", "2012/trainval",
                         "--out", str(out)]) == 0
    split, samples = _loads(out, 10)
    assert sum(len(objects_of(row)) for row in split.dataset) == 28


def test_traversal_written_in_an_annotation_file_is_refused(tmp_path, capsys):
    images = tmp_path / "images"
    shutil.copytree(FIX / "coco", images)
    labels = json.loads((FIX / "coco" / "test_coco.json").read_text())
    shutil.copy(images / "000000000785.jpg", tmp_path / "outside.jpg")
    for written, message in (("../outside.jpg", "climb above it"),
                             (str(images / "000000000785.jpg"), "is absolute")):
        labels["images"][0]["file_name"] = written
        (tmp_path / "bad.json").write_text(json.dumps(labels))
        assert convert_main(["coco", "--images", str(images), "--labels", str(tmp_path / "bad.json"),
                             "--out", str(tmp_path / "out")]) == 1
        err = capsys.readouterr().err
        assert f"image id 785 ({written!r})" in err and message in err, err
    # the same rule when a converted dataset is read for training
    with pytest.raises(ValueError, match=r"row 3: image path '\.\./x\.jpg' resolves outside the image root"):
        resolve_image_path(images, "../x.jpg", "row 3")
    with pytest.raises(ValueError, match="row 4: image path '/etc/x.jpg' is absolute"):
        resolve_image_path(images, "/etc/x.jpg", "row 4")
    # '..' that stays inside the root is normalised: the file opened is the one the text names
    assert ImageRoot(images).check("sub/../000000000785.jpg", "entry") == ("000000000785.jpg", True)
    assert resolve_image_path(images, "a/./../000000000785.jpg", "row 5") == images / "000000000785.jpg"
