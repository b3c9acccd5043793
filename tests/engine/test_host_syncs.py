"""What a GPU run would wait for (issue 15, items 5 and 8): one host transfer per optimizer step
whatever the accumulation (the losses, the gradient norm, the guard's and the stop signal's flags
read together), one per evaluation batch, and no model outputs kept alive into the next forward.

On a CPU nothing waits, so the calls that would wait are counted (tests/helpers/host_syncs.py)."""

from __future__ import annotations

import weakref

import hftrain.engine.evaluation as evaluation
import hftrain.train as train_mod
from conftest import records, tiny_recipe, write_recipe
from helpers.host_syncs import counting_syncs
from hftrain.recipe import load_recipe


def test_one_host_transfer_per_optimizer_step_and_outputs_freed_before_the_next_forward(
        tmp_path, shapes_dir, monkeypatch):
    counted, alive_at_forward = {}, []
    real_build, real_epoch, real_predict = train_mod.build_model, train_mod.train_one_epoch, evaluation.predict

    def build(*args, **kwargs):  # hooks: is the previous training forward's output still referenced?
        detector = real_build(*args, **kwargs)
        previous = {}

        def before(module, inputs):
            if module.training and "logits" in previous:
                alive_at_forward.append(previous["logits"]() is not None)

        def after(module, inputs, output):
            if module.training:
                previous["logits"] = weakref.ref(output.logits)

        detector.model.register_forward_pre_hook(before)
        detector.model.register_forward_hook(after)
        return detector

    def epoch(run, loader):
        with counting_syncs() as counts:
            outcome = real_epoch(run, loader)
        counted["train"] = counts
        return outcome

    def predict(*args, **kwargs):
        with counting_syncs() as counts:
            predictions = real_predict(*args, **kwargs)
        counted["predict"] = counts
        return predictions

    monkeypatch.setattr(train_mod, "build_model", build)
    monkeypatch.setattr(train_mod, "train_one_epoch", epoch)
    monkeypatch.setattr(evaluation, "predict", predict)
    run_dir = tmp_path / "run"
    recipe = tiny_recipe(shapes_dir, run_dir, train={"epochs": 1, "gradient_accumulation_steps": 2},
                         log={"interval": 100}, eval={"during_training": False})
    train_mod.train(load_recipe(write_recipe(tmp_path / "r.yaml", recipe)))

    assert len(alive_at_forward) == 5 and not any(alive_at_forward)  # 6 micro-batches: 5 follow another
    steps = len(records(run_dir, "step"))
    assert steps == 3
    ours = {key: n for key, n in counted["train"].items() if key[0] == "hftrain"}
    # the guard's transfer each optimizer step (none per micro-batch), and the epoch's bad-image count
    assert sum(ours.values()) == steps + 1, ours
    assert ours[("hftrain", "tolist")] == steps and ours[("hftrain", "item")] == 1
    evaluated = {key[1]: n for key, n in counted["predict"].items() if key[0] == "hftrain"}
    assert evaluated.get("cpu") == 2  # 8 validation images in 2 batches: one copy of the detections per batch
    assert "item" not in evaluated and "__float__" not in evaluated
