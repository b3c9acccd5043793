"""data.augment presets through the dataset: resolution and overrides, boxes on their objects, colour
operations leave boxes alone, determinism, stop_epoch, the multi-scale side per step across processes
and after a resume (hftrain.data.multiscale)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from accelerate.data_loader import BatchSamplerShard, SkipBatchSampler
from PIL import Image
from torch.utils.data import BatchSampler

from conftest import tiny_recipe, write_recipe
from hftrain.data.epoch_sampler import EpochShuffle, Sized
from hftrain.data.loader import DetectionDataset
from hftrain.data.multiscale import MultiScaleBatches, side_for
from hftrain.data.sources import load_split
from hftrain.data.transforms import Resize
from hftrain.recipe import AugmentConfig, RecipeError, load_recipe
from hftrain.recipe.presets import RTDETR_SCALES, resolve_augment

SIDE = 64


@pytest.fixture(scope="module")
def split(tmp_path_factory):
    """Six 64x64 PNGs: a dark textured background, 2 boxes each filled with a flat colour of their own."""
    root = tmp_path_factory.mktemp("presets")
    (root / "images").mkdir()
    rng = np.random.default_rng(0)
    images, annotations = [], []
    for image_id in range(1, 7):
        array = (rng.random((SIDE, SIDE, 3)) * 40).astype(np.uint8)
        for k in range(2):
            w, h = (int(v) for v in rng.integers(12, 24, size=2))
            x, y = 30 * k + int(rng.integers(0, 6)), int(rng.integers(0, SIDE - h))
            array[y:y + h, x:x + w] = (120 + 60 * k, 200, 60 + 40 * (image_id % 3))
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": 1 + k,
                                "bbox": [x, y, w, h], "area": w * h, "iscrowd": 0})
        Image.fromarray(array).save(root / "images" / f"{image_id}.png")
        images.append({"id": image_id, "file_name": f"{image_id}.png", "width": SIDE, "height": SIDE})
    categories = [{"id": c, "name": f"class{c}"} for c in (1, 2)]
    (root / "labels.json").write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return load_split("coco", str(root / "images"), str(root / "labels.json"))


def dataset(split, hflip=0.0, seed=0, **augment) -> DetectionDataset:
    # resized to 40 x 40: a sample that goes through the geometric operations is loaded as decoded (64 x 64)
    # and resampled once, its boxes mapped from the decoded frame
    return DetectionDataset(split, Resize(40, 40, square=True), hflip=hflip, seed=seed, augment=AugmentConfig(**augment))


def test_presets_resolve_and_explicit_values_win():
    rtdetr = resolve_augment(AugmentConfig(preset="rtdetr"), 640)
    assert (rtdetr.photometric, rtdetr.zoom_out, rtdetr.iou_crop, rtdetr.multiscale) == (0.5, 0.5, 0.8, RTDETR_SCALES)
    assert (rtdetr.mosaic, rtdetr.hsv, rtdetr.affine, rtdetr.random_resize) == (0.0, 0.0, 0.0, [])
    small = resolve_augment(AugmentConfig(preset="rtdetr"), 256)  # RT-DETR's list at 640, scaled to 256
    assert min(small.multiscale) == 192 and max(small.multiscale) == 320 and all(s % 32 == 0 for s in small.multiscale)
    detr = resolve_augment(AugmentConfig(preset="detr"), 800)
    assert detr.random_resize == list(range(480, 801, 32)) and detr.size_crop == 0.5
    assert (detr.size_crop_resize, detr.size_crop_range) == ([400, 500, 600], [384, 600])
    yolo = resolve_augment(AugmentConfig(preset="yolo"), 640)
    assert (yolo.mosaic, yolo.mixup, yolo.hsv, yolo.affine, yolo.multiscale) == (1.0, 0.0, 1.0, 1.0, [])
    none = resolve_augment(AugmentConfig(), 800)  # the default: today's behaviour, only data.hflip
    assert not any((none.mosaic, none.mixup, none.photometric, none.zoom_out, none.iou_crop, none.hsv, none.affine,
                    none.multiscale, none.random_resize))
    mine = resolve_augment(AugmentConfig(preset="rtdetr", photometric=0.2, multiscale=[]), 640)
    assert (mine.photometric, mine.multiscale, mine.zoom_out) == (0.2, [], 0.5)
    assert resolve_augment(mine, 640) == mine  # idempotent


def test_recipe_presets_overrides_and_all_problems_at_once(tmp_path):
    path = write_recipe(tmp_path / "r.yaml", tiny_recipe(tmp_path, tmp_path / "run"))
    recipe = load_recipe(path, ["data.augment.preset=yolo", "data.augment.mosaic=0.5"], check_paths=False)
    resolved = resolve_augment(recipe.data.augment, recipe.data.min_size)
    assert (resolved.mosaic, resolved.hsv, resolved.affine) == (0.5, 1.0, 1.0)
    with pytest.raises(RecipeError) as err:
        load_recipe(path, ["data.augment.preset=ssd", "data.augment.photometric=1.5", "data.augment.stop_epoch=0",
                           "data.augment.zoom_out_range=[0.5, 2]", "data.augment.multiscale=[0, 640]"], check_paths=False)
    assert "data.augment.preset" in str(err.value)
    with pytest.raises(RecipeError) as err:
        load_recipe(path, ["data.augment.photometric=1.5", "data.augment.stop_epoch=0", "data.augment.size_crop=0.5",
                           "data.augment.zoom_out_range=[0.5, 2]", "data.augment.multiscale=[0, 640]",
                           "data.augment.hsv_gains=[0.1, 0.2]"], check_paths=False)
    for key in ("photometric", "stop_epoch", "size_crop", "zoom_out_range", "multiscale", "hsv_gains"):
        assert f"data.augment.{key}" in str(err.value)


@pytest.mark.parametrize("preset", ["rtdetr", "detr", "yolo"])
def test_preset_samples_are_deterministic_and_boxes_lie_on_their_objects(split, preset):
    """The same (seed, epoch, index) gives the same sample in two datasets; every kept box lies inside the
    image and (geometric operations only: colour off) its centre shows one of the boxes' flat colours."""
    colours_off = {"photometric": 0.0, "hsv": 0.0}
    first, second = dataset(split, 0.5, 3, preset=preset, **colours_off), dataset(split, 0.5, 3, preset=preset, **colours_off)
    objects = 0
    for epoch in (1, 2):
        for index in range(len(first)):
            key = Sized((epoch, index), 48) if preset == "rtdetr" else (epoch, index)
            a, b = first[key], second[key]
            assert torch.equal(a["pixel_values"], b["pixel_values"]) and torch.equal(a["boxes"], b["boxes"])
            assert a.get("boxes_dropped", 0) == b.get("boxes_dropped", 0)
            _, h, w = a["pixel_values"].shape
            if preset == "rtdetr":
                assert (h, w) == (48, 48)  # the batch's side
            elif preset == "yolo":
                assert (h, w) == (40, 40)  # the recipe's size (affine and mosaic keep it)
            for x, y, bw, bh in a["boxes"].tolist():
                assert x >= 0 and y >= 0 and x + bw <= w + 1e-4 and y + bh <= h + 1e-4 and bw >= 1 and bh >= 1
                if bw >= 6 and bh >= 6:
                    r, g, _ = a["pixel_values"][:, int(y + bh / 2), int(x + bw / 2)].tolist()
                    assert g >= 150 and r >= 90, (preset, r, g)  # an object's colour, not the dark background
                    objects += 1
    assert objects > 10
    other_seed = dataset(split, 0.5, 4, preset=preset, **colours_off)
    assert any(not torch.equal(first[(1, i)]["pixel_values"], other_seed[(1, i)]["pixel_values"]) for i in range(6))


def test_colour_operations_leave_boxes_untouched(split):
    for options in ({"photometric": 1.0}, {"hsv": 1.0}):
        ds = dataset(split, **options)
        changed = 0
        for index in range(len(ds)):
            sample, loaded = ds[(1, index)], ds.load(index)
            assert torch.equal(sample["boxes"], loaded["boxes"]) and torch.equal(sample["class_labels"], loaded["class_labels"])
            changed += not torch.equal(sample["pixel_values"], loaded["pixel_values"])
        assert changed >= 4


def test_stop_epoch_switches_everything_off(split):
    ds = dataset(split, preset="rtdetr", stop_epoch=3, mosaic=1.0)
    for index in range(len(ds)):
        assert torch.equal(ds[Sized((3, index), 48)]["pixel_values"], ds.load(index)["pixel_values"])
    batches = MultiScaleBatches(BatchSampler(EpochShuffle(6, 0), 2, drop_last=False), [32, 48, 64], 0, stop_epoch=3)
    batches.set_epoch(2)
    assert all(isinstance(key, Sized) for batch in batches for key in batch)
    batches.set_epoch(3)
    assert not any(isinstance(key, Sized) for batch in batches for key in batch)


def test_multiscale_side_is_the_same_on_every_process_at_a_step_and_after_a_resume(split):
    """Two simulated processes (Accelerate's own sharding of the batch sampler): at every step both get
    batches of one side; a resume that skips the first steps (Accelerate's SkipBatchSampler, what
    skip_first_batches uses) gets the same later batches, sides and samples."""
    sides = [32, 40, 48, 56, 64]

    def shard(rank):
        inner = BatchSampler(EpochShuffle(len(split.dataset) * 4, seed=7), 2, drop_last=False)
        batches = MultiScaleBatches(inner, sides, seed=7, num_processes=2)
        batches.set_epoch(5)
        return BatchSamplerShard(batches, num_processes=2, process_index=rank)

    ranks = [list(shard(0)), list(shard(1))]
    assert len(ranks[0]) == len(ranks[1]) == 6
    steps = [{key.side for key in a} | {key.side for key in b} for a, b in zip(*ranks)]
    assert all(len(s) == 1 for s in steps)  # one side per step, on both processes
    assert [s.pop() for s in steps] == [side_for(sides, 7, 5, step) for step in range(6)]
    assert len({side_for(sides, 7, 5, step) for step in range(6)}) > 1  # and it varies
    resumed = list(SkipBatchSampler(shard(1), skip_batches=2))
    assert resumed == ranks[1][2:]
    ds = DetectionDataset(split, Resize(SIDE, SIDE, square=True), hflip=0.5, seed=7,
                          augment=AugmentConfig(preset="rtdetr", multiscale=sides))
    for batch_a, batch_b in zip(resumed, ranks[1][2:]):
        for ka, kb in zip(batch_a, batch_b):
            ka, kb = Sized(((ka.key[0]), ka.key[1] % 6), ka.side), Sized((kb.key[0], kb.key[1] % 6), kb.side)
            a, b = ds[ka], ds[kb]
            assert a["pixel_values"].shape[1:] == (ka.side, ka.side)
            assert torch.equal(a["pixel_values"], b["pixel_values"]) and torch.equal(a["boxes"], b["boxes"])
