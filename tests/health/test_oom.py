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


def test_batch_size_auto_steps_the_optimizer_and_reserves_the_ema_and_ddp_copies(shapes_dir, monkeypatch):
    """An out-of-memory error that only the optimizer step meets (Adam allocates its two moments per
    weight there) must make the probe choose a smaller micro-batch; the weights come back unchanged."""
    from accelerate import Accelerator

    from hftrain.data.loader import load_data
    from hftrain.engine.optim import build_optimizer
    from hftrain.health.oom import reserve_training_memory, resolve_auto_batch
    from hftrain.models.inputs import Normalize, model_inputs
    from hftrain.models.registry import build_model
    from hftrain.models.tiny import tiny_config
    from hftrain.recipe.schema import DataConfig, ModelConfig, Recipe, SplitConfig, TrainConfig

    data_cfg = DataConfig(train=SplitConfig(images=str(shapes_dir / "train"), labels=str(shapes_dir / "train.json")),
                          val=SplitConfig(images=str(shapes_dir / "val"), labels=str(shapes_dir / "val.json")),
                          min_size=64, max_size=64, num_workers=0)
    recipe = Recipe(model=ModelConfig(name="rt_detr", config=tiny_config("rt_detr")), data=data_cfg,
                    train=TrainConfig(batch_size="auto", effective_batch=8))
    data = load_data(data_cfg)
    detector = build_model(recipe.model, data.class_names)
    forwarded = []
    detector.model.register_forward_pre_hook(lambda module, args, kwargs: forwarded.append(kwargs["pixel_values"].shape[0]),
                                             with_kwargs=True)
    real_step = torch.optim.AdamW.step

    def step(self, *args, **kwargs):  # the moments of more than 2 images' worth of activations do not fit
        if forwarded[-1] > 2:
            raise torch.OutOfMemoryError("CUDA out of memory (test: the optimizer state)")
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", step)
    before = {k: v.clone() for k, v in detector.model.state_dict().items()}
    accelerator = Accelerator(cpu=True)
    normalize = Normalize(detector.image_mean, detector.image_std, accelerator.device)
    lines = []
    chosen = resolve_auto_batch(recipe, detector, data.train, accelerator,
                                lambda batch: model_inputs(batch, normalize, detector.uses_pixel_mask),
                                type("Log", (), {"print": lambda self, *text: lines.extend(text)})(),
                                lambda model: build_optimizer(model, detector.backbone_prefixes, recipe.optim))
    assert (chosen.train.batch_size, chosen.train.gradient_accumulation_steps) == (2, 4), lines
    assert any("4 does not fit" in line and "optimizer state" in line for line in lines)
    after = detector.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # the probe's optimizer steps were undone

    model = detector.model
    floats = sum(t.numel() for t in model.state_dict().values() if t.is_floating_point())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert sum(t.numel() for t in reserve_training_memory(model, ema=True, ddp=False)) == floats
    assert sum(t.numel() for t in reserve_training_memory(model, ema=False, ddp=True)) == trainable
    assert reserve_training_memory(model, ema=False, ddp=False) == []
