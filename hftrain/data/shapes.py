"""A synthetic detection dataset: coloured shapes on noisy backgrounds, written as COCO.

``generate_shapes_coco`` draws a few filled rectangles, ellipses and triangles (axis-aligned,
random size and colour, each colour far from the background's) on a background made of a random
base colour plus per-pixel Gaussian noise. It writes ``out_dir/<split>/NNNNNN.jpg`` and an
ordinary COCO instances file ``out_dir/<split>.json`` whose ``file_name`` entries are relative
to ``out_dir/<split>/``. Categories are 1 ``rectangle``, 2 ``ellipse``, 3 ``triangle``.

Boxes are computed from the pixels each shape painted, so they are exact (before JPEG
compression). Shapes may overlap only a little: a placement whose box covers more than 30% of
a smaller box already in the image (or of itself) is rejected, which also bounds IoU by 0.3.
Boxes are those of the whole shape; a later shape may hide a small part of an earlier one.

Generation is deterministic given ``seed`` and ``split`` (the split name is mixed into the
seed so that train and val differ). The parameters are stored in the JSON's ``info`` dict; a
second call with the same parameters finds them there and returns without redrawing.
"""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

CATEGORIES = [{"id": 1, "name": "rectangle"}, {"id": 2, "name": "ellipse"}, {"id": 3, "name": "triangle"}]
GENERATOR = "hftrain.data.shapes/1"
MAX_OVERLAP = 0.3
NOISE_STD = 12.0
MIN_COLOUR_DISTANCE = 120.0


def shape_mask(category_id: int, w: int, h: int, rng: np.random.Generator) -> np.ndarray:
    """A boolean (h, w) mask of one shape filling (most of) a w x h box, tested at pixel centres."""
    ys, xs = np.mgrid[0:h, 0:w] + 0.5
    if category_id == 1:
        return np.ones((h, w), dtype=bool)
    if category_id == 2:
        return ((xs - w / 2) / (w / 2)) ** 2 + ((ys - h / 2) / (h / 2)) ** 2 <= 1.0
    # Triangle: apex on one side of the box, base on the opposite side, then maybe transposed.
    flip, transpose = rng.integers(0, 2, size=2)
    if transpose:
        w, h, xs, ys = h, w, ys.T, xs.T
    apex = rng.uniform(0.0, w)
    (ax, ay), (bx, by), (cx, cy) = (apex, 0.0), (0.0, float(h)), (float(w), float(h))
    if flip:
        ay, by, cy = h - ay, h - by, h - cy

    def side(px, py, qx, qy):
        return (qx - px) * (ys - py) - (qy - py) * (xs - px)

    d1, d2, d3 = side(ax, ay, bx, by), side(bx, by, cx, cy), side(cx, cy, ax, ay)
    mask = ((d1 >= 0) & (d2 >= 0) & (d3 >= 0)) | ((d1 <= 0) & (d2 <= 0) & (d3 <= 0))
    return mask.T if transpose else mask


def mask_box(mask: np.ndarray, x: int = 0, y: int = 0) -> list[float] | None:
    """The COCO ``[x, y, w, h]`` box of the mask's set pixels, placed at (x, y); None if empty."""
    rows, cols = np.nonzero(mask)
    if rows.size == 0:
        return None
    x0, y0 = x + int(cols.min()), y + int(rows.min())
    return [float(x0), float(y0), float(x + int(cols.max()) + 1 - x0), float(y + int(rows.max()) + 1 - y0)]


def _overlap(a: list[float], b: list[float]) -> float:
    """Intersection over the smaller box's area (an upper bound of IoU)."""
    iw = min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0])
    ih = min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1])
    return 0.0 if iw <= 0 or ih <= 0 else iw * ih / min(a[2] * a[3], b[2] * b[3])


def _colour_far_from(base: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    while True:
        colour = rng.integers(0, 256, size=3)
        if np.linalg.norm(colour - base) >= MIN_COLOUR_DISTANCE:
            return colour


def generate_shapes_coco(out_dir: Path, split: str, num_images: int, image_size: int = 128,
                         seed: int = 0, min_objects: int = 1, max_objects: int = 4,
                         min_side: int | None = None, max_side: int | None = None) -> Path:
    """Write ``num_images`` shape images and ``out_dir/<split>.json``; return the JSON's path.

    ``min_side``/``max_side`` bound each shape's box sides in pixels (default ``image_size // 8``
    and ``image_size // 2``).
    """
    out_dir = Path(out_dir)
    min_side = max(2, image_size // 8) if min_side is None else min_side
    max_side = image_size // 2 if max_side is None else max_side
    if not 1 <= min_side <= max_side <= image_size or not 0 <= min_objects <= max_objects:
        raise ValueError(f"need 1 <= min_side ({min_side}) <= max_side ({max_side}) <= image_size "
                         f"({image_size}) and 0 <= min_objects ({min_objects}) <= max_objects ({max_objects})")
    params = {"generator": GENERATOR, "split": split, "num_images": num_images, "image_size": image_size,
              "seed": seed, "min_objects": min_objects, "max_objects": max_objects,
              "min_side": min_side, "max_side": max_side}
    json_path, image_dir = out_dir / f"{split}.json", out_dir / split
    if json_path.exists():
        try:
            existing = json.loads(json_path.read_text())
        except ValueError:
            existing = {}
        if existing.get("info", {}).get("parameters") == params and image_dir.is_dir():
            return json_path

    image_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([seed, zlib.crc32(split.encode())])
    images, annotations = [], []
    for image_id in range(1, num_images + 1):
        base = rng.integers(0, 256, size=3)
        noise = rng.normal(0.0, NOISE_STD, size=(image_size, image_size, 3))
        image = np.clip(base + noise, 0, 255).astype(np.uint8)
        boxes = []
        for _ in range(int(rng.integers(min_objects, max_objects + 1))):
            for _attempt in range(20):
                category_id = int(rng.integers(1, 4))
                w, h = (int(v) for v in rng.integers(min_side, max_side + 1, size=2))
                x, y = int(rng.integers(0, image_size - w + 1)), int(rng.integers(0, image_size - h + 1))
                mask = shape_mask(category_id, w, h, rng)
                box = mask_box(mask, x, y)
                if box is not None and all(_overlap(box, other) <= MAX_OVERLAP for other in boxes):
                    image[y:y + h, x:x + w][mask] = _colour_far_from(base, rng)
                    boxes.append(box)
                    annotations.append({"id": len(annotations) + 1, "image_id": image_id,
                                        "category_id": category_id, "bbox": box,
                                        "area": box[2] * box[3], "iscrowd": 0})
                    break
        file_name = f"{image_id:06d}.jpg"
        Image.fromarray(image).save(image_dir / file_name, quality=90)
        images.append({"id": image_id, "file_name": file_name, "width": image_size, "height": image_size})

    coco = {"info": {"description": f"hftrain synthetic shapes ({split})", "parameters": params},
            "images": images, "annotations": annotations, "categories": CATEGORIES}
    tmp = json_path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(coco))
    tmp.replace(json_path)
    return json_path
