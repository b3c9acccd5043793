"""`hftrain convert --out`: what --overwrite may replace, and that the new conversion is complete first."""

from __future__ import annotations

import shutil

from hftrain.data.convert import convert_main, load_converted
from hftrain.data.schema import IMAGE_ROOT_FILE
from helpers.fixtures_path import fixtures_dir

COCO = fixtures_dir() / "coco"


def _coco_copy(tmp_path):
    """The real COCO fixture (4 images and their instances JSON) copied to a folder of its own."""
    images = tmp_path / "coco"
    shutil.copytree(COCO, images)
    return images


def _listing(folder):
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*"))


def test_overwrite_refuses_the_image_folder_and_leaves_it_untouched(tmp_path, capsys):
    images = _coco_copy(tmp_path)
    before = _listing(images)
    argv = ["coco", "--images", str(images), "--labels", str(images / "test_coco.json"), "--overwrite"]
    assert convert_main([*argv, "--out", str(images)]) == 2  # --out is the image folder
    assert "is or contains the input" in capsys.readouterr().err
    assert convert_main([*argv, "--out", str(tmp_path)]) == 2  # --out contains the image folder
    assert "is or contains the input" in capsys.readouterr().err
    assert _listing(images) == before


def test_overwrite_refuses_a_folder_without_an_earlier_conversion(tmp_path, capsys):
    other = tmp_path / "notes"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    argv = ["coco", "--images", str(COCO), "--labels", str(COCO / "test_coco.json"), "--out", str(other)]
    assert convert_main([*argv, "--overwrite"]) == 2
    err = capsys.readouterr().err
    assert f"no {IMAGE_ROOT_FILE}" in err and "nothing was written or removed" in err
    assert _listing(other) == ["keep.txt"] and (other / "keep.txt").read_text() == "mine"
    assert _listing(tmp_path) == ["notes", "notes/keep.txt"]  # no staging folder left beside it


def test_overwrite_replaces_an_earlier_conversion_only_once_the_new_one_is_written(tmp_path, capsys):
    out = tmp_path / "converted"
    argv = ["coco", "--images", str(COCO), "--labels", str(COCO / "test_coco.json"), "--out", str(out)]
    assert convert_main(argv) == 0
    assert len(load_converted(out)[0]) == 4
    assert convert_main([*argv, "--subset", "2"]) == 2  # an earlier conversion, no --overwrite
    assert "use --overwrite" in capsys.readouterr().err
    assert len(load_converted(out)[0]) == 4
    # a conversion that fails leaves the earlier one as it was
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    failing = ["coco", "--images", str(COCO), "--labels", str(broken), "--out", str(out), "--overwrite"]
    assert convert_main(failing) == 1
    assert len(load_converted(out)[0]) == 4
    assert convert_main([*argv, "--subset", "2", "--overwrite"]) == 0
    assert len(load_converted(out)[0]) == 2
    assert _listing(tmp_path) == sorted(["broken.json", "converted", *(f"converted/{p}" for p in _listing(out))])


def test_an_empty_out_folder_is_written(tmp_path):
    out = tmp_path / "empty"
    out.mkdir()
    assert convert_main(["coco", "--images", str(COCO), "--labels", str(COCO / "test_coco.json"),
                         "--out", str(out)]) == 0
    assert len(load_converted(out)[0]) == 4
