"""plots/train_batch.png and ``check-sampler --pictures``: the training batches drawn from a real loader,
the boxes where the objects are after augmentation, padding marked. (That the picture shows the very
batches a run trains on, and changes nothing in the run, is tested on a real run in test_pictures.py.)"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from conftest import write_recipe
from helpers.datasets import dataset_recipe, imbalanced, write_coco  # noqa: F401 (fixture)
from hftrain.data.loader import load_data
from hftrain.recipe import load_recipe
from hftrain.report import draw, train_batch
from hftrain.tools import doctor

NAMES = ["a", "b", "c"]
# (height, width) of each image and its one object, class 2 (written blue (40, 40, 220), drawn in yellow)
SIZES = [(48, 64), (64, 40)]
OBJECTS = [[4.0, 10.0, 16.0, 20.0], [2.0, 30.0, 12.0, 20.0]]  # x, y, w, h: both in the left half
BLUE_OBJECT = 2
CELL = draw.CELL


@pytest.fixture(scope="module")
def two_sizes(tmp_path_factory):
    """Two images of different sizes (one batch pads both to 64x64), one blue rectangle each."""
    root = tmp_path_factory.mktemp("two_sizes")
    images = [[(BLUE_OBJECT, box)] for box in OBJECTS]
    write_coco(root, "train", images, NAMES, size=SIZES)
    write_coco(root, "val", images, NAMES, size=SIZES)
    return root


def recipe_of(root, tmp_path, **data):
    recipe = dataset_recipe(root, tmp_path / "run", train={"batch_size": 2})
    recipe["data"].update(hflip=1.0, **data)  # every image flipped: the picture must show it
    return load_recipe(write_recipe(tmp_path / "r.yaml", recipe))


def blue(pixels):
    """The object's pixels (strict: JPEG bleeds a paler blue around it)."""
    return (pixels[..., 2] > 170) & (pixels[..., 0] < 80) & (pixels[..., 1] < 80)


def yellow(pixels):
    colour = np.array(draw.class_colour(BLUE_OBJECT))
    return (np.abs(pixels - colour).max(axis=-1) <= 30)


@pytest.mark.parametrize("uses_pixel_mask, pad", [(False, 32), (True, 1)], ids=["boxes-by-canvas", "boxes-by-image"])
def test_boxes_surround_their_flipped_objects_and_padding_is_hatched(two_sizes, tmp_path, uses_pixel_mask, pad):
    recipe = recipe_of(two_sizes, tmp_path)
    data = load_data(recipe.data, seed=recipe.train.seed)
    needs = SimpleNamespace(uses_pixel_mask=uses_pixel_mask, pad_to_multiple=pad)
    loader = train_batch.loader_like_training(data, 2, recipe.data, recipe.train.seed, needs)
    batches = train_batch.first_batches(loader, 1)
    assert len(batches) == 1 and batches[0]["pixel_values"].shape == (2, 3, 64, 64)
    path = tmp_path / "plots" / train_batch.FILE
    train_batch.save_png(train_batch.batch_grid(batches, NAMES, uses_pixel_mask, epoch=1), path)
    grid = np.asarray(Image.open(path).convert("RGB")).astype(int)
    scale = CELL / 64
    for index, image_id in enumerate(batches[0]["image_ids"].tolist()):
        (height, width), (x, y, w, h) = SIZES[image_id - 1], OBJECTS[image_id - 1]
        x0, y0 = train_batch.panel_origin(index)
        panel = grid[y0:y0 + CELL, x0:x0 + CELL]
        ys, xs = np.nonzero(blue(panel))
        left, top, right, bottom = xs.min(), ys.min(), xs.max(), ys.max()
        # the object is where the flip put it (mirrored in the image's own width), not where it was drawn
        assert abs(left - (width - x - w) * scale) <= 4, (image_id, left)
        assert abs(right - (width - x) * scale) <= 4, (image_id, right)
        assert abs(top - y * scale) <= 4 and abs(bottom - (y + h) * scale) <= 4, (image_id, top, bottom)
        # its box, drawn in its class's colour, runs right around it on all four sides
        ring = yellow(panel)
        margin = 2 * draw.line_width(CELL) + 2
        for row in range(top + margin, bottom - margin):
            assert ring[row, left - margin:left + 2].any(), (image_id, row)
            assert ring[row, right - 1:right + 1 + margin].any(), (image_id, row)
        for col in range(left + margin, right - margin):
            assert ring[top - margin:top + 2, col].any(), (image_id, col)
            assert ring[bottom - 1:bottom + 1 + margin, col].any(), (image_id, col)
        assert not ring[top + margin:bottom - margin, left + margin:right - margin].any()  # not through the object
        # the padding (below a 48-high image, right of a 40-wide one) is hatched, the image is not
        hatch = np.zeros(panel.shape[:2], dtype=bool)
        for colour in train_batch.HATCH:
            hatch |= (panel == colour).all(axis=-1)
        pad_rows, pad_cols = slice(round(height * scale) + 1, CELL - 1), slice(round(width * scale) + 1, CELL - 1)
        assert hatch[pad_rows, :].all() and hatch[:, pad_cols].all(), image_id
        assert not hatch[:round(height * scale) - 1, :round(width * scale) - 1].any(), image_id


def test_a_box_normalised_by_the_wrong_reference_lands_off_its_object(two_sizes, tmp_path):
    """What the picture is for: labels read against another reference than the collate's show off the
    object (here the 48-high image's box read against its 64x64 canvas: its bottom 10 rows lower)."""
    recipe = recipe_of(two_sizes, tmp_path)
    data = load_data(recipe.data, seed=recipe.train.seed)
    needs = SimpleNamespace(uses_pixel_mask=True, pad_to_multiple=1)  # labels normalised by each image's size
    (batch,) = train_batch.first_batches(train_batch.loader_like_training(data, 2, recipe.data, 0, needs), 1)
    index = batch["image_ids"].tolist().index(1)
    right = train_batch.loss_boxes(batch, uses_pixel_mask=True)[index][0][0]
    wrong = train_batch.loss_boxes(batch, uses_pixel_mask=False)[index][0][0]
    x, y, w, h = OBJECTS[0]
    np.testing.assert_allclose(right, [64 - x - w, y, 64 - x, y + h], atol=1e-4)
    assert wrong[3] - right[3] == pytest.approx((y + h) * (64 / 48 - 1), abs=1e-3)


def test_first_batches_follow_the_training_sampler_of_the_epoch(imbalanced, tmp_path):  # noqa: F811 (fixture)
    """A batch sampler (repeat factors in aspect-ratio groups) and an epoch other than 1: the picture's
    images are those of check-sampler's batches, which are the training sampler's."""
    recipe = dataset_recipe(imbalanced, tmp_path / "run", data={"sampler": "repeat_factor", "repeat_threshold": 0.5,
                                                                "group_by_aspect_ratio": True})
    recipe = load_recipe(write_recipe(tmp_path / "r.yaml", recipe))
    data = load_data(recipe.data, seed=recipe.train.seed)
    needs = SimpleNamespace(uses_pixel_mask=False, pad_to_multiple=32)
    for epoch in (1, 3):
        loader = train_batch.loader_like_training(data, 4, recipe.data, recipe.train.seed, needs)
        drawn = [b["image_ids"].tolist() for b in train_batch.first_batches(loader, epoch, images=12)]
        indices = doctor.sampler_batches(recipe, data, 3, epoch)
        assert drawn == [[data.train.rows[i]["image_id"] for i in batch] for batch in indices], epoch


def test_check_sampler_pictures_writes_the_grid_and_prints_where(two_sizes, tmp_path, capsys):
    recipe = dataset_recipe(two_sizes, tmp_path / "run", train={"batch_size": 1})
    recipe["data"]["hflip"] = 1.0
    path = write_recipe(tmp_path / "r.yaml", recipe)
    assert doctor.check_sampler_main([str(path), "--batches", "2", "--epoch", "2", "--pictures"]) == 0
    out = capsys.readouterr().out
    picture = tmp_path / "run" / "plots" / "train_batch_epoch2.png"
    assert "first 2 batches of epoch 2:" in out
    assert f"pictures: {picture} (2 images of the first 2 batch(es) of epoch 2, as the model receives them)" in out
    with Image.open(picture) as image:  # two panels side by side, each a batch of one
        grid = np.asarray(image.convert("RGB")).astype(int)
    assert grid.shape[1] >= draw.GAP + 2 * (CELL + draw.GAP)
    for index in range(2):
        x0, y0 = train_batch.panel_origin(index)
        assert blue(grid[y0:y0 + CELL, x0:x0 + CELL]).sum() > 500
    with pytest.raises(SystemExit) as exit_:  # refused before any data is read
        doctor.check_sampler_main([str(path), "--batches", "0", "--pictures"])
    assert exit_.value.code == 2 and "--batches: must be at least 1, got 0" in capsys.readouterr().err
