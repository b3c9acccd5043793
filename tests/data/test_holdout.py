"""``data.val.from_train``: a validation split held out of train, seeded, stable, never trained on."""

from __future__ import annotations

import json
import random
import shutil

import pytest
import yaml

from conftest import records, tiny_recipe, write_recipe
from helpers.fixtures_path import shared_dataset
from hftrain.data.formats.voc import read_voc_folder
from hftrain.data.holdout import held_out_keys, image_keys, split_by_keys
from hftrain.data.loader import load_data
from hftrain.data.schema import objects_of
from hftrain.data.sources import load_split
from hftrain.recipe import RecipeError, load_recipe

KANGAROO = shared_dataset("kangaroo")


@pytest.fixture(scope="module")
def kangaroo_rows():
    return read_voc_folder(KANGAROO / "images", KANGAROO / "annots")[0]


def test_held_out_images_are_a_seeded_stable_share(kangaroo_rows):
    keys = held_out_keys(kangaroo_rows, 0.2, seed=0)
    assert len(keys) == 33  # round(164 * 0.2)
    # pinned: the split must not change between runs, processes or versions (a Python hash() or an
    # unseeded generator would change it on every run)
    assert sorted(keys)[:6] == ["00012.jpg", "00016.jpg", "00019.jpg", "00021.jpg", "00024.jpg", "00032.jpg"]
    # independent of the rows' order
    order = list(range(len(kangaroo_rows)))
    random.Random(1).shuffle(order)
    assert held_out_keys(kangaroo_rows.select(order), 0.2, seed=0) == keys
    # another seed, another split of the same size
    other = held_out_keys(kangaroo_rows, 0.2, seed=1)
    assert len(other) == 33 and other != keys
    # removing an image moves no other image across the boundary beyond the one place the count changes
    smaller = held_out_keys(kangaroo_rows.select(range(1, len(kangaroo_rows))), 0.2, seed=0)
    assert len(smaller ^ (keys - {"00001.jpg"})) <= 1
    train, val = split_by_keys(kangaroo_rows, keys)
    assert set(image_keys(val)) == keys and not set(image_keys(train)) & keys and len(train) + len(val) == 164


def test_bad_fractions_and_tiny_splits(kangaroo_rows):
    for fraction in (0.0, 1.0, 1.5):
        with pytest.raises(ValueError, match="must be a fraction in"):
            held_out_keys(kangaroo_rows, fraction, 0)
    with pytest.raises(ValueError, match="has 1 image"):
        held_out_keys(kangaroo_rows.select([0]), 0.5, 0)
    assert len(held_out_keys(kangaroo_rows.select([0, 1]), 0.01, 0)) == 1  # at least one each side
    assert len(held_out_keys(kangaroo_rows.select([0, 1]), 0.99, 0)) == 1


@pytest.fixture
def kangaroo_slice(tmp_path):
    """Ten kangaroo images and XMLs (00090.jpg among them: truncated by 20 bytes)."""
    stems = ["00001", "00002", "00003", "00004", "00005", "00006", "00007", "00009", "00010", "00090"]
    for sub, ext in (("images", "jpg"), ("annots", "xml")):
        (tmp_path / sub).mkdir()
        for stem in stems:
            shutil.copy(KANGAROO / sub / f"{stem}.{ext}", tmp_path / sub)
    return tmp_path


def test_blacklist_removes_without_moving_images_across(kangaroo_slice, tmp_path):
    images, annots = str(kangaroo_slice / "images"), str(kangaroo_slice / "annots")
    plain = load_split("voc", images, annots, hold_out=0.3, seed=0)
    held = set(image_keys(plain.held_out.dataset))
    assert len(held) == 3 and len(plain.dataset) == 7
    assert plain.report.dropped_images == {"held out for validation (data.val.from_train 0.3, data.seed 0)": 3}
    assert plain.report.images == 7 and plain.held_out.report.images == 3
    assert plain.report.boxes + plain.held_out.report.boxes == sum(
        len(objects_of(r)) for r in read_voc_folder(images, annots)[0])
    # blacklist one image of each side: each side only shrinks
    one_each = {sorted(held)[0]: "broken", sorted(set(image_keys(plain.dataset)))[0]: "broken"}
    (tmp_path / "bl.json").write_text(json.dumps(one_each))
    filtered = load_split("voc", images, annots, hold_out=0.3, seed=0, blacklist=str(tmp_path / "bl.json"))
    assert set(image_keys(filtered.held_out.dataset)) == held - set(one_each)
    assert set(image_keys(filtered.dataset)) == set(image_keys(plain.dataset)) - set(one_each)


def _voc_recipe(root, run_dir, **data):
    recipe = tiny_recipe(root, run_dir)
    recipe["data"].update({"format": "voc", "train": {"images": str(root / "images"), "labels": str(root / "annots")},
                           "val": {"from_train": 0.3}, "hflip": 0.0, **data})
    return recipe


def test_recipe_checks(kangaroo_slice, tmp_path):
    base = _voc_recipe(kangaroo_slice, tmp_path / "run")
    bad = {**base, "data": {**base["data"], "val": {"from_train": 1.0, "images": "x", "sets": ["y"]},
                            "class_names": ["a", "a"]}}
    with pytest.raises(RecipeError) as err:
        load_recipe(write_recipe(tmp_path / "bad.yaml", bad))
    text = str(err.value)
    assert "data.val.from_train: must be a fraction in (0, 1), got 1.0" in text
    assert "data.val.images/sets must not be set" in text and "data.val.images: path x does not exist" not in text
    assert "data.class_names: names must be non-empty and distinct" in text
    coco = {**base, "data": {**base["data"], "format": "coco", "class_names": ["a"]}}
    with pytest.raises(RecipeError, match="data.class_names: applies to format voc only"):
        load_recipe(write_recipe(tmp_path / "coco.yaml", coco), check_paths=False)
    assert load_recipe(write_recipe(tmp_path / "good.yaml", base)).data.val.from_train == 0.3


def test_voc_folder_with_held_out_val_trains_and_evaluates(kangaroo_slice, tmp_path):
    from hftrain.train import train

    # with the auto blacklist and the RAM cache of both splits, which must keep working on the held-out split
    recipe = _voc_recipe(kangaroo_slice, tmp_path / "run", blacklist="auto", cache_dir=str(tmp_path / "cache"),
                         cache="ram", cache_val=True, cache_margin_gb=0.0)
    path = write_recipe(tmp_path / "kangaroo.yaml", recipe)
    data = load_data(load_recipe(path).data)
    train_keys, val_keys = set(image_keys(data.train.rows)), set(image_keys(data.val.rows))
    assert not train_keys & val_keys and len(train_keys | val_keys) == 9  # 00090.jpg blacklisted (truncated)
    assert "00090.jpg" not in train_keys | val_keys and data.class_names == ["kangaroo"]
    assert any("removed 1 of 10 images (e.g. 00090.jpg: truncated" in note for note in data.notes)
    assert len(data.train.cache.states()) == len(train_keys) and len(data.val.cache.states()) == len(val_keys)
    metrics = train(load_recipe(path))
    assert 0.0 <= metrics["map"] <= 1.0 and records(tmp_path / "run", "eval")
    log = (tmp_path / "run" / "train.log").read_text()
    assert f"{len(train_keys)} train / {len(val_keys)} val images" in log and "data.val.from_train 0.3" in log
    saved = yaml.safe_load((tmp_path / "run" / "recipe.yaml").read_text())
    assert saved["data"]["val"]["from_train"] == 0.3
