"""Debug mode: batch class mix, gradients, updates, warm-up lr, loss statistics."""


from __future__ import annotations


import numpy as np
import pytest
import torch

import hftrain.train as train_mod
from conftest import records, write_recipe
from hftrain.recipe import load_recipe
from hftrain.train import train
from helpers.datasets import dataset_recipe, imbalanced  # noqa: F401 (fixtures)


# ---------------------------------------------------------------------------- debug mode and statistics


def test_debug_mode_reports_batches_gradients_updates_and_warmup(imbalanced, tmp_path, monkeypatch, capsys):
    real = train_mod.build_model

    def with_an_unwired_head(*args, **kwargs):  # a trainable head that the loss never reaches
        detector = real(*args, **kwargs)
        detector.model.unwired_head = torch.nn.Linear(4, 4)
        return detector

    monkeypatch.setattr(train_mod, "build_model", with_an_unwired_head)
    recipe = dataset_recipe(imbalanced, tmp_path / "run", train={"epochs": 1}, schedule={"warmup_steps": 3,
                            "warmup_start_lr": 1e-5, "name": "constant"}, log={"interval": 2, "tensorboard": False,
                            "loss_window": 4})
    run_dir = tmp_path / "run"
    train(load_recipe(write_recipe(tmp_path / "r.yaml", recipe), ["debug=true", "debug_batches=6"]))
    out = capsys.readouterr().out
    debug = records(run_dir, "debug")
    batches = [r for r in debug if r["what"] == "batch"]
    assert len(batches) == 6 and sum(sum(b["classes"].values()) for b in batches) == 24
    single = [b for b in batches if len(b["classes"]) == 1]
    assert len(single) >= 4  # 2 bikes in 6 batches of 4
    assert "[debug] WARNING: ALL 4 boxes in the batch are from class 'car'" in out
    gradients = [r for r in debug if r["what"] == "gradients"]
    assert len(gradients) == 6
    without = gradients[0]["without_grad"]
    assert without[-2:] == ["unwired_head.weight", "unwired_head.bias"]  # (RT-DETR leaves a few of its own too)
    assert gradients[0]["with_grad"] == gradients[0]["trainable"] - len(without) and gradients[0]["grad_norm"] > 0
    updates = [r for r in debug if r["what"] == "update"]
    assert updates[0]["unchanged"][-2:] == ["unwired_head.weight", "unwired_head.bias"]
    assert updates[0]["changed"] == gradients[0]["trainable"] - len(updates[0]["unchanged"])
    assert f"{len(without)} trainable parameters got no gradient" in out
    # the warm-up curve, step by step: 1e-5 -> 1e-3 over 3 steps
    lrs = [float(line.split(" lr ")[1].split()[0]) for line in out.splitlines() if line.startswith("[debug] step") and " lr " in line]
    assert lrs == pytest.approx([1e-5, 1e-5 + (1e-3 - 1e-5) / 3, 1e-5 + 2 * (1e-3 - 1e-5) / 3, 1e-3], rel=1e-6)
    # loss statistics: windowed variance and slope agree with the per-step losses
    steps = records(run_dir, "step")
    windows = records(run_dir, "train")
    last = windows[-1]
    tail = [s["loss"] for s in steps if s["step"] <= last["step"]][-4:]
    assert last["loss_var_window"] == pytest.approx(np.var(tail), rel=1e-6)
    assert last["loss_slope_window"] == pytest.approx(np.polyfit(np.arange(4), tail, 1)[0], rel=1e-6)
    norms = [s["grad_norm"] for s in steps if s["step"] <= last["step"]][-4:]
    assert last["grad_norm_mean_window"] == pytest.approx(np.mean(norms), rel=1e-6)
    assert last["clipped_fraction_window"] == np.mean([n > 1.0 for n in norms])
    epoch = records(run_dir, "epoch")[0]
    assert epoch["loss_var_epoch"] == pytest.approx(np.var([s["loss"] for s in steps]), rel=1e-6)
    assert "slope" in out and "clipped" in out and "epoch 1 summary" in out
