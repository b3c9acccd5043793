"""hftrain trains as a bare loop does (issue 18): on the same batches, from the same initial weights,
``hftrain.train.train`` takes the same optimizer steps as a plain PyTorch loop written in the style of
transformers' object-detection example (forward, backward, clip, AdamW without decay on 1-D
parameters, transformers' cosine-with-min-lr schedule). Everything hftrain adds around the step
(Accelerate, the box-count and fp32 loss wrappers, the non-finite guard, clipping over the trainable
list, evaluation and checkpoints between epochs) must leave the trajectory unchanged."""

from __future__ import annotations

import math

import pytest
import torch
from accelerate.state import AcceleratorState
from accelerate.utils import set_seed
from transformers import get_cosine_with_min_lr_schedule_with_warmup

from conftest import records, tiny_recipe, write_recipe
from hftrain.data.collate import Collate, unpack_labels
from hftrain.data.epoch_sampler import EpochShuffle
from hftrain.data.loader import load_data
from hftrain.models.registry import build_model
from hftrain.recipe import load_recipe
from hftrain.train import train

SEED, BATCH, EPOCHS, LR, MIN_LR, WARMUP = 3, 4, 2, 1e-3, 1e-5, 3


def bare_loop(recipe) -> list[dict]:
    """The reference: the same data (hftrain's dataset, in its documented (seed, epoch) order, flips
    included; that the dataset equals the transformers processor's preparation is tested in
    tests/data/test_reference_preparation.py) through the plainest training loop."""
    data = load_data(recipe.data, seed=SEED)
    torch.set_num_threads(1)
    set_seed(SEED)
    model = build_model(recipe.model, data.class_names).model  # the same from-scratch init as hftrain's
    set_seed(SEED)  # hftrain seeds again (per process) before training: the denoising queries draw from it
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": recipe.optim.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=LR)
    steps_per_epoch = math.ceil(len(data.train) / BATCH)
    scheduler = get_cosine_with_min_lr_schedule_with_warmup(optimizer, WARMUP, EPOCHS * steps_per_epoch, min_lr=MIN_LR)
    collate = Collate(normalize_by_canvas=True, pad_to_multiple=32)
    sampler = EpochShuffle(len(data.train), SEED)
    steps = []
    model.train()
    for epoch in range(1, EPOCHS + 1):
        sampler.set_epoch(epoch)
        keys = list(sampler)
        for start in range(0, len(keys), BATCH):
            batch = collate([data.train[key] for key in keys[start:start + BATCH]])
            lr = optimizer.param_groups[0]["lr"]
            outputs = model(pixel_values=batch["pixel_values"].float() / 255.0, labels=unpack_labels(batch))
            outputs.loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), recipe.train.clip_max_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            steps.append({"loss": outputs.loss.item(), "grad_norm": float(grad_norm), "lr": lr})
    return steps


def test_hftrain_takes_the_same_steps_as_a_bare_loop(tmp_path, shapes_dir):
    recipe = tiny_recipe(shapes_dir, tmp_path / "run", train={"epochs": EPOCHS, "batch_size": BATCH, "seed": SEED,
                                                              "clip_max_norm": 0.1},
                         optim={"lr": LR, "weight_decay": 1e-4, "backbone_lr_mult": 1.0},
                         schedule={"name": "cosine", "warmup_steps": WARMUP, "min_lr": MIN_LR},
                         eval={"interval": 1}, checkpoint={"interval": 1})
    recipe["data"]["hflip"] = 0.5
    recipe = load_recipe(write_recipe(tmp_path / "r.yaml", recipe))
    assert build_model(recipe.model, ["a", "b", "c"]).image_mean == (0.0, 0.0, 0.0)  # RT-DETR: x / 255, as its processor
    AcceleratorState._reset_state(reset_partial_state=True)
    train(recipe)
    AcceleratorState._reset_state(reset_partial_state=True)
    ours = records(tmp_path / "run", "step")
    reference = bare_loop(recipe)
    assert len(ours) == len(reference) == EPOCHS * math.ceil(24 / BATCH)
    for step, (a, b) in enumerate(zip(ours, reference), 1):
        assert a["lr"] == pytest.approx(b["lr"], rel=1e-6), f"step {step}: lr"
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4), f"step {step}: loss"
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-4), f"step {step}: gradient norm"
