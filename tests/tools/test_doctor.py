"""doctor and check-sampler: a recipe's health report before a long run."""


from __future__ import annotations

from types import SimpleNamespace

import pytest

import hftrain.tools.doctor as doctor_mod
import hftrain.train as train_mod
from conftest import tiny_recipe, write_recipe
from hftrain.health.debug import NothingToTrain
from hftrain.recipe import load_recipe
from hftrain.train import train
from helpers.datasets import dataset_recipe, imbalanced  # noqa: F401 (fixtures)


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
    from hftrain.data.loader import load_data, make_train_loader

    data = load_data(recipe.data)
    loader = make_train_loader(data, 4, recipe.data, recipe.train.seed, SimpleNamespace(uses_pixel_mask=False, pad_to_multiple=32))
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
