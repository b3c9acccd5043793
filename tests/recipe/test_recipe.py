"""Recipes: strict typed loading, base inclusion, overrides, and errors reported before any work."""

from __future__ import annotations


import pytest
import yaml

from conftest import write_recipe
from hftrain.recipe import Recipe, RecipeError, all_keys, load_recipe, save_recipe


def minimal(tmp_path, **extra) -> dict:
    images = tmp_path / "images"
    images.mkdir(exist_ok=True)
    labels = tmp_path / "labels.json"
    labels.write_text("{}")
    recipe = {"data": {"train": {"images": str(images), "labels": str(labels)},
                       "val": {"images": str(images), "labels": str(labels)}}}
    recipe.update(extra)
    return recipe


def test_values_are_typed_and_overrides_come_last(tmp_path):
    path = write_recipe(tmp_path / "r.yaml", minimal(tmp_path, optim={"lr": "5e-5"}, train={"batch_size": 4}))
    recipe = load_recipe(path, ["optim.lr=1e-3", "train.batch_size=8", "train.clip_max_norm=null"])
    assert recipe.optim.lr == pytest.approx(1e-3) and isinstance(recipe.optim.lr, float)
    assert recipe.train.batch_size == 8
    assert recipe.train.clip_max_norm is None
    assert recipe.optim.weight_decay == Recipe().optim.weight_decay  # defaults from the dataclass


def test_unknown_key_names_the_dotted_key_and_the_nearest_valid_one(tmp_path):
    path = write_recipe(tmp_path / "r.yaml", minimal(tmp_path, optim={"lrr": 1e-4}))
    with pytest.raises(RecipeError) as err:
        load_recipe(path)
    assert "unknown key 'optim.lrr'" in str(err.value)
    assert "did you mean 'optim.lr'" in str(err.value)


def test_all_problems_are_reported_at_once(tmp_path):
    path = write_recipe(tmp_path / "r.yaml", minimal(tmp_path, optim={"lrr": 1e-4}, train={"batch_size": "big"}))
    with pytest.raises(RecipeError) as err:
        load_recipe(path, ["schedule.warmup_step=10"])
    problems = err.value.problems
    assert len(problems) == 3, problems
    assert any("train.batch_size: expected int or 'auto', got 'big'" in p for p in problems)
    assert any("'schedule.warmup_step'" in p and "schedule.warmup_steps" in p for p in problems)


def test_wrong_type_names_key_expected_type_and_value(tmp_path):
    path = write_recipe(tmp_path / "r.yaml", minimal(tmp_path, train={"epochs": 2.5}))
    with pytest.raises(RecipeError, match=r"train\.epochs: expected int, got 2\.5"):
        load_recipe(path)
    path = write_recipe(tmp_path / "r.yaml", minimal(tmp_path, precision={"mode": "fp8"}))
    with pytest.raises(RecipeError, match=r"precision\.mode: expected one of \['auto', 'bf16', 'fp16', 'no'\], got 'fp8'"):
        load_recipe(path)


def test_missing_data_path_is_named(tmp_path):
    recipe = minimal(tmp_path)
    recipe["data"]["val"]["labels"] = str(tmp_path / "nope" / "val.json")
    with pytest.raises(RecipeError, match=r"data\.val\.labels: path .*nope/val\.json does not exist"):
        load_recipe(write_recipe(tmp_path / "r.yaml", recipe))


def test_unknown_model_name_suggests_a_registered_one(tmp_path):
    path = write_recipe(tmp_path / "r.yaml", minimal(tmp_path, model={"name": "rtdetr"}))
    with pytest.raises(RecipeError, match=r"did you mean 'rt_detr'"):
        load_recipe(path)


def test_base_is_included_once_and_overridden(tmp_path):
    write_recipe(tmp_path / "base.yaml", minimal(tmp_path, optim={"lr": 1e-4, "weight_decay": 0.05},
                                                  model={"config": {"d_model": 64, "num_queries": 10}}))
    write_recipe(tmp_path / "top.yaml", {"base": "base.yaml", "optim": {"lr": 2e-4},
                                         "model": {"config": {"d_model": 32}}})
    recipe = load_recipe(tmp_path / "top.yaml")
    assert recipe.optim.lr == pytest.approx(2e-4)
    assert recipe.optim.weight_decay == pytest.approx(0.05)
    # model.config is a free-form mapping: the top file's replaces the base's as a whole
    assert recipe.model.config == {"d_model": 32}
    write_recipe(tmp_path / "nested.yaml", {"base": "top.yaml"})
    with pytest.raises(RecipeError, match="one level of inclusion only"):
        load_recipe(tmp_path / "nested.yaml")


def test_resolved_recipe_round_trips(tmp_path):
    path = write_recipe(tmp_path / "r.yaml", minimal(tmp_path))
    recipe = load_recipe(path, ["optim.lr=3e-4", "schedule.name=step", "schedule.milestones=[3,5]"])
    save_recipe(recipe, tmp_path / "resolved.yaml")
    again = load_recipe(tmp_path / "resolved.yaml")
    assert again == recipe
    assert set(yaml.safe_load((tmp_path / "resolved.yaml").read_text())) == {
        k for k in all_keys() if "." not in k
    }


def test_cli_exits_2_before_building_anything(tmp_path, capsys):
    from hftrain.cli import main as cli_main  # in this process: the `hftrain` command's own process start is tested in tests/models/test_retinanet_loop.py

    path = write_recipe(tmp_path / "r.yaml", minimal(tmp_path, optim={"lrr": 1e-4}, output_dir=str(tmp_path / "run")))
    assert cli_main(["train", str(path)]) == 2
    assert "did you mean 'optim.lr'" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_best_metric_is_checked_before_training(tmp_path):
    path = write_recipe(tmp_path / "r.yaml", minimal(tmp_path, checkpoint={"best_metric": "voc_map"}))
    with pytest.raises(RecipeError, match=r"checkpoint\.best_metric: 'voc_map' is not an evaluation metric \(VOC metrics need eval\.voc: true\)"):
        load_recipe(path)
    path = write_recipe(tmp_path / "r.yaml", minimal(tmp_path, checkpoint={"best_metric": "voc_map"}, eval={"voc": True}))
    assert load_recipe(path).checkpoint.best_metric == "voc_map"


def test_overrides_may_come_before_or_after_the_options():
    from hftrain.train import parse_args

    assert parse_args(["r.yaml", "--overwrite", "a=1", "b=2"]).overrides == ["a=1", "b=2"]
    args = parse_args(["r.yaml", "--resume", "optim.lr=1e-4"])  # not a checkpoint path: an override
    assert args.resume is True and args.overrides == ["optim.lr=1e-4"]
    args = parse_args(["r.yaml", "train.epochs=3", "--resume"])
    assert args.resume is True and args.overrides == ["train.epochs=3"]
