"""The non-finite guard: skip, abort naming the module, rollback."""


from __future__ import annotations

import json

import pytest
import torch

import hftrain.train as train_mod
from conftest import records, tiny_recipe, write_recipe
from hftrain.health.guard import NonFiniteAbort
from hftrain.recipe import load_recipe
from hftrain.train import train
from helpers.nan_loss import nan_in_loss_term


# ---------------------------------------------------------------------------- non-finite guard


def final_weights_finite(run_dir):
    from transformers import AutoModelForObjectDetection

    model = AutoModelForObjectDetection.from_pretrained(run_dir / "model")
    return all(torch.isfinite(p).all() for p in model.parameters())


def test_skip_drops_a_step_with_a_nan_loss_term_and_goes_on(shapes_dir, tmp_path, monkeypatch, capsys):
    nan_in_loss_term(monkeypatch, "loss_bbox", lambda n: n == 3)
    run_dir = tmp_path / "run"
    path = write_recipe(tmp_path / "r.yaml", tiny_recipe(shapes_dir, run_dir, train={"epochs": 1}))
    train(load_recipe(path, ["debug=true", "debug_batches=6"]))
    events = records(run_dir, "nonfinite")
    assert [(e["step"], e["outcome"], e["terms"][0]) for e in events] == [(3, "skip", "loss_bbox")]
    report = json.loads((run_dir / "nonfinite_report.json").read_text())
    assert report["skipped_steps"] == 1 and report["events"][0]["loss_nonfinite"]
    updates = {r["step"]: r for r in records(run_dir, "debug") if r["what"] == "update"}
    assert 3 not in updates and {2, 4} <= set(updates)  # the bad step made no update; the others did
    assert len(records(run_dir, "step")) == 6 and final_weights_finite(run_dir)
    out = capsys.readouterr().out
    assert "[guard] non-finite loss" in out and "at step 3" in out and "loss_bbox" in out and "-> skip" in out


def test_abort_names_the_module_whose_output_went_nan(shapes_dir, tmp_path, monkeypatch, capsys):
    real = train_mod.build_model
    target = "model.encoder.aifi.0.layers.0.mlp.fc1"  # a layer of RT-DETR's hybrid encoder
    calls = {"n": 0}

    def patched(*args, **kwargs):
        detector = real(*args, **kwargs)
        module = dict(detector.model.named_modules())[target]

        def poison(mod, inputs, output):
            if mod.training:
                calls["n"] += 1
                if calls["n"] == 2:
                    return output * float("nan")
            return None

        module.register_forward_hook(poison)
        return detector

    monkeypatch.setattr(train_mod, "build_model", patched)
    run_dir = tmp_path / "run"
    path = write_recipe(tmp_path / "r.yaml", tiny_recipe(shapes_dir, run_dir, train={"epochs": 1}))
    with pytest.raises(NonFiniteAbort, match=f"at step 2 .*first module with NaN/Inf output: {target};"):
        train(load_recipe(path, ["debug=true", "guard.nonfinite=abort"]))
    report = json.loads((run_dir / "nonfinite_report.json").read_text())
    event = report["events"][0]
    assert event["module"] == target and event["outcome"] == "abort" and event["step"] == 2
    assert event["nonfinite_prediction_values"] > 0 and event["terms"] == []  # NaN predictions, caught before the loss
    assert f"first module with NaN/Inf output: {target}" in capsys.readouterr().out


@pytest.mark.parametrize("recovers", [True, False])
def test_rollback_reloads_the_last_good_checkpoint_with_a_lower_lr(shapes_dir, tmp_path, monkeypatch, recovers):
    # 6 steps per epoch; training forwards 8 and 9 (epoch 2, steps 8-9) are NaN; or every forward from 8 on
    nan_in_loss_term(monkeypatch, "loss_giou", (lambda n: n in (8, 9)) if recovers else (lambda n: n >= 8))
    run_dir = tmp_path / "run"
    recipe = tiny_recipe(shapes_dir, run_dir, train={"epochs": 2}, schedule={"name": "constant"},
                         guard={"nonfinite": "rollback", "consecutive": 2, "lr_factor": 0.5, "max_rollbacks": 1},
                         eval={"interval": 5})
    path = write_recipe(tmp_path / "r.yaml", recipe)
    if not recovers:
        with pytest.raises(NonFiniteAbort, match="1 rollbacks did not help"):
            train(load_recipe(path))
        report = json.loads((run_dir / "nonfinite_report.json").read_text())
        assert [e["outcome"] for e in report["events"]] == ["skip", "rollback", "skip", "abort after rollbacks"]
        return
    train(load_recipe(path))
    rollback = records(run_dir, "rollback")
    assert len(rollback) == 1 and rollback[0]["checkpoint"].endswith("step_00000006") and rollback[0]["lr_scale"] == 0.5
    steps = records(run_dir, "step")
    assert [s["step"] for s in steps] == list(range(1, 10)) + list(range(7, 13))  # epoch 2 again from step 7
    assert all(s["lr"] == pytest.approx(1e-3) for s in steps[:9])
    assert all(s["lr"] == pytest.approx(5e-4) for s in steps[9:])
    report = json.loads((run_dir / "nonfinite_report.json").read_text())
    assert report["rollbacks"] == 1 and [e["outcome"] for e in report["events"]] == ["skip", "rollback"]
    assert report["events"][1]["terms"][0] == "loss_giou"
    assert final_weights_finite(run_dir)
