"""Blacklist scan: every broken fixture image found, none of the merely unusual ones; decoding."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from hftrain.data.blacklist import apply_blacklist, check_image, reason_counts, scan_images, scan_main
from hftrain.data.convert import convert_main, load_converted
from hftrain.data.decode import UnsupportedMode, decode_image, to_rgb
from helpers.fixtures_path import fixtures_dir

IMAGES = fixtures_dir() / "images"
BROKEN = {
    "truncated_jpeg.jpg": "truncated",
    "truncated_image.png": "truncated",
    "broken_data_stream.png": "unreadable",
    "broken.png": "unreadable",
    "test.gpl": "unreadable",
    "zero_length.jpg": "zero bytes",
}
UNUSUAL = sorted(p.name for p in IMAGES.iterdir() if p.name not in BROKEN)


def test_scan_finds_every_broken_fixture_and_no_unusual_one(tmp_path):
    items = [(p.name, str(p), None) for p in sorted(IMAGES.iterdir())]
    out = tmp_path / "blacklist.json"
    blacklist = scan_images(items, workers=2, out=out)
    assert {k: v.split(":")[0] for k, v in blacklist.items()} == BROKEN
    assert json.loads(out.read_text()) == blacklist
    assert reason_counts(blacklist) == {"truncated": 2, "unreadable": 3, "zero bytes": 1}
    assert len(UNUSUAL) == 21
    assert scan_images(items, workers=1) == blacklist


def test_unusual_images_decode_to_rgb():
    for name in UNUSUAL:
        image = decode_image(IMAGES / name)
        assert image.mode == "RGB", name
    # EXIF orientation applied: the 2x1 stored image is shown 1x2
    assert decode_image(IMAGES / "orientation_rectangle.jpg").size == (1, 2)
    # Pillow stores hopper_orientation_N so that, with the orientation applied, it shows hopper
    plain = np.asarray(decode_image(IMAGES / "hopper.jpg"), dtype=int)
    for n in range(2, 9):
        shown = np.asarray(decode_image(IMAGES / f"hopper_orientation_{n}.jpg"), dtype=int)
        raw = np.asarray(Image.open(IMAGES / f"hopper_orientation_{n}.jpg").convert("RGB"), dtype=int)
        assert np.abs(shown - plain).mean() < 8, n
        assert np.abs(raw - plain).mean() > 20, n  # without the orientation it does not
    assert decode_image((IMAGES / "hopper.jpg").read_bytes()).size == (128, 128)


def test_sixteen_bit_is_scaled_not_clipped():
    raw = np.asarray(Image.open(IMAGES / "i_trns.png")).astype(int)  # I;16, samples 0..255 of 65535
    out = np.asarray(decode_image(IMAGES / "i_trns.png"))[:, :, 0].astype(int)
    assert np.array_equal(out, (raw + 128) // 257)
    ramp = Image.fromarray(np.array([[0, 128, 129, 32896, 65535]], dtype=np.uint16))
    assert ramp.mode == "I;16"
    assert np.asarray(to_rgb(ramp))[0, :, 0].tolist() == [0, 0, 1, 128, 255]
    with pytest.raises(UnsupportedMode, match="'F'"):
        to_rgb(Image.new("F", (2, 2)))


def test_cmyk_is_converted_not_inverted():
    image = decode_image(IMAGES / "pil_sample_cmyk.jpg")
    r, g, b = image.getpixel((2, 1))
    assert r > 200 and g < 60 and b < 60  # the red bar at the top


def test_size_checks_after_exif_orientation(tmp_path):
    rect = str(IMAGES / "orientation_rectangle.jpg")
    assert check_image(rect, (1, 2)) is None  # labels in the displayed frame: fine
    assert check_image(rect, (2, 1)).startswith("size mismatch: annotated 2x1 is the stored size")
    assert check_image(rect, (5, 5)) == "size mismatch: annotated 5x5, image 1x2"
    assert check_image(rect, None, min_side=2) == "smaller than 2 px: 1x2"
    assert check_image(str(IMAGES / "tRNS_null_1x1.png")) is None
    assert check_image(str(tmp_path / "nope.jpg")).startswith("unreadable")
    assert check_image(b"") == "zero bytes"
    Image.new("F", (4, 4)).save(tmp_path / "float.tif")
    assert check_image(str(tmp_path / "float.tif")) == "unsupported mode: F"


def test_scan_command_on_converted_dataset_and_apply(tmp_path, capsys):
    images = tmp_path / "images"
    images.mkdir()
    shutil.copy(IMAGES / "hopper.jpg", images / "good.jpg")
    shutil.copy(IMAGES / "truncated_jpeg.jpg", images / "bad.jpg")
    shutil.copy(IMAGES / "hopper.jpg", images / "wrong_size.jpg")
    coco = {
        "images": [
            {"id": 1, "file_name": "good.jpg", "width": 128, "height": 128},
            {"id": 2, "file_name": "bad.jpg", "width": 100, "height": 100},
            {"id": 3, "file_name": "wrong_size.jpg", "width": 640, "height": 480},
        ],
        "annotations": [], "categories": [{"id": 1, "name": "thing"}],
    }
    (tmp_path / "labels.json").write_text(json.dumps(coco))
    out = tmp_path / "converted"
    assert convert_main(["coco", "--images", str(images), "--labels", str(tmp_path / "labels.json"), "--out", str(out)]) == 0
    assert scan_main(["--data", str(out), "--workers", "2"]) == 0
    printed = capsys.readouterr().out
    assert "scanned 3 images with 2 workers: 2 blacklisted" in printed
    blacklist = json.loads((out / "blacklist.json").read_text())
    assert blacklist["bad.jpg"].startswith("truncated")
    assert blacklist["wrong_size.jpg"] == "size mismatch: annotated 640x480, image 128x128"
    dataset, _ = load_converted(out)
    kept, removed = apply_blacklist(dataset, out / "blacklist.json")
    assert removed == 2 and kept["image_id"] == [1]
    assert scan_main(["--images", str(images), "--labels", str(tmp_path / "labels.json"),
                      "--out", str(tmp_path / "b.json"), "--workers", "1"]) == 0
    assert json.loads((tmp_path / "b.json").read_text()) == blacklist
    assert scan_main(["--data", str(tmp_path / "recipe.yaml")]) == 2
