"""Out-of-memory recovery and train.batch_size: auto."""


from __future__ import annotations


import torch
import yaml
from accelerate.state import AcceleratorState

import hftrain.train as train_mod
from conftest import TINY_DEFORMABLE_DETR, records, tiny_recipe, write_recipe
from hftrain.recipe import load_recipe
from hftrain.train import train
from helpers.datasets import dataset_recipe, two_boxes_each  # noqa: F401 (fixtures)


# ---------------------------------------------------------------------------- out-of-memory recovery




def weights_after_each_step(monkeypatch, recipe_path, overrides=()):
    """Run the recipe; return flat copies of the weights: initial, then after every optimizer step."""
    from hftrain.engine.optim import build_optimizer as real

    snapshots = []

    def spy(model, *args, **kwargs):
        optimizer = real(model, *args, **kwargs)
        params = [p for group in optimizer.param_groups for p in group["params"]]

        def snapshot(*_):
            snapshots.append(torch.cat([p.detach().flatten() for p in params]).clone())

        optimizer.register_step_pre_hook(lambda *a: None if snapshots else snapshot())  # the initial weights
        optimizer.register_step_post_hook(snapshot)
        return optimizer

    monkeypatch.setattr(train_mod, "build_optimizer", spy)
    AcceleratorState._reset_state(reset_partial_state=True)
    train(load_recipe(recipe_path, list(overrides)))
    return snapshots


def test_oom_halves_the_micro_batch_and_keeps_the_weights_sequence(two_boxes_each, tmp_path, monkeypatch, capsys):
    # no dropout, no flips; Adam with eps 1 (momentum-SGD-like): plain Adam divides near-zero gradients by
    # their own size, which turns float rounding of the different summation order into visible differences
    config = {**TINY_DEFORMABLE_DETR, "dropout": 0.0, "attention_dropout": 0.0, "activation_dropout": 0.0}

    def recipe(name, batch, accum):
        r = dataset_recipe(two_boxes_each, tmp_path / name, model="deformable_detr",
                           train={"epochs": 2, "batch_size": batch, "gradient_accumulation_steps": accum},
                           eval={"interval": 5}, optim={"lr": 0.05, "eps": 1.0, "backbone_lr_mult": 1.0})
        r["model"]["config"] = config
        return write_recipe(tmp_path / f"{name}.yaml", r)

    reference = weights_after_each_step(monkeypatch, recipe("small", 2, 2))
    monkeypatch.setenv("HFTRAIN_TEST_OOM_ABOVE", "2@3")  # the 3rd training forward (step 3) and later: > 2 images OOM
    recovered = weights_after_each_step(monkeypatch, recipe("big", 4, 1))
    assert len(reference) == len(recovered) == 1 + 8  # 16 images / effective batch 4, 2 epochs
    assert torch.equal(reference[0], recovered[0])
    previous = reference[0]
    for step, (a, b) in enumerate(zip(reference[1:], recovered[1:]), 1):
        moved = (a - previous).abs().max().item()
        assert (a - b).abs().max().item() < 1e-3 * moved, (step, (a - b).abs().max().item(), moved)  # float rounding
        previous = a
    run_dir = tmp_path / "big"
    oom = records(run_dir, "oom")
    assert [(r["step"], r["batch_size"], r["gradient_accumulation_steps"]) for r in oom] == [(2, 2, 2)]
    saved = yaml.safe_load((run_dir / "recipe.yaml").read_text())
    assert saved["train"]["batch_size"] == 2 and saved["train"]["gradient_accumulation_steps"] == 2
    assert "[oom] out of memory at step 3" in capsys.readouterr().out


def test_batch_size_auto_probes_the_largest_micro_batch_that_fits(shapes_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HFTRAIN_TEST_OOM_ABOVE", "2")
    run_dir = tmp_path / "run"
    recipe = tiny_recipe(shapes_dir, run_dir, train={"epochs": 1, "batch_size": "auto", "effective_batch": 8})
    before = None
    real = train_mod.build_optimizer

    def remember(model, *args, **kwargs):  # the probe leaves weights and buffers as they were
        nonlocal before
        before = {k: v.clone() for k, v in model.state_dict().items()}
        return real(model, *args, **kwargs)

    monkeypatch.setattr(train_mod, "build_optimizer", remember)
    train(load_recipe(write_recipe(tmp_path / "r.yaml", recipe)))
    out = capsys.readouterr().out
    assert "batch_size auto: 8 does not fit" in out and "batch_size auto: 4 does not fit" in out
    assert "micro-batch 2 x accumulation 4 x 1 process(es) = effective batch 8" in out
    saved = yaml.safe_load((run_dir / "recipe.yaml").read_text())
    assert (saved["train"]["batch_size"], saved["train"]["gradient_accumulation_steps"]) == (2, 4)
    assert records(run_dir, "config")[0]["effective_batch"] == 8
    assert len(records(run_dir, "step")) == 3  # 24 images / 8
    from accelerate.utils import set_seed

    set_seed(load_recipe(tmp_path / "r.yaml").train.seed)
    fresh = train_mod.build_model(load_recipe(tmp_path / "r.yaml").model, ["rectangle", "ellipse", "triangle"])
    for key, value in fresh.model.state_dict().items():
        assert torch.equal(before[key], value), key
