"""Datasets the health tests provoke their conditions with: COCO splits of chosen boxes."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from conftest import tiny_recipe

def write_coco(root, split: str, images: list[list[tuple[int, list[float]]]], class_names: list[str], size=(64, 64)):
    """A COCO split whose image i holds boxes ``images[i]`` = [(class index, [x, y, w, h]), ...],
    each box a filled rectangle on a noisy background. ``size`` may be a list of (h, w) per image."""
    rng = np.random.default_rng(len(images))
    folder = root / split
    folder.mkdir(parents=True, exist_ok=True)
    coco = {"images": [], "annotations": [], "categories": [{"id": i + 1, "name": n} for i, n in enumerate(class_names)]}
    colours = [(220, 40, 40), (40, 220, 40), (40, 40, 220)]
    for i, boxes in enumerate(images):
        h, w = size[i] if isinstance(size, list) else size
        pixels = rng.normal(120, 10, (h, w, 3)).clip(0, 255).astype(np.uint8)
        for c, (x, y, bw, bh) in boxes:
            pixels[int(y):int(y + bh), int(x):int(x + bw)] = colours[c % 3]
        Image.fromarray(pixels).save(folder / f"{i:04d}.jpg", quality=95)
        coco["images"].append({"id": i + 1, "file_name": f"{i:04d}.jpg", "height": h, "width": w})
        for c, box in boxes:
            coco["annotations"].append({"id": len(coco["annotations"]) + 1, "image_id": i + 1, "category_id": c + 1,
                                        "bbox": box, "area": box[2] * box[3], "iscrowd": 0})
    (root / f"{split}.json").write_text(json.dumps(coco))


def dataset_recipe(root, run_dir, model="rt_detr", **sections) -> dict:
    recipe = tiny_recipe(root, run_dir, model=model, **sections)
    recipe["data"]["hflip"] = 0.0
    return recipe


@pytest.fixture(scope="module")
def imbalanced(tmp_path_factory):
    """24 training images: 22 with one 'car', 2 with one 'bike' (a 'truck' class is never used)."""
    root = tmp_path_factory.mktemp("imbalanced")
    rng = np.random.default_rng(3)
    images = [[(1 if i in (5, 17) else 0, [float(rng.integers(2, 30)), float(rng.integers(2, 30)), 20.0, 16.0])]
              for i in range(24)]
    write_coco(root, "train", images, ["car", "bike", "truck"])
    write_coco(root, "val", images[:4], ["car", "bike", "truck"])
    return root


@pytest.fixture(scope="module")
def two_boxes_each(tmp_path_factory):
    """16 images with exactly two boxes each: DETR's loss is normalised by the micro-batch's box count,
    so only then is the loss of a batch of 4 the mean of its two micro-batches of 2."""
    root = tmp_path_factory.mktemp("two_boxes")
    rng = np.random.default_rng(5)
    images = [[(int(rng.integers(0, 2)), [float(rng.integers(0, 10)), float(rng.integers(0, 10)), 18.0, 14.0]),
               (int(rng.integers(0, 2)), [float(rng.integers(34, 44)), float(rng.integers(34, 44)), 16.0, 12.0])]
              for _ in range(16)]
    write_coco(root, "train", images, ["a", "b"])
    write_coco(root, "val", images[:4], ["a", "b"])
    return root
