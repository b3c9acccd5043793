"""Every recipe in recipes/ validates and dry-runs (tiny random model of its family, a few images written
in its data format, two or more optimizer steps, evaluation, checkpoints); the seed recipes carry the
seeds' values; profiles are override files; --print shows the resolved recipe."""

from __future__ import annotations

import dataclasses

import pytest
import yaml

from conftest import REPO, records
from hftrain.train import dry_run
from hftrain.recipe import Recipe, _build, load_recipe
from hftrain.train import main

RECIPES = sorted(p for p in (REPO / "recipes").glob("*.yaml") if "grid" not in yaml.safe_load(p.read_text()))
SWEEPS = sorted(p for p in (REPO / "recipes").glob("*.yaml") if p not in RECIPES)
KEEP_WORKERS = {"rtdetr_fast.yaml", "fred_rgb.yaml"}  # these dry-run with a worker process (RAM cache, mosaic)


def test_the_seed_recipes_exist():
    names = {p.name for p in RECIPES}
    assert {"detr_short.yaml", "detr_full.yaml", "rtdetr_safe.yaml", "rtdetr_fast.yaml", "fred_rgb.yaml",
            "fred_event.yaml", "shapes_demo.yaml"} <= names
    for sweep in SWEEPS:  # a sweep file names a recipe that is itself dry-run here
        assert (sweep.parent / yaml.safe_load(sweep.read_text())["recipe"]) in RECIPES


CLI_RECIPE = "fred_event.yaml"  # dry-run through the command line below instead


@pytest.mark.parametrize("path", [p for p in RECIPES if p.name != CLI_RECIPE], ids=lambda p: p.stem)
def test_recipe_dry_runs(path, tmp_path):
    overrides = [] if path.name in KEEP_WORKERS else ["data.num_workers=0"]
    recipe = load_recipe(path, overrides, check_paths=False)
    metrics = dry_run(str(path), overrides, work_dir=tmp_path)
    assert metrics and "map" in metrics
    run = tmp_path / "run"
    steps = records(run, "step")
    assert len(steps) >= 2
    assert len(records(run, "phase")) == len(recipe.phases)
    assert (run / "model" / "config.json").is_file()
    saved = yaml.safe_load((run / "recipe.yaml").read_text())
    assert saved["model"]["name"] == recipe.model.name and saved["data"]["format"] == recipe.data.format


def test_detr_recipes_carry_seed_000(tmp_path):
    full = load_recipe(REPO / "recipes" / "detr_full.yaml", check_paths=False)
    short = load_recipe(REPO / "recipes" / "detr_short.yaml", check_paths=False)
    for recipe in (full, short):
        assert recipe.model.name == "deformable_detr" and recipe.model.pretrained
        assert (recipe.train.batch_size, recipe.train.gradient_accumulation_steps, recipe.train.clip_max_norm) == (20, 2, 0.1)
        assert (recipe.data.num_workers, recipe.data.prefetch_factor, recipe.precision.mode) == (16, 2, "auto")
        assert (recipe.data.min_size, recipe.data.max_size, recipe.data.format) == (800, 1333, "bdd100k")
        assert recipe.data.blacklist
    assert (full.optim.lr, full.train.epochs, full.eval.interval, full.data.train.subset) == (4e-5, 50, 5, None)
    assert (short.optim.lr, short.train.epochs, short.eval.interval, short.data.train.subset) == (5e-5, 10, 2, 2000)


@pytest.mark.parametrize("profile, values", [
    ("detr_most_stable", (10, 4, 0.1, 3e-5)),
    ("detr_balanced", (20, 2, 0.1, 4e-5)),
    ("detr_fastest", (32, 1, 0.5, 1e-4)),
])
def test_stability_profiles_are_override_files(profile, values):
    path = REPO / "recipes" / "profiles" / f"{profile}.yaml"
    recipe = load_recipe(REPO / "recipes" / "detr_full.yaml", [f"@{path}"], check_paths=False)
    train = recipe.train
    assert (train.batch_size, train.gradient_accumulation_steps, train.clip_max_norm, recipe.optim.lr) == values
    # overrides after the file win over it
    later = load_recipe(REPO / "recipes" / "detr_full.yaml", [f"@{path}", "optim.lr=1e-6"], check_paths=False)
    assert later.optim.lr == 1e-6


def test_rtdetr_and_fred_recipes_carry_seeds_001_and_002():
    safe = load_recipe(REPO / "recipes" / "rtdetr_safe.yaml", check_paths=False)
    fast = load_recipe(REPO / "recipes" / "rtdetr_fast.yaml", check_paths=False)
    assert (safe.train.batch_size, safe.data.num_workers, safe.data.cache, safe.train.cpu_threads) == (2, 2, "none", 2)
    assert (safe.cuda.memory_fraction, safe.cuda.alloc_conf, safe.cuda.empty_cache_every) == (0.85, "max_split_size_mb:64", 50)
    assert (fast.train.batch_size, fast.data.num_workers, fast.data.cache, fast.train.cpu_threads) == (6, 8, "ram", 8)
    assert fast.cuda.memory_fraction is None and fast.cuda.empty_cache_every == 100
    assert fast.cuda.alloc_conf == "max_split_size_mb:512,garbage_collection_threshold:0.7,expandable_segments:True"
    small = load_recipe(REPO / "recipes" / "rtdetr_fast.yaml", [f"@{REPO / 'recipes' / 'profiles' / 'rtdetr_small.yaml'}"],
                        check_paths=False)
    assert small.model.pretrained != fast.model.pretrained
    for name, modality in (("fred_rgb", "rgb"), ("fred_event", "event")):
        fred = load_recipe(REPO / "recipes" / f"{name}.yaml", check_paths=False)
        assert fred.data.modality == modality and fred.precision.mode == "fp16"
        assert [(p.epochs, p.batch_size, bool(p.freeze)) for p in fred.phases] == [(30, 32, True), (120, 16, False)]
        assert fred.train.epochs == 150
        assert (fred.data.augment.mosaic > 0, fred.data.augment.mixup, fred.data.num_workers) == (True, 0.0, 8)
        assert (fred.eval.interval, fred.checkpoint.interval, fred.checkpoint.best_metric) == (15, 15, "map_50")
        assert fred.log.tensorboard
        no_map = load_recipe(REPO / "recipes" / f"{name}.yaml", ["eval.during_training=false"], check_paths=False)
        assert not no_map.eval.during_training


def test_print_shows_the_resolved_recipe(capsys):
    assert main([str(REPO / "recipes" / "detr_short.yaml"), "--print", "train.batch_size=10"]) == 0
    out = capsys.readouterr().out
    printed = yaml.safe_load(out)
    problems: list[str] = []
    rebuilt = _build(Recipe, printed, "", problems)
    assert not problems
    expected = load_recipe(REPO / "recipes" / "detr_short.yaml", ["train.batch_size=10"], check_paths=False)
    assert dataclasses.asdict(rebuilt) == dataclasses.asdict(expected)
    assert printed["data"]["train"]["subset"] == 2000 and printed["train"]["batch_size"] == 10


def test_dry_run_from_the_command_line(capsys):
    assert main([str(REPO / "recipes" / CLI_RECIPE), "--dry-run", "data.num_workers=0"]) == 0
    out = capsys.readouterr().out
    assert "a tiny random rt_detr" in out and "fred layout" in out and ": OK" in out
    assert "entering phase 2 'unfrozen'" in out  # both phases ran
    assert "(event, train)" in out  # the event stream, through the recipe's split folder (train/)
