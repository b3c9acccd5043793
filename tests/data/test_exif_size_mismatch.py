"""The loader checks every decoded image against its annotated size, blacklist or not.

A JPEG stored 200x100 with EXIF orientation 6 (rotate 90) is shown 100x200. Labels drawn on the
stored pixels (width 200, height 100) do not fit what training sees: the scan blacklists it as a
size mismatch, and the loader, without a blacklist, skips it the same way and counts it.
"""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from hftrain.data.blacklist import check_image
from hftrain.data.collate import Collate
from hftrain.data.loader import DetectionDataset
from hftrain.data.schema import objects_of
from hftrain.data.sources import load_split
from hftrain.data.transforms import Resize

ORIENTATION = 0x0112


def _jpeg(path, size, orientation=None):
    image = Image.new("RGB", size, (120, 60, 30))
    exif = Image.Exif()
    if orientation:
        exif[ORIENTATION] = orientation
    image.save(path, quality=90, exif=exif.tobytes())
    return path


@pytest.fixture
def split(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    _jpeg(images / "rotated_stored_labels.jpg", (200, 100), orientation=6)
    _jpeg(images / "plain.jpg", (200, 100))
    _jpeg(images / "rotated_shown_labels.jpg", (200, 100), orientation=6)
    coco = {
        "images": [
            {"id": 1, "file_name": "rotated_stored_labels.jpg", "width": 200, "height": 100},
            {"id": 2, "file_name": "plain.jpg", "width": 200, "height": 100},
            {"id": 3, "file_name": "rotated_shown_labels.jpg", "width": 100, "height": 200},
        ],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [150, 10, 40, 40]},
            {"id": 2, "image_id": 2, "category_id": 1, "bbox": [150, 10, 40, 40]},
            {"id": 3, "image_id": 3, "category_id": 1, "bbox": [50, 150, 40, 40]},
        ],
        "categories": [{"id": 1, "name": "thing"}],
    }
    labels = tmp_path / "instances.json"
    labels.write_text(json.dumps(coco))
    return load_split("coco", str(images), str(labels))


def test_scan_and_loader_agree_on_a_rotated_jpeg_labelled_in_its_stored_size(split, capsys):
    rows = split.dataset
    assert [objects_of(r)[0]["bbox"] for r in rows] == [[150, 10, 40, 40], [150, 10, 40, 40], [50, 150, 40, 40]]
    root = split.image_root
    # the scan (data.blacklist) says so
    assert check_image(str(root / "rotated_stored_labels.jpg"), (200, 100)).startswith(
        "size mismatch: annotated 200x100 is the stored size")
    assert check_image(str(root / "rotated_shown_labels.jpg"), (100, 200)) is None
    # the loader, without any blacklist, skips it the same way and counts it
    dataset = DetectionDataset(split, Resize(50, 1000))
    sample = dataset.load(0)
    assert sample["failed"] == 1 and sample["image_id"] == 2  # replaced by the next image, counted
    assert "size mismatch: annotated 200x100, image 100x200" in capsys.readouterr().out
    batch = Collate(normalize_by_canvas=False)([dataset[0], dataset[1]])
    assert batch["skipped"] == 1  # what the loop counts against data.max_bad_fraction
    # the plain image and the rotated one labelled in its displayed size keep correct boxes
    plain = dataset.load(1)
    assert plain["failed"] == 0 and tuple(plain["pixel_values"].shape) == (3, 50, 100)
    assert torch.allclose(plain["boxes"], torch.tensor([[75.0, 5.0, 20.0, 20.0]]))
    shown = dataset.load(2)
    assert shown["failed"] == 0 and tuple(shown["pixel_values"].shape) == (3, 100, 50)
    assert torch.allclose(shown["boxes"], torch.tensor([[25.0, 75.0, 20.0, 20.0]]))


def test_embedded_bytes_are_checked_too(split):
    root = split.image_root

    def embed(row):
        return {"image": {"path": row["image"]["path"], "bytes": (root / row["image"]["path"]).read_bytes()}}

    embedded = split.dataset.map(embed, features=split.dataset.features)
    split.dataset = embedded
    sample = DetectionDataset(split, Resize(50, 1000)).load(0)
    assert sample["failed"] == 1 and sample["image_id"] == 2
