"""``hftrain export --format onnx``: every registry family exports, ONNX Runtime matches PyTorch
on real images, the JSON beside the file says how to use it, and what cannot export says why."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml

from conftest import tiny_recipe
from helpers.fixtures_path import fixtures_dir
from hftrain.models.registry import MODELS, build_model
from hftrain.models.tiny import tiny_config
from hftrain.tools.export import ExportError, export, export_main
from hftrain.tools.onnx_parity import Parity

NAMES = ["rectangle", "ellipse", "triangle"]


def saved_tiny(directory, name: str, threshold: float | None = None):
    """A tiny model of family ``name`` saved as training saves ``best/``. Its weights get noise:
    untrained heads give many exactly equal scores (D-FINE's encoder score head starts at zero),
    and the order of equal scores in a top-k is up to each runtime, as it never is after training."""
    torch.manual_seed(0)
    section = SimpleNamespace(name=name, pretrained=None, config=tiny_config(name), norm="default",
                              norm_scope=["backbone", "fpn", "head"])
    detector = build_model(section, NAMES)
    with torch.no_grad():
        for parameter in detector.model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.05)
    if threshold is not None:
        detector.model.config.hftrain_score_threshold = threshold
    detector.save(directory)
    return directory


def images() -> list[str]:
    folder = fixtures_dir() / "images"
    return [str(folder / "hopper.jpg"), str(folder / "hopper_gray.jpg")]


OWN_TESTS = {"deformable_detr"}
"""Exported by the two tests below, a static batch from a run directory and a dynamic batch."""


def check_parity(info: dict) -> None:
    parity = info["parity"]
    assert parity["passed"] and parity["detections_compared"] > 0
    assert parity["max_abs_diff_scores"] < 1e-4 and parity["max_abs_diff_boxes_px"] < 1e-2
    assert parity["max_abs_diff_logits"] < 1e-3 and parity["max_abs_diff_pred_boxes"] < 1e-3


@pytest.mark.parametrize("name", sorted(set(MODELS) - set(OWN_TESTS)))
def test_every_family_exports_and_onnx_runtime_matches_pytorch(tmp_path, name):
    model_dir = saved_tiny(tmp_path / "best", name)
    info = export(str(model_dir), str(tmp_path / "out" / "model.onnx"), size="64", images=images()[:1],
                  print_=lambda line: None)
    assert (tmp_path / "out" / "model.onnx").stat().st_size > 10_000
    assert json.loads((tmp_path / "out" / "model.json").read_text()) == info
    check_parity(info)
    assert info["class_names"] == NAMES and info["image_size"] == {"height": 64, "width": 64}
    assert ("pixel_mask" in info["inputs"]) == (name in ("detr", "conditional_detr", "deformable_detr"))


def test_dynamic_batch_runs_several_images_at_once_with_the_padded_mask(tmp_path):
    """Deformable DETR (multi-scale deformable attention, transformers #22330) with a free batch:
    two images of another aspect ratio fitted into 48x64 and padded, checked in one batch."""
    import onnxruntime

    model_dir = saved_tiny(tmp_path / "best", "deformable_detr", threshold=0.37)
    (model_dir / "preprocessor_config.json").unlink()  # the size then comes from --size only
    lines = []
    info = export(str(model_dir), None, size="48x64", images=images(), dynamic_batch=True, print_=lines.append)
    check_parity(info)
    assert info["score_threshold"] == 0.37
    assert info["inputs"]["pixel_values"]["shape"] == ["batch", 3, 48, 64]
    assert info["mean"] == [0.485, 0.456, 0.406] and info["std"] == [0.229, 0.224, 0.225]
    assert any(line.startswith("parity on 2 images") for line in lines)
    session = onnxruntime.InferenceSession(str(model_dir / "model.onnx"))
    feed = {"pixel_values": np.zeros((3, 3, 48, 64), np.float32), "pixel_mask": np.ones((3, 48, 64), np.int64)}
    scores, boxes = session.run(["scores", "boxes"], feed)
    assert scores.shape == (3, 60) and boxes.shape == (3, 60, 4)  # 20 queries x 3 classes


def test_a_run_directory_exports_at_the_recipe_size_with_its_validation_images(tmp_path, shapes_dir, capsys):
    """Deformable DETR with a static batch: the TorchScript exporter folded its reference points
    into float64 constants, and ONNX Runtime had no GridSample for the float64 grid."""
    run = tmp_path / "run"
    saved_tiny(run / "best", "deformable_detr")
    (run / "recipe.yaml").write_text(yaml.safe_dump(tiny_recipe(shapes_dir, run, model="deformable_detr")))
    assert export_main([str(run), "--format", "onnx"]) == 0
    out = capsys.readouterr().out
    assert f"exported {run / 'export' / 'best.onnx'}" in out and "input 1x3x64x64 + pixel_mask" in out
    info = json.loads((run / "export" / "best.json").read_text())
    check_parity(info)
    assert len(info["parity"]["images"]) == 3 and info["parity"]["images"][0].startswith(str(shapes_dir / "val"))
    assert info["score_threshold"] is None and "0.5" in info["score_threshold_source"]


def test_what_cannot_export_says_why_without_a_trace(tmp_path, capsys):
    other = tmp_path / "yolos"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model_type": "yolos", "id2label": {"0": "a"}}))
    assert export_main([str(other)]) == 1
    assert capsys.readouterr().err.strip() == (
        f"hftrain export: {other}: model_type 'yolos' is not an hftrain family; ONNX export knows "
        "conditional_detr, d_fine, deformable_detr, detr, hftrain_retinanet, rt_detr, rt_detr_v2")
    (other / "config.json").write_text(json.dumps({"model_type": "deformable_detr", "id2label": {"0": "a"}}))
    with pytest.raises(ExportError, match="--opset 13: deformable_detr's deformable attention needs GridSample"):
        export(str(other), opset=13)
    retinanet = saved_tiny(tmp_path / "retinanet", "retinanet")
    with pytest.raises(ExportError, match="--exporter dynamo: RetinaNet's per-level candidate counts"):
        export(str(retinanet), exporter="dynamo")
    with pytest.raises(ExportError, match="neither a run directory"):
        export(str(tmp_path / "missing"))


def test_parity_pairs_rows_that_came_out_in_another_order_and_fails_on_real_differences():
    boxes = np.array([[10.0, 10, 20, 20], [30, 30, 40, 40]])
    reference = {"scores": np.array([0.9, 0.9]), "labels": np.array([0, 1]), "boxes": boxes}
    swapped = {"scores": np.array([0.9, 0.9]), "labels": np.array([1, 0]), "boxes": boxes[::-1]}
    parity = Parity()
    parity.add_detections(reference, swapped, 64.0)
    assert parity.scores == 0 and parity.boxes_px == 0 and parity.failures(1e-3, 64.0) == []
    moved = dict(swapped, boxes=boxes[::-1] + np.array([0, 0, 0, 2.0]))
    parity.add_detections(reference, moved, 64.0)
    assert parity.boxes_px == 2.0 and parity.failures(1e-3, 64.0) == ["boxes differ by 2 px > 0.001 x 64 px"]
    relabelled = dict(swapped, labels=np.array([2, 2]))
    parity.add_detections(reference, relabelled, 64.0)
    assert "2 PyTorch detections have a label no ONNX detection has" in parity.failures(1e-3, 64.0)
    logits = np.array([[1.0, -1.0], [0.5, 0.2]])
    parity = Parity()
    parity.add_raw(logits, logits[::-1], boxes / 64, boxes[::-1] / 64, paired=True)
    assert parity.logits == 0 and parity.pred_boxes == 0
    parity.add_raw(logits, logits[::-1], boxes / 64, boxes[::-1] / 64, paired=False)
    assert parity.logits == 1.2  # |-1 - 0.2|: row by row, the swap is a difference
