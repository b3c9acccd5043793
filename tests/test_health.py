"""Training health: samplers, debug mode, the non-finite guard, out-of-memory recovery, doctor and
check-sampler, loss statistics. Each test provokes its condition for real."""

from __future__ import annotations

import json
import math
import os
import subprocess
from collections import Counter
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml
from accelerate.state import AcceleratorState
from PIL import Image

import hftrain.doctor as doctor_mod
import hftrain.train as train_mod
from conftest import PYTHON, REPO, TINY_DEFORMABLE_DETR, records, tiny_recipe, write_recipe
from hftrain import samplers
from hftrain.debug import NothingToTrain
from hftrain.guard import NonFiniteAbort
from hftrain.recipe import load_recipe
from hftrain.train import train




# ---------------------------------------------------------------------------- data made for the conditions


def write_coco(root, split: str, images: list[list[tuple[int, list[float]]]], class_names: list[str], size=(64, 64)):
    """A COCO split whose image i holds boxes ``images[i]`` = [(class index, [x, y, w, h]), ...],
    each box a filled rectangle on a noisy background. ``size`` may be a list of (h, w) per image."""
    rng = np.random.default_rng(len(images))
    folder = root / split
    folder.mkdir(parents=True, exist_ok=True)
    coco = {"images": [], "annotations": [], "categories": [{"id": i + 1, "name": n} for i, n in enumerate(class_names)]}
    colours = [(220, 40, 40), (40, 220, 40), (40, 40, 220)]
    for i, boxes in enumerate(images):
        h, w = size[i] if isinstance(size, list) else size
        pixels = rng.normal(120, 10, (h, w, 3)).clip(0, 255).astype(np.uint8)
        for c, (x, y, bw, bh) in boxes:
            pixels[int(y):int(y + bh), int(x):int(x + bw)] = colours[c % 3]
        Image.fromarray(pixels).save(folder / f"{i:04d}.jpg", quality=95)
        coco["images"].append({"id": i + 1, "file_name": f"{i:04d}.jpg", "height": h, "width": w})
        for c, box in boxes:
            coco["annotations"].append({"id": len(coco["annotations"]) + 1, "image_id": i + 1, "category_id": c + 1,
                                        "bbox": box, "area": box[2] * box[3], "iscrowd": 0})
    (root / f"{split}.json").write_text(json.dumps(coco))


def dataset_recipe(root, run_dir, model="rt_detr", **sections) -> dict:
    recipe = tiny_recipe(root, run_dir, model=model, **sections)
    recipe["data"]["hflip"] = 0.0
    return recipe


@pytest.fixture(scope="module")
def imbalanced(tmp_path_factory):
    """24 training images: 22 with one 'car', 2 with one 'bike' (a 'truck' class is never used)."""
    root = tmp_path_factory.mktemp("imbalanced")
    rng = np.random.default_rng(3)
    images = [[(1 if i in (5, 17) else 0, [float(rng.integers(2, 30)), float(rng.integers(2, 30)), 20.0, 16.0])]
              for i in range(24)]
    write_coco(root, "train", images, ["car", "bike", "truck"])
    write_coco(root, "val", images[:4], ["car", "bike", "truck"])
    return root


# ---------------------------------------------------------------------------- samplers


def test_repeat_factors_follow_lvis_and_round_stochastically():
    # f(A) = 0.8, f(B) = 0.2 ; t = 0.8 -> r(A) = 1, r(B) = 2 ; an image with both gets 2, without boxes 1
    classes = [np.array([0])] * 15 + [np.array([1])] * 3 + [np.array([0, 1, 1]), np.array([], dtype=np.int64)]
    factors = samplers.repeat_factors(classes, 3, threshold=0.8)
    expected = [1.0] * 15 + [math.sqrt(0.8 / 0.2)] * 4 + [1.0]
    assert factors.tolist() == pytest.approx(expected)
    # a fractional factor is drawn floor or ceil per epoch, with the right mean; the epoch length is fixed
    rates = [1.0] * 100 + [1.5] * 100 + [2.25] * 100
    sampler = samplers.RepeatFactorSampler(rates, seed=3)
    counts = np.zeros((50, 300))
    for epoch in range(50):
        sampler.set_epoch(epoch)
        keys = list(sampler)
        assert len(keys) == len(sampler) == 475  # round(sum of the factors), every epoch
        for _, index in keys:
            counts[epoch, index] += 1
    for group, r in enumerate([1.0, 1.5, 2.25]):
        seen = counts[:, group * 100:(group + 1) * 100]
        assert abs(seen.mean() - r) < 0.03, (r, seen.mean())
        assert np.isin(seen, [np.floor(r), np.ceil(r)]).mean() > 0.97  # floor or ceil (a few wrap-arounds aside)
    # seeded by (seed, epoch): the same on every process, different per epoch; repeats get distinct draws
    sampler.set_epoch(7)
    first = list(sampler)
    again = samplers.RepeatFactorSampler(rates, seed=3)
    again.set_epoch(7)
    assert list(again) == first and len(set(first)) == len(first)
    sampler.set_epoch(8)
    assert list(sampler) != first
    # rank sharding (outside Accelerate) partitions the padded global order
    shards = []
    for rank in range(2):
        part = samplers.RepeatFactorSampler(rates, seed=3, num_replicas=2, rank=rank)
        part.set_epoch(7)
        shards.append(list(part))
    assert shards[0] == first[0::2] and shards[1] == first[1::2] + [first[0]]  # 475 padded to 476 by wrapping


def test_aspect_ratio_groups_never_mix_orientations():
    sizes = np.array([[64, 96], [96, 64]] * 7 + [[64, 64]])
    groups = samplers.aspect_groups(sizes)
    batcher = samplers.GroupedBatchSampler(samplers.RepeatFactorSampler(np.ones(len(sizes)), seed=1), groups, 4)
    batcher.set_epoch(2)
    batches = list(batcher)
    assert len(batches) == len(batcher)
    assert sorted(k[1] for b in batches for k in b) == list(range(len(sizes)))  # each image once, none dropped
    for batch in batches:
        assert len({int(groups[k[1]]) for k in batch}) == 1


def test_grouped_batches_train_with_mixed_orientations(tmp_path):
    sizes = [(64, 96) if i % 2 else (96, 64) for i in range(12)]
    images = [[(i % 2, [4.0, 4.0, 30.0, 20.0])] for i in range(12)]
    write_coco(tmp_path, "train", images, ["a", "b"], size=sizes)
    write_coco(tmp_path, "val", images[:4], ["a", "b"], size=sizes[:4])
    recipe = dataset_recipe(tmp_path, tmp_path / "run", train={"epochs": 1},
                            data={"group_by_aspect_ratio": True, "max_size": 96})
    recipe["data"]["train"]["subset"] = None
    train(load_recipe(write_recipe(tmp_path / "r.yaml", recipe), ["debug=true", "debug_batches=10"]))
    seen = [json.loads(line) for line in (tmp_path / "run" / "debug" / "samples_rank0.jsonl").read_text().splitlines()]
    assert sum(len(s["image_ids"]) for s in seen) == 12
    # image ids 1..12: odd ids are the (96, 64) portrait images. Every batch but the last holds one
    # orientation; the last pools the groups' leftovers (only the last batch may be short or mixed)
    for entry in seen[:-1]:
        assert len({i % 2 for i in entry["image_ids"]}) == 1, entry
    assert len(seen) == 3


# ---------------------------------------------------------------------------- check-sampler and doctor


def test_check_sampler_shows_single_class_batches_and_advises(imbalanced, tmp_path, capsys):
    path = write_recipe(tmp_path / "r.yaml", dataset_recipe(imbalanced, tmp_path / "run"))
    assert doctor_mod.check_sampler_main([str(path), "--batches", "5"]) == 0
    out = capsys.readouterr().out
    assert out.count("  batch ") == 5
    assert "WARNING: ALL 4 boxes in the batch are from class 'car'" in out
    assert "class 0 'car': 22 boxes (91.7%) in 22 images" in out and "class 1 'bike': 2 boxes" in out
    assert "imbalance ratio (most / least frequent class present): 11.0" in out
    assert "classes with no training box: ['truck']" in out
    assert "set data.sampler: repeat_factor" in out
    # the batches are those training sees: the same indices as the training sampler's first epoch
    recipe = load_recipe(path)
    from hftrain.data.loader import load_data

    data = load_data(recipe.data)
    loader = train_mod.make_train_loader(data, 4, recipe, SimpleNamespace(uses_pixel_mask=False, pad_to_multiple=32))
    loader.sampler.set_epoch(1)
    assert [list(b) for b in doctor_mod.sampler_batches(recipe, data, 6)] == [[k[1] for k in b] for b in loader.batch_sampler]
    # repeat factor sampling raises the rare class's share of what the sampler delivers
    assert doctor_mod.check_sampler_main([str(path), "data.sampler=repeat_factor", "data.repeat_threshold=0.5",
                                          "--batches", "5"]) == 0
    out = capsys.readouterr().out
    assert "repeat factors: min 1.00, max 2.45; an epoch has 27 samples for 24 images" in out  # 22 + 2 * sqrt(0.5/(2/24))


def test_doctor_reports_before_a_long_run(imbalanced, tmp_path, capsys):
    recipe = dataset_recipe(imbalanced, tmp_path / "run", optim={"lr": 5e-3}, schedule={"warmup_steps": 500})
    path = write_recipe(tmp_path / "r.yaml", recipe)
    assert doctor_mod.doctor_main([str(path)]) == 0
    out = capsys.readouterr().out
    assert "24 training images, 4 validation images, 3 classes" in out
    assert "class 0 'car': 22 boxes" in out and "imbalance ratio" in out
    assert "blacklist: none" in out
    assert "boxes per image: min 1, mean 1.0, max 1; 0 images without boxes" in out
    assert "image sizes (h x w): 1 distinct, from 64x64 to 64x64" in out
    assert "WARNING: effective batch 4 is below 32" in out
    assert "WARNING: optim.lr 0.005 is high" in out
    assert "WARNING: warm-up (500 steps) is not shorter than the run (12 steps)" in out
    trainable = sum(p.numel() for p in train_mod.build_model(load_recipe(path).model, ["car", "bike", "truck"]).model.parameters())
    assert f"trainable {trainable:,}" in out and "frozen 0 (0 tensors)" in out
    assert "precision: no on CPU (recipe: auto)" in out


def freeze_everything(monkeypatch, module):
    real = module.build_model

    def frozen(*args, **kwargs):
        detector = real(*args, **kwargs)
        for p in detector.model.parameters():
            p.requires_grad_(False)
        return detector

    monkeypatch.setattr(module, "build_model", frozen)


def test_a_frozen_everything_model_is_refused_by_train_and_doctor(shapes_dir, tmp_path, monkeypatch, capsys):
    path = write_recipe(tmp_path / "r.yaml", tiny_recipe(shapes_dir, tmp_path / "run"))
    freeze_everything(monkeypatch, train_mod)
    with pytest.raises(NothingToTrain, match=r"all \d+ parameter tensors .* are frozen"):
        train(load_recipe(path))
    freeze_everything(monkeypatch, __import__("hftrain.models.registry", fromlist=["build_model"]))
    assert doctor_mod.doctor_main([str(path)]) == 1
    out = capsys.readouterr().out
    assert "trainable 0 (0 tensors)" in out and "ERROR: every parameter is frozen" in out


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


# ---------------------------------------------------------------------------- non-finite guard


def nan_in_loss_term(monkeypatch, term: str, bad_calls):
    """Make one loss term NaN (and so the loss) on the given training forward calls (1-based)."""
    real = train_mod.build_model
    calls = {"n": 0}

    def patched(*args, **kwargs):
        detector = real(*args, **kwargs)
        model = detector.model
        original = model.loss_function

        def loss_function(*a, **k):
            result = original(*a, **k)
            if not model.training:
                return result
            calls["n"] += 1
            loss, loss_dict = result[0], dict(result[1])
            if bad_calls(calls["n"]):
                loss_dict[term] = loss_dict[term] * float("nan")
                loss = loss + loss_dict[term]
            return (loss, loss_dict, *result[2:])

        model.loss_function = loss_function
        return detector

    monkeypatch.setattr(train_mod, "build_model", patched)


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


# ---------------------------------------------------------------------------- out-of-memory recovery


@pytest.fixture(scope="module")
def two_boxes_each(tmp_path_factory):
    """16 images with exactly two boxes each: DETR's loss is normalised by the micro-batch's box count,
    so only then is the loss of a batch of 4 the mean of its two micro-batches of 2."""
    root = tmp_path_factory.mktemp("two_boxes")
    rng = np.random.default_rng(5)
    images = [[(int(rng.integers(0, 2)), [float(rng.integers(0, 10)), float(rng.integers(0, 10)), 18.0, 14.0]),
               (int(rng.integers(0, 2)), [float(rng.integers(34, 44)), float(rng.integers(34, 44)), 16.0, 12.0])]
              for _ in range(16)]
    write_coco(root, "train", images, ["a", "b"])
    write_coco(root, "val", images[:4], ["a", "b"])
    return root


def weights_after_each_step(monkeypatch, recipe_path, overrides=()):
    """Run the recipe; return flat copies of the weights: initial, then after every optimizer step."""
    from hftrain.optim import build_optimizer as real

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


# ---------------------------------------------------------------------------- two processes


def test_repeat_factor_sampler_under_two_processes(tmp_path):
    # 16 images of class A (f = 0.8), 4 of class B (f = 0.2); t = 0.8: B repeats exactly twice -> 24 samples
    images = [[(0, [4.0, 4.0, 20.0, 20.0])]] * 16 + [[(1, [30.0, 30.0, 20.0, 20.0])]] * 4
    write_coco(tmp_path, "train", images, ["A", "B"])
    write_coco(tmp_path, "val", images[:2], ["A", "B"])
    recipe = dataset_recipe(tmp_path, tmp_path / "run", train={"epochs": 1, "batch_size": 2},
                            data={"sampler": "repeat_factor", "repeat_threshold": 0.8})
    recipe.update({"debug": True, "debug_batches": 100})
    path = write_recipe(tmp_path / "r.yaml", recipe)
    accelerate = os.path.join(os.path.dirname(PYTHON), "accelerate")
    proc = subprocess.run([accelerate, "launch", "--config_file", str(REPO / "accelerate_configs" / "cpu_2proc.yaml"),
                           "hftrain/train.py", str(path)], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    seen = {}
    for rank in (0, 1):
        lines = (tmp_path / "run" / "debug" / f"samples_rank{rank}.jsonl").read_text().splitlines()
        seen[rank] = [i for line in lines for i in json.loads(line)["image_ids"]]
    assert len(seen[0]) == len(seen[1]) == 12  # 24 samples, 6 batches of 2 per process
    union = Counter(seen[0] + seen[1])
    assert union == Counter({**{i: 1 for i in range(1, 17)}, **{i: 2 for i in range(17, 21)}})
    # and they are the sampler's global order for epoch 1, dealt out batch by batch
    sampler = samplers.RepeatFactorSampler([1.0] * 16 + [2.0] * 4, seed=load_recipe(path).train.seed)
    order = [i + 1 for i in sampler.global_indices(epoch=1).tolist()]
    batches = [order[i:i + 2] for i in range(0, 24, 2)]
    assert seen[0] == [i for b in batches[0::2] for i in b] and seen[1] == [i for b in batches[1::2] for i in b]


def test_grouped_batches_pool_leftovers_so_only_the_last_batch_is_short():
    # Accelerate shards batch samplers assuming only the last batch can be short
    for n in (8, 14, 50):
        groups = np.array([i % 3 == 0 for i in range(n)], dtype=int)
        sampler = samplers.GroupedBatchSampler(list(range(n)), groups, 2)
        batches = list(sampler)
        assert len(batches) == len(sampler)
        assert sorted(i for batch in batches for i in batch) == list(range(n))
        assert all(len(batch) == 2 for batch in batches[:-1])
