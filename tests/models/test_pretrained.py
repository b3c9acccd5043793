"""Hub checkpoints as published: timm ResNet backbones load into transformers' ResNet without timm,
loadability is checked before any data is read, re-initialised class heads get their prior, and
DETR's backbone freezing holds for pretrained models."""

from __future__ import annotations

import json
import math
import sys
from types import SimpleNamespace

import pytest
import torch
from transformers import AutoModelForObjectDetection

from conftest import records, tiny_recipe, write_recipe
from helpers.timm_checkpoint import REAL_KEYS, write_sensetime_checkpoint
from hftrain import train as train_mod
from hftrain.models.head_prior import prior_bias
from hftrain.models.pretrained import PretrainedError, PretrainedNotFound, check_pretrained
from hftrain.models.registry import build_model
from hftrain.models.tiny import tiny_config
from hftrain.tools import doctor

NAMES = ["rectangle", "ellipse", "triangle"]


def section(name: str, config: dict | None = None, pretrained: str | None = None) -> SimpleNamespace:
    return SimpleNamespace(name=name, pretrained=pretrained, config=tiny_config(name) if config is None else config,
                           norm="default", norm_scope=["backbone", "fpn", "head"])


@pytest.fixture(scope="module")
def sensetime(tmp_path_factory):
    """(directory, source model): a tiny Deformable DETR with 5 classes in SenseTime's hub layout."""
    directory = tmp_path_factory.mktemp("sensetime")
    return directory, write_sensetime_checkpoint(directory, num_labels=5)


@pytest.fixture
def no_timm(monkeypatch):
    """timm cannot be imported (whether or not it is installed)."""
    monkeypatch.setitem(sys.modules, "timm", None)


def test_the_checkpoint_has_the_published_layout(sensetime):
    directory, _ = sensetime
    from safetensors import safe_open

    with safe_open(directory / "model.safetensors", "pt") as weights:
        keys = set(weights.keys())
    assert set(REAL_KEYS) <= keys
    assert not any("embedder" in key or "stages" in key for key in keys)
    config = json.loads((directory / "config.json").read_text())
    assert config["use_timm_backbone"] is True and config["backbone"] == "resnet50" and "backbone_config" not in config


def test_timm_resnet50_checkpoint_loads_without_timm_and_gives_the_same_outputs(sensetime, no_timm):
    directory, source = sensetime
    names = [f"class{i}" for i in range(5)]  # the checkpoint's own labels: every weight is loaded
    detector = build_model(section("deformable_detr", {}, str(directory)), names)
    model = detector.model.eval()
    assert type(model.model.backbone.model).__name__ == "ResNetBackbone"
    assert "timm resnet50 (out_indices [2, 3, 4]) mapped to transformers ResNet" in detector.loaded
    assert "re-initialised: none" in detector.loaded
    expected, actual = source.state_dict(), model.state_dict()
    assert set(actual) == set(expected)
    assert [key for key in expected if not torch.equal(actual[key], expected[key])] == []
    torch.manual_seed(3)
    pixels, mask = torch.rand(2, 3, 96, 64), torch.ones(2, 96, 64, dtype=torch.long)
    with torch.no_grad():
        ours = model.model.backbone.model(pixels).feature_maps
        theirs = source.model.backbone.model(pixels).feature_maps
        assert len(ours) == 3 and all(torch.equal(a, b) for a, b in zip(ours, theirs))
        out, ref = model(pixel_values=pixels, pixel_mask=mask), source(pixel_values=pixels, pixel_mask=mask)
    torch.testing.assert_close(out.logits, ref.logits)
    torch.testing.assert_close(out.pred_boxes, ref.pred_boxes)


def test_sensetime_layout_trains_through_hftrain_train_without_timm(sensetime, no_timm, shapes_dir, tmp_path):
    """The flagship recipes' checkpoint, as published, through ``hftrain train``: stem and layer1
    stay as loaded, the class head starts at the focal prior, and model/ reloads."""
    directory, source = sensetime
    recipe = tiny_recipe(shapes_dir, tmp_path / "run", model="deformable_detr", train={"epochs": 1, "max_steps": 1})
    recipe["model"].update(config={}, pretrained=str(directory))
    assert train_mod.main([str(write_recipe(tmp_path / "r.yaml", recipe))]) == 0
    steps = records(tmp_path / "run", "step")
    assert [s["step"] for s in steps] == [1] and math.isfinite(steps[0]["loss"])
    log = (tmp_path / "run" / "train.log").read_text()
    assert "timm resnet50 (out_indices [2, 3, 4]) mapped to transformers ResNet (no timm needed)" in log
    assert "re-initialised: class_embed.0 (5 -> 3 classes; class bias -4.595 (prior 0.01))" in log
    trained = AutoModelForObjectDetection.from_pretrained(tmp_path / "run" / "model").state_dict()
    published = source.state_dict()
    backbone = "model.backbone.model."
    stem_and_layer1 = [k for k in published if k.startswith((backbone + "embedder.", backbone + "encoder.stages.0."))]
    later = [k for k in published if k.startswith(backbone + "encoder.stages.") and k.endswith("convolution.weight")
             and k not in stem_and_layer1]
    assert stem_and_layer1 and all(torch.equal(trained[k], published[k]) for k in stem_and_layer1)
    assert later and all(not torch.equal(trained[k], published[k]) for k in later)


def test_timm_and_mapped_backbones_agree_where_timm_is_installed(sensetime):
    pytest.importorskip("timm")
    directory, _ = sensetime
    names = [f"class{i}" for i in range(5)]
    ours = build_model(section("deformable_detr", {}, str(directory)), names).model.eval()
    theirs = AutoModelForObjectDetection.from_pretrained(directory).eval()  # transformers' own timm path
    assert type(theirs.model.backbone.model).__name__ != "ResNetBackbone"
    pixels = torch.rand(2, 3, 96, 64)
    with torch.no_grad():
        a = ours.model.backbone.model(pixels).feature_maps
        b = theirs.model.backbone.model(pixels)
    assert len(a) == len(b) == 3
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-5)


def test_dilated_timm_backbone_without_timm_names_the_checkpoint_and_what_to_do(sensetime, no_timm, tmp_path):
    directory, _ = sensetime
    dc5 = tmp_path / "detr-dc5"
    dc5.mkdir()
    config = json.loads((directory / "config.json").read_text())
    (dc5 / "config.json").write_text(json.dumps({**config, "dilation": True}))
    (dc5 / "model.safetensors").symlink_to(directory / "model.safetensors")
    with pytest.raises(PretrainedError) as err:
        check_pretrained(str(dc5))
    message = str(err.value)
    assert str(dc5) in message and "dilated resnet50" in message and "Install timm" in message


def test_local_directory_without_weights_names_it(sensetime, tmp_path):
    directory, _ = sensetime
    (tmp_path / "config.json").write_text((directory / "config.json").read_text())
    with pytest.raises(PretrainedNotFound, match=f"local directory '{tmp_path}' has no weights file"):
        check_pretrained(str(tmp_path))


def _recipe_with(shapes_dir, tmp_path, pretrained: str) -> dict:
    recipe = tiny_recipe(shapes_dir, tmp_path / "run", model="deformable_detr")
    recipe["model"].update(config={}, pretrained=pretrained)
    recipe["data"]["blacklist"] = "auto"  # would scan every image first
    return recipe


def _data_never_read(*args, **kwargs):
    raise AssertionError("the data was read before the checkpoint was checked")


def test_train_checks_the_checkpoint_before_reading_any_data(shapes_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(train_mod, "load_data", _data_never_read)
    monkeypatch.setattr(train_mod, "materialise_synthetic", _data_never_read)
    path = write_recipe(tmp_path / "r.yaml", _recipe_with(shapes_dir, tmp_path, "no-such-org/no-such-detector"))
    assert train_mod.main([str(path)]) == 2
    err = capsys.readouterr().err
    assert "hub id 'no-such-org/no-such-detector'" in err and "pass the local directory as model.pretrained" in err


def test_doctor_reports_checkpoint_backbone_and_reinitialised_head(sensetime, no_timm, shapes_dir, tmp_path, capsys,
                                                                   monkeypatch):
    directory, _ = sensetime
    recipe = tiny_recipe(shapes_dir, tmp_path / "run", model="deformable_detr")
    recipe["model"].update(config={}, pretrained=str(directory))
    assert doctor.doctor_main([str(write_recipe(tmp_path / "r.yaml", recipe))]) == 0
    out = capsys.readouterr().out
    head, _, rest = out.partition("== data")
    assert "== model weights" in head and f"pretrained: {directory} (local directory; deformable_detr, 5 classes" in head
    assert "backbone timm resnet50 (out_indices [2, 3, 4]) mapped to transformers ResNet" in head
    assert "re-initialised: class_embed.0 (5 -> 3 classes; class bias -4.595 (prior 0.01))" in rest
    # an unloadable checkpoint (a directory without weights): an ERROR before the data is read
    from hftrain.data import loader

    monkeypatch.setattr(loader, "load_data", _data_never_read)
    (tmp_path / "no-weights").mkdir()
    (tmp_path / "no-weights" / "config.json").write_text((directory / "config.json").read_text())
    bad = write_recipe(tmp_path / "bad.yaml", _recipe_with(shapes_dir, tmp_path, str(tmp_path / "no-weights")))
    assert doctor.doctor_main([str(bad)]) == 1
    out = capsys.readouterr().out
    assert f"ERROR: model.pretrained: local directory '{tmp_path / 'no-weights'}' has no weights file" in out
    assert "the data was not read" in out


# ---------------------------------------------------------------------------- class-bias prior


def _save_tiny(name: str, tmp_path, classes: int, **extra) -> str:
    torch.manual_seed(0)
    source = build_model(section(name, {**tiny_config(name), **extra}), [f"c{i}" for i in range(classes)])
    source.save(tmp_path / name)
    return str(tmp_path / name)


@pytest.mark.parametrize("name, extra, probability", [
    ("deformable_detr", {}, 0.01),
    ("deformable_detr", {"with_box_refine": True, "two_stage": True}, 0.01),
    ("conditional_detr", {}, 0.01),
    ("rt_detr", {}, 1 / 4),  # no initializer_bias_prior_prob: 1 / (K + 1), K = 3
    ("rt_detr", {"initializer_bias_prior_prob": 0.01}, 0.01),
])
def test_reinitialised_class_heads_get_the_familys_prior(tmp_path, name, extra, probability):
    detector = build_model(section(name, {}, _save_tiny(name, tmp_path, 7, **extra)), NAMES)
    bias = prior_bias(probability)
    heads = {n: m for n, m in detector.model.named_modules() if isinstance(m, torch.nn.Linear) and m.out_features == 3}
    assert heads  # every linear layer with one output per class: the class heads (d_model is 32)
    for head_name, head in heads.items():
        assert torch.allclose(head.bias.detach(), torch.full((3,), bias)), head_name
    assert f"7 -> 3 classes; class bias {bias:.3f}" in detector.loaded


def test_from_scratch_deformable_detr_starts_at_the_prior_and_detr_has_none(tmp_path):
    deformable = build_model(section("deformable_detr"), NAMES)
    torch.testing.assert_close(deformable.model.class_embed[0].bias.detach(), torch.full((3,), prior_bias(0.01)))
    assert "class bias -4.595 (prior 0.01)" in deformable.loaded
    detr = build_model(section("detr", {}, _save_tiny("detr", tmp_path, 7)), NAMES)  # softmax: no prior
    assert "class bias" not in detr.loaded and "class_labels_classifier" in detr.loaded


# ---------------------------------------------------------------------------- DETR's backbone freezing


@pytest.mark.parametrize("name", ["detr", "deformable_detr"])
def test_pretrained_detr_backbones_freeze_stem_and_layer1(tmp_path, name):
    """transformers 5.24's ``from_pretrained`` hands back a backbone that trains entirely."""
    detector = build_model(section(name, {}, _save_tiny(name, tmp_path, 3)), NAMES)
    backbone = detector.model.model.backbone.model
    trainable = {n.split(".layers")[0] for n, p in backbone.named_parameters() if p.requires_grad}
    assert trainable == {"encoder.stages.1", "encoder.stages.2", "encoder.stages.3"}
