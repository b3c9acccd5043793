"""Every model family of the registry: tiny configs train and evaluate through the real loop,
pretrained directories load, DDP's find_unused_parameters matches what really gets no gradient,
post-processing agrees with transformers, and the DETR-family loss under 2 processes equals the
loss of one process on all the images."""

from __future__ import annotations

import json
import math
import os
import subprocess
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from accelerate.state import AcceleratorState

from helpers.box_count_case import FAMILIES, PER_PROCESS_MEANS, build, images_and_labels, loss_terms
from conftest import PYTHON, REPO, records, tiny_recipe, write_recipe
from hftrain.models.registry import MODELS, build_model
from hftrain.models.tiny import TINY_CONFIGS, tiny_config
from hftrain.recipe import load_recipe
from hftrain.train import train

NAMES = ["rectangle", "ellipse", "triangle"]


def case(name: str, extra: dict | None = None, label: str | None = None):
    """A (family, extra model.config) test case named after both."""
    extra = extra or {}
    return pytest.param(name, extra, id="-".join([name, label or "+".join(extra) or "default"]))


def section(name: str, config: dict | None = None, pretrained: str | None = None) -> SimpleNamespace:
    """The recipe's model section as the builders receive it."""
    return SimpleNamespace(name=name, pretrained=pretrained, config=tiny_config(name) if config is None else config,
                           norm="default", norm_scope=["backbone", "fpn", "head"])


def labels(batch: int = 2) -> list[dict]:
    return [{"class_labels": torch.tensor([0, 2]), "boxes": torch.tensor([[0.3, 0.3, 0.2, 0.2], [0.7, 0.6, 0.3, 0.2]])}
            for _ in range(batch)]


def inputs(detector, batch: int = 2, size: int = 64) -> dict:
    torch.manual_seed(1)
    values = {"pixel_values": torch.rand(batch, 3, size, size)}
    if detector.uses_pixel_mask:
        values["pixel_mask"] = torch.ones(batch, size, size, dtype=torch.long)
    return values


def train_tiny(tmp_path, shapes_dir, name: str, run: str, config: dict, pretrained: str | None = None):
    """Two optimizer steps and an evaluation through the loop; returns (metrics, run directory)."""
    AcceleratorState._reset_state(reset_partial_state=True)
    recipe = tiny_recipe(shapes_dir, tmp_path / run, model=name, train={"epochs": 1, "max_steps": 2})
    recipe["model"].update(config=config, pretrained=pretrained)
    metrics = train(load_recipe(write_recipe(tmp_path / f"{run}.yaml", recipe)))
    return metrics, tmp_path / run


def test_every_registry_family_has_a_tiny_config():
    assert set(TINY_CONFIGS) == set(MODELS)
    with pytest.raises(KeyError, match="no tiny config for 'yolo'"):
        tiny_config("yolo")


@pytest.mark.parametrize("name, extra", [
    *[case(name) for name in MODELS],
    case("deformable_detr", {"with_box_refine": True}),
    case("deformable_detr", {"with_box_refine": True, "two_stage": True, "auxiliary_loss": True}),
])
def test_tiny_family_trains_two_steps_and_evaluates(tmp_path, shapes_dir, name, extra):
    metrics, run_dir = train_tiny(tmp_path, shapes_dir, name, "run", {**tiny_config(name), **extra})
    steps = records(run_dir, "step")
    assert [s["step"] for s in steps] == [1, 2]
    assert all(math.isfinite(s["loss"]) and s["grad_norm"] > 0 for s in steps)
    assert metrics and all(math.isfinite(v) for v in metrics.values())
    saved = json.loads((run_dir / "model" / "config.json").read_text())
    for key, value in extra.items():  # the options reached the model that trained
        assert saved[key] == value


@pytest.mark.parametrize("name", [n for n in MODELS if n != "retinanet"])  # RetinaNet: tests/models/test_retinanet*.py
def test_pretrained_directory_loads_every_weight_and_trains(tmp_path, shapes_dir, name):
    torch.manual_seed(0)
    source = build_model(section(name), NAMES)
    source.save(tmp_path / "pretrained")  # save_pretrained of weights, config and image processor
    torch.manual_seed(1)  # a different random init: only loading can make the weights equal
    loaded = build_model(section(name, config={}, pretrained=str(tmp_path / "pretrained")), NAMES).model
    expected = source.model.state_dict()
    actual = loaded.state_dict()
    assert set(actual) == set(expected)
    assert all(torch.equal(actual[key], expected[key]) for key in expected), [
        key for key in expected if not torch.equal(actual[key], expected[key])][:5]
    assert loaded.config.id2label == dict(enumerate(NAMES))
    metrics, run_dir = train_tiny(tmp_path, shapes_dir, name, "from_pretrained", {}, str(tmp_path / "pretrained"))
    assert [s["step"] for s in records(run_dir, "step")] == [1, 2] and "map" in metrics


_OUT_STAGE3 = {"out_features": ["stage3"]}
_RT_STAGES_1_TO_3 = {"encoder_in_channels": [32, 64, 128], "feat_strides": [4, 8, 16],
                     "backbone_config": {**TINY_CONFIGS["rt_detr"]["backbone_config"],
                                         "out_features": ["stage1", "stage2", "stage3"]}}


@pytest.mark.parametrize("name, extra", [
    case("detr"),
    case("detr", {"auxiliary_loss": True}),
    case("detr", {"backbone_config": {**TINY_CONFIGS["detr"]["backbone_config"], **_OUT_STAGE3}}, "out_stage3"),
    case("conditional_detr"),
    case("conditional_detr", {"auxiliary_loss": True}),
    case("deformable_detr"),
    case("deformable_detr", {"auxiliary_loss": True}),
    case("deformable_detr", {"with_box_refine": True}),
    case("deformable_detr", {"with_box_refine": True, "two_stage": True}),
    case("deformable_detr", {"with_box_refine": True, "two_stage": True, "auxiliary_loss": True}),
    case("rt_detr"),
    case("rt_detr", {"auxiliary_loss": False}),
    case("rt_detr", _RT_STAGES_1_TO_3, "out_stages1-3"),
    case("rt_detr_v2"),
    case("rt_detr_v2", {"auxiliary_loss": False}),
    case("d_fine"),
    case("d_fine", {"auxiliary_loss": False}),
    case("retinanet"),
])
def test_find_unused_parameters_is_set_exactly_where_a_parameter_gets_no_gradient(name, extra):
    torch.manual_seed(0)
    detector = build_model(section(name, {**tiny_config(name), **extra}), NAMES)
    model = detector.model.train()
    model(**inputs(detector), labels=labels()).loss.backward()
    no_gradient = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert detector.find_unused_parameters == bool(no_gradient), no_gradient


@pytest.mark.parametrize("name", ["detr", "conditional_detr", "deformable_detr"])
def test_detr_backbones_train_resnet_layer2_to_4_like_the_original(name):
    """transformers 5.23 freezes its whole ResNet in these models; the builders unfreeze layer2-4."""
    detector = build_model(section(name), NAMES)
    backbone = detector.model.model.backbone.model
    trainable = {n.split(".layers")[0] for n, p in backbone.named_parameters() if p.requires_grad}
    assert trainable == {"encoder.stages.1", "encoder.stages.2", "encoder.stages.3"}
    detector.model.train()
    detector.model(**inputs(detector), labels=labels()).loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in backbone.parameters() if p.requires_grad)


def _processor_reference(name, detector, outputs, sizes):
    """The family's own transformers post-processing (threshold 0: every candidate)."""
    processor = detector.image_processor
    if name == "detr":
        return processor.post_process_object_detection(outputs, threshold=0.0, target_sizes=sizes)
    if name in ("conditional_detr", "deformable_detr"):
        return processor.post_process_object_detection(outputs, threshold=0.0, target_sizes=sizes, top_k=100)
    return processor.post_process_object_detection(outputs, threshold=0.0, target_sizes=sizes, use_focal_loss=True)


def _canonical(scores, labels, boxes):
    """Detections sorted by score (best first), ties broken by label, then x1, y1, x2, y2."""
    keys = [boxes[:, i].numpy() for i in (3, 2, 1, 0)] + [labels.numpy(), -scores.numpy()]
    order = torch.from_numpy(np.lexsort(keys))
    return scores[order], labels[order], boxes[order]


@pytest.mark.parametrize("name", FAMILIES)
def test_postprocess_gives_absolute_xyxy_boxes_like_the_familys_processor(name):
    torch.manual_seed(0)
    detector = build_model(section(name), NAMES)
    model = detector.model.eval()
    with torch.no_grad():
        outputs = model(**inputs(detector))
    sizes = torch.tensor([[100, 200], [64, 32]])  # (height, width), not square: x and y scale differently
    ours = detector.postprocess(outputs, sizes)
    reference = _processor_reference(name, detector, outputs, sizes)
    queries, classes = outputs.logits.shape[1:]
    for result, expected, (height, width) in zip(ours, reference, sizes.tolist()):
        # DETR: one detection per query; focal families: every (query, class) pair, at most 100
        assert len(result["scores"]) == min(100, queries if name == "detr" else queries * classes)
        assert torch.all(result["scores"][:-1] >= result["scores"][1:])  # best first
        # transformers keeps all queries unsorted (DETR) or only num_queries pairs (RT-DETR family).
        # Equal scores may come in either order (an untrained model gives several queries the same
        # score): both sides are put in one canonical order, score first, then label and box.
        n = len(expected["scores"])
        ours_sorted = _canonical(result["scores"][:n], result["labels"][:n], result["boxes"][:n])
        expected_sorted = _canonical(expected["scores"], expected["labels"], expected["boxes"].float())
        torch.testing.assert_close(ours_sorted[0], expected_sorted[0])
        assert torch.equal(ours_sorted[1], expected_sorted[1])
        torch.testing.assert_close(ours_sorted[2], expected_sorted[2])
        centre_x = (result["boxes"][:, 0] + result["boxes"][:, 2]) / 2
        centre_y = (result["boxes"][:, 1] + result["boxes"][:, 3]) / 2
        assert centre_x.max() <= width and centre_y.max() <= height and centre_x.max() > 1  # absolute pixels


def test_unknown_model_config_keys_are_refused_with_the_family_config_named():
    with pytest.raises(ValueError, match=r"unknown DetrConfig settings \['num_querys'\]"):
        build_model(section("detr", {**tiny_config("detr"), "num_querys": 5}), NAMES)
    with pytest.raises(ValueError, match=r"unknown DFineConfig settings \['with_box_refinement'\]"):
        build_model(section("d_fine", {**tiny_config("d_fine"), "with_box_refinement": True}), NAMES)


def test_two_processes_normalise_the_loss_by_the_box_count_of_all_processes(tmp_path):
    """The same 4 images, split over 2 gloo processes (4 and 6 boxes), against one process on all
    of them: the mean over processes of each box-normalised loss term (what DDP's gradient
    averaging optimises) equals the one-process term. transformers' own path does not."""
    out = tmp_path / "terms.json"
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "TRANSFORMERS_VERBOSITY": "error"}
    proc = subprocess.run([PYTHON, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           "tests/helpers/box_count_worker.py", str(out)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    processes = json.loads(out.read_text())
    pixels, targets = images_and_labels()
    for name in FAMILIES:
        detector = build(name)
        reference = loss_terms(detector, detector.model, pixels, targets)  # one process, all images
        skipped = PER_PROCESS_MEANS.get(name, ())
        compared = [k for k in reference if not any(k.startswith(s) for s in skipped) and (k != "loss" or not skipped)]
        assert len(compared) >= 3
        for kind, must_match in (("hftrain", True), ("transformers", False)):
            mean = {k: sum(p[name][kind][k] for p in processes) / len(processes) for k in compared}
            matches = [k for k in compared if math.isclose(mean[k], reference[k], rel_tol=1e-5, abs_tol=1e-6)]
            if must_match:
                assert matches == compared, (name, {k: (mean[k], reference[k]) for k in compared if k not in matches})
            else:  # transformers 5.23: sum / N**2 (DETR, Conditional, Deformable) or per-process counts
                box_terms = [k for k in compared if "bbox" in k or "giou" in k]
                assert not set(box_terms) & set(matches), (
                    f"{name}: transformers now normalises like one process; hftrain/models/box_count.py "
                    "may no longer be needed")
