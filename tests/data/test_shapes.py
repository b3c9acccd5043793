import json

import numpy as np
import pytest
from PIL import Image

from hftrain.data.shapes import generate_shapes_coco, mask_box, shape_mask


def _load(path):
    return json.loads(path.read_text())


def test_same_seed_gives_same_dataset(tmp_path):
    a = generate_shapes_coco(tmp_path / "a", "train", 8, image_size=64, seed=3)
    b = generate_shapes_coco(tmp_path / "b", "train", 8, image_size=64, seed=3)
    c = generate_shapes_coco(tmp_path / "c", "train", 8, image_size=64, seed=4)
    assert _load(a) == _load(b)
    assert _load(a)["annotations"] != _load(c)["annotations"]
    for name in ("000001.jpg", "000008.jpg"):
        assert (a.parent / "train" / name).read_bytes() == (b.parent / "train" / name).read_bytes()


def test_splits_differ_with_the_same_seed(tmp_path):
    train = generate_shapes_coco(tmp_path, "train", 8, image_size=64)
    val = generate_shapes_coco(tmp_path, "val", 8, image_size=64)
    assert _load(train)["annotations"] != _load(val)["annotations"]


def test_coco_structure_and_boxes_inside_image(tmp_path):
    path = generate_shapes_coco(tmp_path, "val", 30, image_size=96, min_objects=2, max_objects=5)
    coco = _load(path)
    assert path == tmp_path / "val.json"
    assert coco["categories"] == [{"id": 1, "name": "rectangle"}, {"id": 2, "name": "ellipse"},
                                  {"id": 3, "name": "triangle"}]
    assert len(coco["images"]) == 30
    assert len({a["id"] for a in coco["annotations"]}) == len(coco["annotations"])
    for image in coco["images"]:
        assert (image["width"], image["height"]) == (96, 96)
        with Image.open(tmp_path / "val" / image["file_name"]) as im:
            assert im.size == (96, 96) and im.mode == "RGB"
    per_image = {}
    for ann in coco["annotations"]:
        x, y, w, h = ann["bbox"]
        assert ann["category_id"] in (1, 2, 3) and ann["iscrowd"] == 0
        assert 0 <= x and 0 <= y and w > 0 and h > 0 and x + w <= 96 and y + h <= 96
        assert ann["area"] == w * h
        per_image.setdefault(ann["image_id"], []).append(ann)
    assert all(2 <= len(anns) <= 5 for anns in per_image.values())
    assert {a["category_id"] for a in coco["annotations"]} == {1, 2, 3}


@pytest.mark.parametrize("category_id", [1, 2, 3])
def test_box_is_tight_to_the_drawn_shape(category_id):
    rng = np.random.default_rng(category_id)
    for _ in range(20):
        w, h = (int(v) for v in rng.integers(3, 40, size=2))
        x, y = (int(v) for v in rng.integers(0, 24, size=2))
        image = np.zeros((64, 64, 3), dtype=np.uint8)
        mask = shape_mask(category_id, w, h, rng)
        image[y:y + h, x:x + w][mask] = (200, 100, 50)
        x0, y0, bw, bh = (int(v) for v in mask_box(mask, x, y))
        drawn = image.any(axis=2)
        # Nothing outside the box, and every edge row/column of the box holds shape pixels.
        assert drawn.sum() == drawn[y0:y0 + bh, x0:x0 + bw].sum()
        assert drawn[y0, x0:x0 + bw].any() and drawn[y0 + bh - 1, x0:x0 + bw].any()
        assert drawn[y0:y0 + bh, x0].any() and drawn[y0:y0 + bh, x0 + bw - 1].any()


def test_generated_box_edges_hold_the_shape(tmp_path):
    # One object per image: the box's edge rows/columns differ from the background colour.
    path = generate_shapes_coco(tmp_path, "train", 5, image_size=64, min_objects=1, max_objects=1)
    for ann in _load(path)["annotations"]:
        pixels = np.asarray(Image.open(tmp_path / "train" / f"{ann['image_id']:06d}.jpg"), dtype=float)
        background = np.median(pixels.reshape(-1, 3), axis=0)  # the shape covers < 1/4 of it
        x, y, w, h = (int(v) for v in ann["bbox"])
        far = np.linalg.norm(pixels - background, axis=2) > 70
        assert far[y, x:x + w].any() and far[y + h - 1, x:x + w].any()
        assert far[y:y + h, x].any() and far[y:y + h, x + w - 1].any()
        far[max(y - 2, 0):y + h + 2, max(x - 2, 0):x + w + 2] = False  # JPEG blurs edges by a pixel
        assert not far.any()


def test_skips_when_parameters_match_and_regenerates_otherwise(tmp_path):
    path = generate_shapes_coco(tmp_path, "train", 4, image_size=32, seed=1)
    marker = _load(path)
    marker["info"]["marker"] = True
    path.write_text(json.dumps(marker))
    generate_shapes_coco(tmp_path, "train", 4, image_size=32, seed=1)
    assert _load(path)["info"].get("marker") is True  # same parameters: untouched
    generate_shapes_coco(tmp_path, "train", 4, image_size=32, seed=2)
    coco = _load(path)
    assert "marker" not in coco["info"] and coco["info"]["parameters"]["seed"] == 2
    generate_shapes_coco(tmp_path, "train", 6, image_size=32, seed=2)
    assert len(_load(path)["images"]) == 6
