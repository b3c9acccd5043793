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


def test_fp16_overflow_and_a_guard_skip_each_decide_the_schedule_from_their_own_step(
        shapes_dir, tmp_path, monkeypatch):
    """fp16 as the loop sees it: the grad scaler skips a step with inf gradients (Accelerate's
    ``optimizer_step_was_skipped``), the guard counts only non-finite losses. Step 2 overflows (no
    scheduler step), step 3 has a NaN loss (the guard skips it: its schedule slot is used up). The
    scaler's flag is not refreshed by a step the guard skipped, so it must not decide step 3."""
    from accelerate.optimizer import AcceleratedOptimizer

    from hftrain.health.guard import NonFiniteGuard

    nan_in_loss_term(monkeypatch, "loss_bbox", lambda n: n == 3)
    with_nan_loss, backwards = train_mod.build_model, {"n": 0}

    def build(*args, **kwargs):  # the second backward's gradients overflow (inf)
        detector = with_nan_loss(*args, **kwargs)

        def overflow(grad):
            backwards["n"] += 1
            return grad * float("inf") if backwards["n"] == 2 else grad

        next(detector.model.parameters()).register_hook(overflow)
        return detector

    real_step = AcceleratedOptimizer.step

    def scaler_step(self, closure=None):  # GradScaler.step: skip the update when a gradient is not finite
        grads = [p.grad for group in self.param_groups for p in group["params"] if p.grad is not None]
        self._is_overflow = not all(torch.isfinite(g).all() for g in grads)
        if not self._is_overflow:
            real_step(self, closure)

    monkeypatch.setattr(train_mod, "build_model", build)
    monkeypatch.setattr(AcceleratedOptimizer, "step", scaler_step)
    monkeypatch.setattr(train_mod, "NonFiniteGuard", lambda *a, **k: NonFiniteGuard(*a, **{**k, "count_gradients": False}))
    run_dir = tmp_path / "run"
    recipe = tiny_recipe(shapes_dir, run_dir, train={"epochs": 1},
                         schedule={"name": "constant", "warmup_steps": 10, "warmup_start_lr": 0.0})
    train(load_recipe(write_recipe(tmp_path / "r.yaml", recipe)))
    steps = records(run_dir, "step")
    # the schedule's position before each step: 0, 1, 1 (after the overflow), 2 (the guard's skip used its slot), 3, 4
    assert [s["lr"] / 1e-3 * 10 for s in steps] == pytest.approx([0, 1, 1, 2, 3, 4])
    assert steps[1]["overflow"] is True and steps[1]["grad_norm"] is None  # not an infinite gradient norm
    assert all("overflow" not in s and s["grad_norm"] > 0 for s in steps[:1] + steps[3:])
    assert [e["outcome"] for e in records(run_dir, "nonfinite")] == ["skip"] and records(run_dir, "nonfinite")[0]["epoch"] == 1
    train_records = records(run_dir, "train")
    assert sum(r["overflow_steps"] for r in train_records) == 1
    assert train_records[1]["clipped_fraction"] == 0.0  # the overflow step is not "clipped"
    assert records(run_dir, "epoch")[0]["overflow_steps_epoch"] == 1


def test_rollback_lowers_the_phase_lr_and_the_next_phases_and_a_resume_keep_it(shapes_dir, tmp_path, monkeypatch):
    # 3 steps per epoch (batch 8); epoch 2's forwards 5 and 6 are NaN: rollback at step 6 to the end of epoch 1
    nan_in_loss_term(monkeypatch, "loss_giou", lambda n: n in (5, 6))
    run_dir = tmp_path / "run"
    recipe = tiny_recipe(shapes_dir, run_dir, train={"batch_size": 8}, schedule={"name": "constant"},
                         guard={"nonfinite": "rollback", "consecutive": 2, "lr_factor": 0.5, "max_rollbacks": 2},
                         eval={"during_training": False}, checkpoint={"interval": 1, "keep": 10})
    recipe["phases"] = [{"epochs": 1}, {"epochs": 1, "lr": 5e-4}, {"epochs": 1, "lr": 2e-4}]
    path = write_recipe(tmp_path / "r.yaml", recipe)
    train(load_recipe(path))
    steps = records(run_dir, "step")
    assert [s["step"] for s in steps] == [1, 2, 3, 4, 5, 6, 4, 5, 6, 7, 8, 9]
    assert [s["lr"] for s in steps] == pytest.approx([1e-3] * 3 + [5e-4] * 3 + [2.5e-4] * 3 + [1e-4] * 3)
    state = json.loads((run_dir / "checkpoints" / "step_00000006" / "trainer_state.json").read_text())
    assert (state["lr_scale"], state["rollbacks"]) == (0.5, 1)
    # a resume in the last phase keeps the lowered rate
    import shutil

    from accelerate.state import AcceleratorState

    shutil.rmtree(run_dir / "checkpoints" / "step_00000009")
    shutil.rmtree(run_dir / "model")
    AcceleratorState._reset_state(reset_partial_state=True)
    train(load_recipe(path), resume=True)
    assert [s["lr"] for s in records(run_dir, "step")[-3:]] == pytest.approx([1e-4] * 3)
    assert json.loads((run_dir / "nonfinite_report.json").read_text())["rollbacks"] == 1
