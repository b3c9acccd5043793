"""Mosaic, mixup, scale jitter and close_mosaic on uint8 tensors (hftrain.data.augment), through the
functions, the dataset, a real DataLoader and a tiny training run."""

from __future__ import annotations

import json
import math
import random

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import BatchSampler

from conftest import records, tiny_recipe, write_recipe
from hftrain.data.augment import FILL, mixup, mosaic, scale
from hftrain.data.collate import Collate, unpack_labels
from hftrain.data.epoch_sampler import Draw
from hftrain.data.loader import DetectionDataset, make_loader
from hftrain.data.sources import load_split
from hftrain.data.transforms import Resize, flip_horizontal
from hftrain.recipe import AugmentConfig, DataConfig, RecipeError, load_recipe, resolve_augment
from hftrain.data.samplers import RepeatFactorSampler
from hftrain.train import train


def box_colour(box_id: int) -> tuple[int, int, int]:
    """A distinct colour per box id (green 200: never a background, never the mosaic's gray)."""
    return (box_id * 37 % 256, 200, box_id * 11 % 256)


def coloured_tile(height: int, width: int, tile: int, first_id: int, rng: np.random.Generator) -> dict:
    """A sample whose boxes are non-overlapping rectangles of a unique colour each (label = box id),
    one per 12 px cell, 1 to 11 px wide and high (the small ones provoke the mosaic's drop rule)."""
    pixels = torch.zeros((3, height, width), dtype=torch.uint8)
    pixels[0] = tile + 1  # a background of its own per tile
    boxes, labels = [], []
    for y0 in range(0, height - 1, 12):
        for x0 in range(0, width - 1, 12):
            w = int(rng.integers(1, min(11, width - x0) + 1))
            h = int(rng.integers(1, min(11, height - y0) + 1))
            box_id = first_id + len(boxes)
            pixels[:, y0:y0 + h, x0:x0 + w] = torch.tensor(box_colour(box_id), dtype=torch.uint8)[:, None, None]
            boxes.append([x0, y0, w, h])
            labels.append(box_id)
    return {"pixel_values": pixels, "boxes": torch.tensor(boxes, dtype=torch.float32),
            "class_labels": torch.tensor(labels), "image_id": tile, "orig_size": (height, width), "failed": 0}


def colour_mask(canvas: torch.Tensor, colour) -> torch.Tensor:
    return (canvas == torch.tensor(colour, dtype=torch.uint8)[:, None, None]).all(0)


def test_mosaic_boxes_lie_inside_and_cover_exactly_the_visible_pasted_content():
    """Four tiles of different sizes with uniquely coloured boxes, 25 centres: every output box lies in
    the canvas and covers exactly the pixels of its colour; every box whose colour is visible but that
    is missing from the output failed the size rule and is counted in boxes_dropped."""
    rng = np.random.default_rng(0)
    sizes = [(64, 64), (48, 64), (64, 40), (30, 50)]
    tiles, first = [], 0
    for k, (h, w) in enumerate(sizes):
        tiles.append(coloured_tile(h, w, k, first, rng))
        first += len(tiles[-1]["boxes"])
    areas = {int(lab): float(b[2] * b[3]) for t in tiles for b, lab in zip(t["boxes"], t["class_labels"])}
    originals = [{k: v.clone() for k, v in t.items() if torch.is_tensor(v)} for t in tiles]
    centres = [(0.25, 0.25), (0.75, 0.75)] + [tuple(rng.uniform(0.25, 0.75, 2)) for _ in range(23)]
    kept_total = dropped_total = 0
    for centre in centres:
        out = mosaic(tiles, (64, 80), centre, min_box_size=2.0, min_visible=0.1)
        canvas, boxes, labels = out["pixel_values"], out["boxes"], out["class_labels"].tolist()
        assert canvas.shape == (3, 64, 80) and canvas.dtype == torch.uint8
        assert len(set(labels)) == len(labels)
        assert torch.equal(boxes, boxes.round())  # integer centre and offsets: exact pixel boxes
        assert (boxes[:, :2] >= 0).all() and (boxes[:, 0] + boxes[:, 2] <= 80).all() and (boxes[:, 1] + boxes[:, 3] <= 64).all()
        for (x, y, w, h), label in zip(boxes.int().tolist(), labels):
            assert w >= 2 and h >= 2 and w * h >= 0.1 * areas[label]
            region = colour_mask(canvas, box_colour(label))
            assert region[y:y + h, x:x + w].all()  # the box is its object's colour throughout...
            assert int(region.sum()) == w * h  # ...and the colour is nowhere else
        dropped = 0
        for label in set(areas) - set(labels):
            region = colour_mask(canvas, box_colour(label))
            if region.any():  # visible, yet not a target: it must have failed the size rule
                rows, cols = region.any(1).nonzero(), region.any(0).nonzero()
                vh, vw = int(rows.max() - rows.min() + 1), int(cols.max() - cols.min() + 1)
                assert vw < 2 or vh < 2 or vw * vh < 0.1 * areas[label], (label, vw, vh)
                dropped += 1
        assert out["boxes_dropped"] == dropped
        kept_total += len(labels)
        dropped_total += dropped
        cx, cy = round(centre[0] * 80), round(centre[1] * 64)
        assert (canvas[:, cy:, cx + 50:] == FILL).all()  # beyond the 50 px wide bottom-right tile: gray
    assert kept_total > 100 and dropped_total > 10  # both outcomes were exercised
    for tile, original in zip(tiles, originals):  # the inputs (maybe a shared cache's) are untouched
        assert all(torch.equal(tile[k], v) for k, v in original.items())


def test_mixup_keeps_every_box_and_blends_the_pixels():
    gen = torch.Generator().manual_seed(0)
    a = {"pixel_values": torch.randint(0, 256, (3, 32, 48), dtype=torch.uint8, generator=gen),
         "boxes": torch.tensor([[1.0, 2.0, 10.0, 12.0]]), "class_labels": torch.tensor([0]), "image_id": 1,
         "orig_size": (32, 48), "failed": 0, "boxes_dropped": 2}
    b = {**a, "pixel_values": torch.randint(0, 256, (3, 32, 48), dtype=torch.uint8, generator=gen),
         "boxes": torch.tensor([[5.0, 5.0, 4.0, 4.0], [20.0, 10.0, 8.0, 6.0]]), "class_labels": torch.tensor([2, 1]),
         "image_id": 2, "failed": 1, "boxes_dropped": 1}
    before = (a["pixel_values"].clone(), b["pixel_values"].clone())
    for ratio in (0.25, 0.37, 0.5, 0.81):
        out = mixup(a, b, ratio)
        expected = ratio * a["pixel_values"].double() + (1 - ratio) * b["pixel_values"].double()
        assert out["pixel_values"].dtype == torch.uint8
        assert (out["pixel_values"].double() - expected).abs().max() <= 1.5  # the ratio is rounded to w / 128
        w = round(ratio * 128)
        exact = (a["pixel_values"].int() * w + b["pixel_values"].int() * (128 - w) + 64) >> 7
        assert torch.equal(out["pixel_values"], exact.to(torch.uint8))
        assert out["boxes"].tolist() == a["boxes"].tolist() + b["boxes"].tolist()
        assert out["class_labels"].tolist() == [0, 2, 1]
        assert (out["image_id"], out["failed"], out["boxes_dropped"]) == (1, 1, 3)
    assert torch.equal(a["pixel_values"], before[0]) and torch.equal(b["pixel_values"], before[1])
    # another size: the other sample is resized to this one's, its boxes with it
    small = {**b, "pixel_values": torch.full((3, 16, 24), 200, dtype=torch.uint8)}
    out = mixup(a, small, 0.5)
    assert out["pixel_values"].shape == (3, 32, 48)
    assert out["boxes"][1:].tolist() == [[10.0, 10.0, 8.0, 8.0], [40.0, 20.0, 16.0, 12.0]]


def test_scale_jitter_scales_the_boxes_with_the_image():
    pixels = torch.zeros((3, 40, 60), dtype=torch.uint8)
    pixels[:, 8:24, 10:30] = 255
    sample = {"pixel_values": pixels, "boxes": torch.tensor([[10.0, 8.0, 20.0, 16.0]]), "class_labels": torch.tensor([0])}
    for factor, size in ((1.5, (60, 90)), (0.5, (20, 30)), (1.23, (49, 74))):
        out = scale(sample, factor)
        assert tuple(out["pixel_values"].shape[1:]) == size and out["pixel_values"].dtype == torch.uint8
        sy, sx = size[0] / 40, size[1] / 60
        assert out["boxes"][0].tolist() == pytest.approx([10 * sx, 8 * sy, 20 * sx, 16 * sy])
        x, y, w, h = out["boxes"][0].tolist()
        inner = out["pixel_values"][:, math.ceil(y) + 1:int(y + h) - 1, math.ceil(x) + 1:int(x + w) - 1]
        assert inner.float().mean() > 250  # the box still covers the bright rectangle...
        outside = out["pixel_values"].clone()
        outside[:, max(0, int(y) - 2):math.ceil(y + h) + 2, max(0, int(x) - 2):math.ceil(x + w) + 2] = 0
        assert outside.max() < 5  # ...and nothing bright lies outside it
    assert torch.equal(sample["pixel_values"], pixels) and sample["pixel_values"].max() == 255


# ---------------------------------------------------------------------------- through the dataset


@pytest.fixture(scope="module")
def coloured_split(tmp_path_factory):
    """Eight PNG images (landscape 64x48 and portrait 48x64), 2-3 uniquely coloured boxes each."""
    root = tmp_path_factory.mktemp("coloured")
    (root / "images").mkdir()
    rng = np.random.default_rng(1)
    images, annotations = [], []
    for image_id in range(1, 9):
        width, height = (64, 48) if image_id % 2 else (48, 64)
        array = np.zeros((height, width, 3), dtype=np.uint8)
        array[..., 0] = image_id
        for k in range(int(rng.integers(2, 4))):
            w, h = (int(v) for v in rng.integers(6, 15, size=2))
            x, y = 16 * k + int(rng.integers(0, 2)), int(rng.integers(0, height - h))
            box_id = len(annotations)
            array[y:y + h, x:x + w] = box_colour(box_id)
            annotations.append({"id": box_id + 1, "image_id": image_id, "category_id": 1 + box_id % 3,
                                "bbox": [x, y, w, h], "area": w * h, "iscrowd": 0})
        Image.fromarray(array).save(root / "images" / f"{image_id}.png")
        images.append({"id": image_id, "file_name": f"{image_id}.png", "width": width, "height": height})
    categories = [{"id": c, "name": f"class{c}"} for c in (1, 2, 3)]
    (root / "labels.json").write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return load_split("coco", str(root / "images"), str(root / "labels.json"))


def dataset(split, hflip: float = 0.0, seed: int = 0, **augment) -> DetectionDataset:
    # shortest edge 48, longest 64: every image keeps its size (exact pixels, no resampling)
    return DetectionDataset(split, Resize(48, 64), hflip=hflip, seed=seed, augment=AugmentConfig(**augment))


def object_colours(ds: DetectionDataset) -> dict[tuple, int]:
    """Each box's colour (read from the loaded image) -> its label."""
    colours = {}
    for i in range(len(ds)):
        loaded = ds.load(i)
        assert loaded["pixel_values"].shape[1:] in ((48, 64), (64, 48))
        for (x, y, w, h), label in zip(loaded["boxes"].int().tolist(), loaded["class_labels"].tolist()):
            colours[tuple(loaded["pixel_values"][:, y + h // 2, x + w // 2].tolist())] = label
    return colours


def test_dataset_mosaic_has_the_images_size_and_boxes_on_their_objects(coloured_split):
    ds = dataset(coloured_split, mosaic=1.0)
    colours = object_colours(ds)
    mosaics = 0
    for epoch in (1, 2):
        for index in range(len(ds)):
            sample, loaded = ds[(epoch, index)], ds.load(index)
            canvas = sample["pixel_values"]
            assert canvas.shape == loaded["pixel_values"].shape  # shortest_edge: the canvas is this image's size
            mosaics += not torch.equal(canvas, loaded["pixel_values"])
            _, height, width = canvas.shape
            for (x, y, w, h), label in zip(sample["boxes"].int().tolist(), sample["class_labels"].tolist()):
                assert 0 <= x and x + w <= width and 0 <= y and y + h <= height
                region = canvas[:, y:y + h, x:x + w].reshape(3, -1)
                colour = tuple(region[:, 0].tolist())
                assert (region == region[:, :1]).all() and colours.get(colour) == label  # one object's colour
    assert mosaics == 2 * len(ds)


def test_dataset_mixup_keeps_this_images_boxes_and_adds_the_others(coloured_split):
    ds = dataset(coloured_split, mixup=1.0)
    counts = {len(ds.load(i)["boxes"]) for i in range(len(ds))}
    for index in range(len(ds)):
        sample, loaded = ds[(1, index)], ds.load(index)
        n = len(loaded["boxes"])
        assert sample["boxes"][:n].tolist() == loaded["boxes"].tolist()  # the first image's boxes, unchanged
        assert len(sample["boxes"]) - n in counts  # plus all of the other image's (resized to this size)
        assert sample["pixel_values"].shape == loaded["pixel_values"].shape
        assert not torch.equal(sample["pixel_values"], loaded["pixel_values"])


def test_dataset_scale_jitter_varies_the_size_and_the_collate_pads(coloured_split):
    ds = dataset(coloured_split, scale_jitter=1.0, scale_range=[0.5, 1.5])
    samples = [ds[(epoch, 0)] for epoch in range(1, 7)]
    loaded = ds.load(0)
    _, h0, w0 = loaded["pixel_values"].shape
    sizes = [tuple(s["pixel_values"].shape[1:]) for s in samples]
    assert len(set(sizes)) > 3 and all(24 <= h <= 72 for h, _ in sizes)
    for sample, (h, w) in zip(samples, sizes):
        assert torch.allclose(sample["boxes"], loaded["boxes"] * torch.tensor([w / w0, h / h0] * 2))
    batch = Collate(normalize_by_canvas=False, pad_to_multiple=32)(samples)
    assert batch["pixel_values"].shape[2] % 32 == 0 and batch["pixel_values"].shape[2] >= max(h for h, _ in sizes)
    assert [int(m.sum()) for m in batch["pixel_mask"]] == [h * w for h, w in sizes]


def test_same_seed_epoch_and_index_give_the_same_sample(coloured_split):
    everything = {"mosaic": 0.5, "mixup": 0.5, "scale_jitter": 0.5}
    first, second = dataset(coloured_split, hflip=0.5, seed=3, **everything), dataset(coloured_split, hflip=0.5, seed=3, **everything)
    keys = [(e, i) for e in (1, 2) for i in range(len(first))] + [(Draw(2, 1), 3), (Draw(2, 2), 3)]
    for key in keys:
        a, b = first[key], second[key]
        assert torch.equal(a["pixel_values"], b["pixel_values"]) and torch.equal(a["boxes"], b["boxes"])
        assert torch.equal(a["class_labels"], b["class_labels"]) and a.get("boxes_dropped") == b.get("boxes_dropped")
    # another epoch, or another copy within an epoch, is another draw
    differ = sum(not torch.equal(first[(1, i)]["pixel_values"], first[(2, i)]["pixel_values"]) for i in range(len(first)))
    assert differ >= len(first) // 2
    assert not torch.equal(first[(Draw(2, 1), 3)]["boxes"], first[(Draw(2, 2), 3)]["boxes"])
    # with data.augment all off the flip draws are those of before: the first number of the sample's generator
    plain = dataset(coloured_split, hflip=0.5, seed=3)
    for index in range(len(plain)):
        loaded = plain.load(index)
        flipped = random.Random(f"3:5:{index}").random() < 0.5
        expected = flip_horizontal(loaded["pixel_values"], loaded["boxes"]) if flipped else (loaded["pixel_values"], loaded["boxes"])
        sample = plain[(5, index)]
        assert torch.equal(sample["pixel_values"], expected[0]) and torch.equal(sample["boxes"], expected[1])


@pytest.mark.parametrize("sampler", ["shuffle", "repeat_factor"])
def test_close_mosaic_epoch_stops_mosaic_and_mixup_through_a_dataloader(coloured_split, sampler):
    """A real DataLoader (one persistent worker) over EpochShuffle or the repeat-factor sampler (whose
    keys carry Draw(epoch, copy)): in epochs 1-2 every sample is mixed; from close_mosaic_epoch 3 every
    sample is exactly its loaded image."""
    ds = dataset(coloured_split, mosaic=1.0, mixup=0.5, close_mosaic_epoch=3)
    index_of = {ds.load(i)["image_id"]: i for i in range(len(ds))}
    batch_sampler = None
    if sampler == "repeat_factor":  # images 0 and 1 twice an epoch: copies 0 and 1
        batch_sampler = BatchSampler(RepeatFactorSampler([2.0, 2.0] + [1.0] * 6, seed=0), 4, drop_last=False)
    loader = make_loader(ds, 4, DataConfig(num_workers=1, pin_memory=False), shuffle=True, normalize_by_canvas=False,
                         seed=0, batch_sampler=batch_sampler)
    epoch_sampler = loader.batch_sampler.sampler if batch_sampler is not None else loader.sampler
    for epoch in (1, 2, 3, 4):
        epoch_sampler.set_epoch(epoch)
        plain = mixed = 0
        for batch in loader:
            labels = unpack_labels(batch)
            for i, image_id in enumerate(batch["image_ids"].tolist()):
                loaded = ds.load(index_of[image_id])
                _, h, w = loaded["pixel_values"].shape
                same = (torch.equal(batch["pixel_values"][i, :, :h, :w], loaded["pixel_values"])
                        and int(batch["pixel_mask"][i].sum()) == h * w
                        and len(labels[i]["class_labels"]) == len(loaded["class_labels"]))
                plain, mixed = plain + same, mixed + (not same)
        assert plain + mixed == (10 if sampler == "repeat_factor" else 8)
        assert (plain, mixed) == ((0, plain + mixed) if epoch < 3 else (plain + mixed, 0)), epoch


def test_recipe_range_checks_name_the_augment_key(tmp_path):
    recipe = tiny_recipe(tmp_path, tmp_path / "run")
    path = write_recipe(tmp_path / "r.yaml", recipe)
    bad = ["data.augment.mosaic=1.5", "data.augment.mixup=-0.1", "data.augment.scale_range=[1.2, 0.8]",
           "data.augment.close_mosaic_epoch=0", "data.augment.min_visible=2"]
    with pytest.raises(RecipeError) as err:
        load_recipe(path, bad, check_paths=False)
    for key in ("data.augment.mosaic", "data.augment.mixup", "data.augment.scale_range",
                "data.augment.close_mosaic_epoch", "data.augment.min_visible"):
        assert key in str(err.value)
    good = load_recipe(path, ["data.augment.mosaic=0.5", "data.augment.close_mosaic_epoch=141"], check_paths=False)
    assert good.data.augment.mosaic == 0.5 and good.data.augment.close_mosaic_epoch == 141
    assert good.data.augment.mixup is None and good.data.augment.preset == "none"  # null: from the preset...
    assert resolve_augment(good.data.augment, good.data.min_size).mixup == 0.0 and good.data.hflip == 0.5  # ...only the flip


def test_tiny_training_with_mosaic_mixup_and_jitter(tmp_path, shapes_dir):
    """RT-DETR trains with every augmentation on in epoch 1 and mosaic/mixup closed in epoch 2; the
    dropped boxes are reported per window, and none once mosaic is closed."""
    path = write_recipe(tmp_path / "aug.yaml", tiny_recipe(shapes_dir, tmp_path / "run", train={"epochs": 2}))
    metrics = train(load_recipe(path, [
        "data.train.subset=8", "data.augment.mosaic=1.0", "data.augment.mixup=0.5", "data.augment.scale_jitter=0.5",
        "data.augment.close_mosaic_epoch=2"]))
    for key in ("map", "map_50", "mar_100"):
        assert math.isfinite(metrics[key]) and (0.0 <= metrics[key] <= 1.0 or metrics[key] == -1.0)
    windows = records(tmp_path / "run", "train")
    assert all(math.isfinite(r["loss"]) for r in windows)
    dropped = {epoch: sum(r["boxes_dropped"] for r in windows if r["epoch"] == epoch) for epoch in (1, 2)}
    assert dropped[1] > 0 and dropped[2] == 0
