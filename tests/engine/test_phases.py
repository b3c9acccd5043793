"""Training phases: frozen parameters stay unchanged, frozen BatchNorm keeps its statistics, the
dataloader follows each phase's batch size, the lr its peak; a resume inside a later phase and a
2-process run (DDP wrapped again when the trainable set changes) behave as one uninterrupted run."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from accelerate.utils import set_seed
from safetensors.torch import load_file

from conftest import REPO, TINY_RT_DETR, records, tiny_recipe, write_recipe
from hftrain.data.schema import class_names_of
from hftrain.data.sources import load_split
from hftrain.models.registry import build_model
from hftrain.recipe import RecipeError, load_recipe
from hftrain.train import main, train

PHASES = [
    {"name": "frozen", "epochs": 1, "batch_size": 2, "freeze": ["model.backbone"]},
    {"name": "all", "epochs": 1, "batch_size": 4, "lr": 5e-4},
]


def phase_recipe(shapes_dir, run_dir, **sections):
    recipe = tiny_recipe(shapes_dir, run_dir, data={"hflip": 0.0}, checkpoint={"interval": 1, "keep": 5}, **sections)
    recipe["model"]["config"] = {**TINY_RT_DETR, "freeze_backbone_batch_norms": False}  # real BatchNorm2d layers
    recipe["schedule"] = {"name": "cosine", "warmup_steps": 0}
    recipe["phases"] = PHASES
    return recipe


def initial_state(recipe) -> dict[str, torch.Tensor]:
    """The weights train() starts from (same seed, same builder)."""
    split = load_split("coco", recipe.data.train.images, recipe.data.train.labels)
    set_seed(recipe.train.seed)
    detector = build_model(recipe.model, class_names_of(split.dataset))
    return {k: v.detach().clone() for k, v in detector.model.state_dict().items()}


def saved(run_dir: Path, step: int) -> dict[str, torch.Tensor]:
    return load_file(run_dir / "checkpoints" / f"step_{step:08d}" / "model.safetensors")


def test_frozen_phase_then_unfrozen_phase(tmp_path, shapes_dir):
    run_dir = tmp_path / "run"
    recipe = load_recipe(write_recipe(tmp_path / "r.yaml", phase_recipe(shapes_dir, run_dir)))
    assert recipe.train.epochs == 2  # the phases' sum
    start = initial_state(recipe)
    train(recipe)

    # 24 images: 12 steps of 2 images in phase 1, then 6 steps of 4 in phase 2 (the rebuilt dataloader)
    steps = records(run_dir, "step")
    assert [r["epoch"] for r in steps] == [1] * 12 + [2] * 6
    phases = records(run_dir, "phase")
    assert [(p["name"], p["batch_size"], p["epoch"]) for p in phases] == [("frozen", 2, 1), ("all", 4, 2)]
    assert phases[0]["frozen_parameters"] > 0 and phases[1]["frozen_parameters"] == 0

    after_frozen, after_all = saved(run_dir, 12), saved(run_dir, 18)
    backbone = [k for k in start if k.startswith("model.backbone.")]
    running = [k for k in backbone if k.endswith("running_mean")]
    heads = [k for k in start if not k.startswith("model.backbone.") and start[k].is_floating_point()]
    assert running, "the tiny model should have BatchNorm2d layers in its backbone"
    for key in backbone:  # weights and BatchNorm statistics untouched while frozen
        assert torch.equal(after_frozen[key], start[key]), key
    assert any(not torch.equal(after_frozen[k], start[k]) for k in heads)  # the rest trained
    assert any(not torch.equal(after_all[k], start[k]) for k in backbone if "weight" in k)  # unfrozen: it trains
    assert any(not torch.equal(after_all[k], start[k]) for k in running)  # and BatchNorm tracks again

    # phase 2's lr is its own peak on the whole run's cosine curve (18 steps)
    lr13 = steps[12]["lr"]
    assert lr13 == pytest.approx(5e-4 * 0.5 * (1 + math.cos(math.pi * 12 / 18)), rel=1e-6)
    assert steps[11]["lr"] == pytest.approx(1e-3 * 0.5 * (1 + math.cos(math.pi * 11 / 18)), rel=1e-6)

    # resuming from the end of phase 1 enters phase 2 as the uninterrupted run did
    resumed = tmp_path / "resumed"
    shutil.copytree(run_dir, resumed)
    shutil.rmtree(resumed / "checkpoints" / "step_00000018")
    shutil.rmtree(resumed / "model")
    recipe2 = load_recipe(write_recipe(tmp_path / "r2.yaml", phase_recipe(shapes_dir, resumed)))
    train(recipe2, resume=True)
    final, final_resumed = (load_file(d / "model" / "model.safetensors") for d in (run_dir, resumed))
    for key in final:
        assert torch.equal(final[key], final_resumed[key]), key


def test_freeze_pattern_that_matches_nothing_is_refused(tmp_path, shapes_dir, capsys):
    recipe = phase_recipe(shapes_dir, tmp_path / "run")
    recipe["phases"] = [{"epochs": 1, "freeze": ["model.bakbone"]}, {"epochs": 1, "freeze": ["*"]}]
    code = main([str(write_recipe(tmp_path / "r.yaml", recipe))])
    err = capsys.readouterr().err
    assert code == 2
    assert "phases[0].freeze: 'model.bakbone' matches no trainable parameter" in err
    assert "phases[1].freeze: ['*'] freezes every parameter" in err
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_phase_values_are_checked_with_the_recipe(tmp_path, shapes_dir):
    recipe = phase_recipe(shapes_dir, tmp_path / "run")
    recipe["phases"] = [{"epochs": 0, "batch_size": 0, "lr": -1.0}]
    with pytest.raises(RecipeError) as err:
        load_recipe(write_recipe(tmp_path / "r.yaml", recipe))
    text = str(err.value)
    assert "phases[0].epochs: must be at least 1" in text and "phases[0].batch_size" in text and "phases[0].lr" in text


DRIVER = """
import json, sys, torch
import hftrain.train as loop
from hftrain.recipe import load_recipe
models = []
enter = loop.enter_phase
def spy(run, phase):
    enter(run, phase)
    models.append(run.model)
loop.enter_phase = spy
loop.train(load_recipe(sys.argv[1]))
unwrapped = models[-1].module if hasattr(models[-1], "module") else models[-1]
rank = int(__import__("os").environ["RANK"])
sums = {k: float(v.double().sum()) for k, v in unwrapped.named_parameters()}
open(sys.argv[2] + f"/rank{rank}.json", "w").write(json.dumps({"sums": sums, "ddp": hasattr(models[-1], "module")}))
"""


def test_two_processes_rewrap_ddp_when_the_trainable_set_changes(tmp_path, shapes_dir):
    """DDP all-reduces only the parameters trainable when it wrapped the model: without wrapping again
    at the phase change, the unfrozen backbone would train on each process's own gradients and the two
    copies would drift apart (and a freeze after wrapping would stop DDP's reduction)."""
    recipe = phase_recipe(shapes_dir, tmp_path / "run")
    recipe["phases"] = [{"epochs": 1, "batch_size": 4, "freeze": ["model.backbone"]}, {"epochs": 1, "batch_size": 4}]
    (tmp_path / "driver.py").write_text(DRIVER)
    accelerate = Path(sys.executable).with_name("accelerate")
    proc = subprocess.run(
        [str(accelerate), "launch", "--config_file", str(REPO / "accelerate_configs" / "cpu_2proc.yaml"),
         str(tmp_path / "driver.py"), str(write_recipe(tmp_path / "r.yaml", recipe)), str(tmp_path)],
        cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["ddp"] and ranks[1]["ddp"]
    assert ranks[0]["sums"] == ranks[1]["sums"]  # identical weights on both processes
