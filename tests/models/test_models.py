"""Model builders: pretrained loading through the users' path, labels, errors, fp32 criterion."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from transformers import RTDetrConfig, RTDetrForObjectDetection

from conftest import TINY_RT_DETR
from hftrain.models.criterion import run_loss_in_fp32
from hftrain.models.detr_family import PretrainedNotFound
from hftrain.models.registry import build_model

NAMES = ["rectangle", "ellipse", "triangle"]


def model_cfg(**kwargs):
    base = {"name": "rt_detr", "pretrained": None, "config": dict(TINY_RT_DETR), "norm": "default",
            "norm_scope": ["backbone", "fpn", "head"]}
    base.update(kwargs)
    return SimpleNamespace(**base)


def labels(batch: int = 2):
    return [{"class_labels": torch.tensor([0, 2]), "boxes": torch.tensor([[0.3, 0.3, 0.2, 0.2], [0.7, 0.6, 0.3, 0.2]])}
            for _ in range(batch)]


def test_from_scratch_uses_the_recipe_labels_and_config():
    detector = build_model(model_cfg(), NAMES)
    config = detector.model.config
    assert config.num_labels == 3 and config.id2label == dict(enumerate(NAMES))
    assert config.d_model == 32 and config.num_queries == 20
    assert detector.uses_pixel_mask is False and detector.pad_to_multiple == 32


def test_pretrained_local_directory_keeps_weights_and_reinitialises_mismatched_heads(tmp_path):
    kwargs = dict(TINY_RT_DETR)
    backbone = {"model_type": "rt_detr_resnet", **kwargs.pop("backbone_config")}
    source = RTDetrForObjectDetection(RTDetrConfig(**kwargs, backbone_config=backbone, num_labels=5))
    source.save_pretrained(tmp_path / "pretrained")
    detector = build_model(model_cfg(pretrained=str(tmp_path / "pretrained"), config={}), NAMES)
    loaded = detector.model
    assert loaded.config.num_labels == 3 and loaded.config.id2label[2] == "triangle"
    # the backbone comes from the saved weights...
    saved_backbone = dict(source.model.backbone.named_parameters())
    for name, param in loaded.model.backbone.named_parameters():
        assert torch.equal(param, saved_backbone[name]), name
    # ...the class head is new, sized for the recipe's 3 classes
    assert loaded.model.enc_score_head.weight.shape[0] == 3
    assert source.model.enc_score_head.weight.shape[0] == 5


def test_missing_pretrained_names_the_id_and_asks_for_a_local_directory(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(PretrainedNotFound) as err:
        build_model(model_cfg(pretrained="no-such-org/no-such-detector", config={}), NAMES)
    message = str(err.value)
    assert "'no-such-org/no-such-detector'" in message and "hub id" in message
    assert "local directory" in message


def test_criterion_runs_in_fp32_under_bf16_autocast():
    model = build_model(model_cfg(), NAMES, fp32_criterion=False).model
    original = model.loss_function
    seen = {}

    def spy(*args, **kwargs):  # sees exactly what transformers' criterion receives
        seen["dtypes"] = {a.dtype for a in args if torch.is_tensor(a) and a.is_floating_point()}
        seen["autocast"] = torch.is_autocast_enabled("cpu")
        return original(*args, **kwargs)

    model.loss_function = spy
    run_loss_in_fp32(model)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        outputs = model(pixel_values=torch.rand(2, 3, 64, 64), labels=labels())
    assert outputs.logits.dtype == torch.bfloat16  # the network itself ran in bf16
    assert seen["dtypes"] == {torch.float32} and seen["autocast"] is False
    assert outputs.loss.dtype == torch.float32 and torch.isfinite(outputs.loss)


def test_sigmoid_topk_matches_the_processor_and_keeps_100_pairs():
    from transformers.models.deformable_detr.image_processing_pil_deformable_detr import DeformableDetrImageProcessorPil

    from hftrain.models.postprocess import sigmoid_topk

    torch.manual_seed(0)
    outputs = SimpleNamespace(logits=torch.randn(2, 50, 3), pred_boxes=torch.rand(2, 50, 4) * 0.5 + 0.25)
    sizes = torch.tensor([[100.0, 200.0], [64.0, 32.0]])
    ours = sigmoid_topk(outputs, sizes)
    assert all(len(r["scores"]) == 100 for r in ours)  # RT-DETR's processor would keep 50 (num_queries)
    reference = DeformableDetrImageProcessorPil().post_process_object_detection(outputs, threshold=0.0,
                                                                                target_sizes=sizes, top_k=100)
    for a, b in zip(ours, reference):
        assert torch.allclose(a["scores"], b["scores"]) and torch.equal(a["labels"], b["labels"])
        assert torch.allclose(a["boxes"], b["boxes"], atol=1e-4)
