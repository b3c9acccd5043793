"""Parameter groups and learning-rate schedules."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from hftrain.engine.optim import build_optimizer, build_scheduler, lr_factor, param_groups


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
        self.head = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4))


def test_groups_split_backbone_and_no_decay_for_norms_and_biases():
    model = Tiny()
    groups = {g["name"]: g for g in param_groups(model, ("backbone",), lr=1e-3, backbone_lr_mult=0.1, weight_decay=0.05)}
    ids = {name: {id(p) for p in g["params"]} for name, g in groups.items()}
    assert ids["backbone"] == {id(model.backbone[0].weight)}
    assert ids["backbone_no_decay"] == {id(model.backbone[0].bias), id(model.backbone[1].weight), id(model.backbone[1].bias)}
    assert ids["rest"] == {id(model.head[0].weight)}
    assert ids["rest_no_decay"] == {id(model.head[0].bias), id(model.head[1].weight), id(model.head[1].bias)}
    assert groups["backbone"]["lr"] == pytest.approx(1e-4) and groups["rest"]["lr"] == pytest.approx(1e-3)
    assert groups["rest_no_decay"]["weight_decay"] == 0.0 and groups["rest"]["weight_decay"] == 0.05


def test_frozen_parameters_are_left_out():
    model = Tiny()
    model.backbone.requires_grad_(False)
    names = {g["name"] for g in param_groups(model, ("backbone",), 1e-3, 0.1, 0.05)}
    assert names == {"rest", "rest_no_decay"}


def test_warmup_then_cosine_reaches_min_lr():
    cfg = SimpleNamespace(name="cosine", warmup_steps=10, warmup_start_lr=1e-7, min_lr=1e-6, milestones=[], gamma=0.1)
    model = Tiny()
    optim_cfg = SimpleNamespace(lr=1e-4, backbone_lr_mult=0.1, weight_decay=0.0, betas=[0.9, 0.999], eps=1e-8)
    optimizer = build_optimizer(model, ("backbone",), optim_cfg)
    scheduler = build_scheduler(optimizer, cfg, peak_lr=1e-4, total_steps=110, steps_per_epoch=11)
    rest = next(g for g in optimizer.param_groups if g["name"] == "rest")
    backbone = next(g for g in optimizer.param_groups if g["name"] == "backbone")
    seen = []
    for _ in range(111):
        seen.append((rest["lr"], backbone["lr"]))
        optimizer.step()
        scheduler.step()
    assert seen[0][0] == pytest.approx(1e-7)
    assert seen[5][0] == pytest.approx(1e-7 + (1e-4 - 1e-7) * 0.5)
    assert seen[10][0] == pytest.approx(1e-4)
    assert seen[60][0] == pytest.approx(1e-6 + (1e-4 - 1e-6) * 0.5)  # half-way through the cosine
    assert seen[110][0] == pytest.approx(1e-6)
    assert all(b == pytest.approx(r * 0.1) for r, b in seen)  # the backbone keeps its multiplier
    assert all(a >= b for (a, _), (b, _) in zip(seen[10:], seen[11:]))


def test_step_schedule_counts_epochs_in_optimizer_steps():
    cfg = SimpleNamespace(name="step", warmup_steps=0, warmup_start_lr=0.0, min_lr=0.0, milestones=[2, 4], gamma=0.1)
    factors = [lr_factor(s, cfg, 1.0, total_steps=60, steps_per_epoch=10) for s in range(60)]
    assert factors[19] == 1.0 and factors[20] == pytest.approx(0.1)
    assert factors[39] == pytest.approx(0.1) and factors[40] == pytest.approx(0.01)
    constant = SimpleNamespace(name="constant", warmup_steps=0, warmup_start_lr=0.0, min_lr=0.0, milestones=[], gamma=0.1)
    assert {lr_factor(s, constant, 1.0, 60, 10) for s in range(60)} == {1.0}
    assert math.isfinite(lr_factor(0, cfg, 1.0, 0, 0))


def test_optimizer_is_adamw_with_recipe_betas():
    optim_cfg = SimpleNamespace(lr=2e-4, backbone_lr_mult=1.0, weight_decay=1e-4, betas=[0.8, 0.9], eps=1e-6)
    optimizer = build_optimizer(Tiny(), ("backbone",), optim_cfg)
    assert isinstance(optimizer, torch.optim.AdamW)
    assert optimizer.defaults["betas"] == (0.8, 0.9) and optimizer.defaults["eps"] == 1e-6
