"""RetinaNet: anchors, matching, box coding, loss, post-processing, tiny training, save/load."""

from __future__ import annotations

import math
import types

import pytest
import torch
import transformers

from hftrain.models.nms import box_iou
from hftrain.models.anchors import cell_anchors, decode_boxes, encode_boxes, match_anchors
from hftrain.models.retinanet import RetinaNetObjectDetectionOutput, register_retinanet
from hftrain.models.retinanet_builder import build_retinanet

TINY_RESNET = {
    "depths": [1, 1, 1, 1],
    "hidden_sizes": [16, 32, 64, 64],
    "embedding_size": 16,
    "layer_type": "basic",
}



def _cfg(norm: str = "default", scope: tuple[str, ...] = ("backbone", "fpn", "head"), pretrained=None, **config):
    return types.SimpleNamespace(
        name="retinanet",
        pretrained=pretrained,
        config={**TINY_RESNET, "fpn_channels": 32, "num_head_convs": 1, **config},
        norm=norm,
        norm_scope=list(scope),
    )


def _rectangles(size: int = 64) -> tuple[torch.Tensor, list[dict[str, torch.Tensor]], list[torch.Tensor]]:
    """Two images, each with one solid rectangle (red = class 0, green = class 1), normalised."""
    images = torch.zeros(2, 3, size, size)
    pixel_boxes = [(10, 14, 42, 50), (20, 8, 56, 36)]
    labels, gt = [], []
    for i, (x1, y1, x2, y2) in enumerate(pixel_boxes):
        images[i, i, y1:y2, x1:x2] = 1.0
        cx, cy, w, h = (x1 + x2) / 2 / size, (y1 + y2) / 2 / size, (x2 - x1) / size, (y2 - y1) / size
        labels.append({"class_labels": torch.tensor([i]), "boxes": torch.tensor([[cx, cy, w, h]])})
        gt.append(torch.tensor([[x1, y1, x2, y2]], dtype=torch.float32))
    mean = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
    std = torch.tensor([0.229, 0.224, 0.225])[:, None, None]
    return (images - mean) / std, labels, gt


def test_anchor_sizes_follow_strides() -> None:
    model = build_retinanet(_cfg(), ["a"]).model
    assert model.strides == [8, 16, 32, 64, 128]
    anchors = model.anchors([(2, 2)] * 5, torch.device("cpu"))
    for level, stride in enumerate(model.strides):
        per_location = anchors[level][:9]
        w = per_location[:, 2] - per_location[:, 0]
        h = per_location[:, 3] - per_location[:, 1]
        sizes = torch.sqrt(w * h).view(3, 3)  # (scale, ratio)
        expected = torch.tensor([32.0 * 2**level * 2 ** (i / 3) for i in range(3)])
        torch.testing.assert_close(sizes, expected[:, None].expand(3, 3))
        torch.testing.assert_close((h / w).view(3, 3), torch.tensor([0.5, 1.0, 2.0]).expand(3, 3))
        # the next location is one stride to the right (offset 0: centres at i * stride)
        centre = (anchors[level][9, :2] + anchors[level][9, 2:]) / 2
        torch.testing.assert_close(centre, torch.tensor([float(stride), 0.0]))
    assert cell_anchors(8.0, 1, [1.0]).tolist() == [[-4.0, -4.0, 4.0, 4.0]]


def test_matching_thresholds_ignore_band_and_low_quality() -> None:
    iou = torch.tensor(
        [
            [0.7, 0.45, 0.1, 0.0, 0.0],
            [0.0, 0.0, 0.3, 0.35, 0.2],  # best anchor only 0.35: rescued by a low-quality match
        ]
    )
    matched, label = match_anchors(iou, 0.5, 0.4, allow_low_quality=True)
    assert label.tolist() == [1, -1, 0, 1, 0]
    assert matched[[0, 3]].tolist() == [0, 1]
    _, strict = match_anchors(iou, 0.5, 0.4, allow_low_quality=False)
    assert strict.tolist() == [1, -1, 0, 0, 0]
    _, none = match_anchors(torch.zeros(0, 5), 0.5, 0.4, allow_low_quality=True)
    assert none.tolist() == [0] * 5


def test_box_encoding_round_trip() -> None:
    anchors = torch.tensor([[0.0, 0.0, 32.0, 32.0], [10.0, 20.0, 30.0, 80.0]])
    boxes = torch.tensor([[4.0, 2.0, 40.0, 30.0], [12.0, 18.0, 20.0, 100.0]])
    deltas = encode_boxes(boxes, anchors, (1.0, 1.0, 1.0, 1.0))
    torch.testing.assert_close(deltas[0], torch.tensor([6 / 32, 0.0, math.log(36 / 32), math.log(28 / 32)]))
    torch.testing.assert_close(decode_boxes(deltas, anchors, (1.0, 1.0, 1.0, 1.0)), boxes)
    weights = (10.0, 10.0, 5.0, 5.0)
    weighted = encode_boxes(boxes, anchors, weights)
    torch.testing.assert_close(weighted[0], deltas[0] * torch.tensor(weights))
    torch.testing.assert_close(decode_boxes(weighted, anchors, weights), boxes)


def test_loss_is_normalised_by_positive_anchors() -> None:
    torch.manual_seed(0)
    model = build_retinanet(_cfg(), ["a", "b"]).model
    x, labels, _ = _rectangles()
    single = model(pixel_values=x[:1], labels=labels[:1]).loss_dict
    # the same image twice: twice the summed loss, twice the positives -> the same loss
    double = model(pixel_values=x[:1].repeat(2, 1, 1, 1), labels=labels[:1] * 2).loss_dict
    for key in ("loss_cls", "loss_box"):
        torch.testing.assert_close(double[key], single[key], rtol=1e-4, atol=1e-6)
    no_objects = {"class_labels": torch.zeros(0, dtype=torch.long), "boxes": torch.zeros(0, 4)}
    empty = model(pixel_values=x[:1], labels=[no_objects])
    assert empty.loss_dict["loss_box"].item() == 0.0
    assert torch.isfinite(empty.loss)
    # smooth-L1 vs L1 is a real switch
    l1 = build_retinanet(_cfg(box_loss="l1"), ["a", "b"]).model
    l1.load_state_dict(model.state_dict())
    assert not torch.allclose(l1(pixel_values=x[:1], labels=labels[:1]).loss_dict["loss_box"], single["loss_box"])


def test_postprocess_threshold_nms_topk_and_scaling() -> None:
    model = build_retinanet(_cfg(topk_candidates=2, detections_per_image=3), ["a", "b"]).model
    # level 0 has anchors 0-2, level 1 anchors 3-4 (the other levels are empty)
    logits = torch.full((1, 5, 2), -20.0)
    logits[0, 0, 0] = 3.0  # kept
    logits[0, 1, 1] = 2.5  # same box as anchor 0 but another class: kept
    logits[0, 1, 0] = 2.0  # third best (anchor, class) pair of level 0: cut by topk_candidates=2
    logits[0, 2, 0] = 0.5  # fourth: cut too
    logits[0, 3, 0] = 0.0  # kept (sigmoid 0.5)
    logits[0, 4, 0] = -1.0  # overlaps anchor 3's box, same class, lower score: suppressed by NMS
    logits[0, 3, 1] = -3.5  # sigmoid 0.029 < 0.05: below the score threshold
    boxes = torch.tensor(
        [[0.5, 0.5, 0.2, 0.4], [0.5, 0.5, 0.2, 0.4], [0.1, 0.1, 0.1, 0.1], [0.9, 0.9, 0.4, 0.4], [0.88, 0.9, 0.4, 0.4]]
    )
    outputs = RetinaNetObjectDetectionOutput(
        logits=logits, pred_boxes=boxes[None], anchors_per_level=torch.tensor([3, 2, 0, 0, 0])
    )
    (result,) = model.postprocess(outputs, torch.tensor([[100, 200]]))
    assert result["labels"].tolist() == [0, 1, 0]
    torch.testing.assert_close(result["scores"], torch.sigmoid(torch.tensor([3.0, 2.5, 0.0])))
    # normalised cxcywh -> absolute xyxy with (height 100, width 200); the last box is clipped
    torch.testing.assert_close(
        result["boxes"],
        torch.tensor([[80.0, 30.0, 120.0, 70.0], [80.0, 30.0, 120.0, 70.0], [140.0, 70.0, 200.0, 100.0]]),
    )
    model.config.detections_per_image = 2
    assert model.postprocess(outputs, torch.tensor([[100, 200]]))[0]["labels"].tolist() == [0, 1]
    model.config.score_threshold = 0.6
    assert model.postprocess(outputs, torch.tensor([[100, 200]]))[0]["labels"].tolist() == [0, 1]
    assert len(model.postprocess(outputs, torch.tensor([[100, 200]]), score_threshold=0.95)[0]["labels"]) == 1


def test_tiny_training_fits_rectangles() -> None:
    torch.manual_seed(0)
    detector = build_retinanet(_cfg(), ["red", "green"])
    model = detector.model
    x, labels, gt = _rectangles()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0)
    losses = []
    for _ in range(40):
        loss = model(pixel_values=x, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.1 * losses[0]
    model.eval()
    with torch.no_grad():
        results = detector.postprocess(model(pixel_values=x), torch.tensor([[64, 64], [64, 64]]))
    for i, result in enumerate(results):
        assert result["labels"][0].item() == i  # the best detection has the right class
        assert box_iou(result["boxes"][:1], gt[i]).item() > 0.5
        assert result["scores"][0] > 0.5


@pytest.mark.parametrize("norm", ["default", "cbn", "frozenbn", "gn"])
def test_save_and_auto_load_give_identical_outputs(tmp_path, norm: str) -> None:
    torch.manual_seed(0)
    detector = build_retinanet(_cfg(norm=norm, cbn_options={"buffer_num": 2}), ["a", "b"])
    model = detector.model
    x, labels, _ = _rectangles()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    for _ in range(2):  # move weights and running statistics away from their initial values
        optimizer.zero_grad()
        model(pixel_values=x, labels=labels).loss.backward()
        optimizer.step()
    model.eval()
    detector.save(tmp_path)
    register_retinanet()
    loaded = transformers.AutoModelForObjectDetection.from_pretrained(tmp_path).eval()
    assert type(loaded) is type(model)
    assert loaded.config.norm == norm
    with torch.no_grad():
        before, after = model(pixel_values=x), loaded(pixel_values=x)
    torch.testing.assert_close(after.logits, before.logits, rtol=0, atol=0)
    torch.testing.assert_close(after.pred_boxes, before.pred_boxes, rtol=0, atol=0)


@pytest.mark.parametrize("norm", ["default", "frozenbn"])
def test_pretrained_backbone_from_local_directory(tmp_path, norm: str) -> None:
    torch.manual_seed(1)
    resnet = transformers.ResNetForImageClassification(transformers.ResNetConfig(**TINY_RESNET, num_labels=3))
    with torch.no_grad():
        bn = resnet.resnet.embedder.embedder.normalization
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
    resnet.save_pretrained(tmp_path)
    cfg = _cfg(norm=norm, pretrained=str(tmp_path))
    cfg.config = {"fpn_channels": 32, "num_head_convs": 1}
    model = build_retinanet(cfg, ["a"]).model
    embedder = model.backbone.embedder.embedder
    torch.testing.assert_close(embedder.convolution.weight, resnet.resnet.embedder.embedder.convolution.weight)
    torch.testing.assert_close(embedder.normalization.running_var, bn.running_var)
    stage = model.backbone.encoder.stages[3].layers[0].layer[1].convolution.weight
    torch.testing.assert_close(stage, resnet.resnet.encoder.stages[3].layers[0].layer[1].convolution.weight)


def test_unknown_config_key_is_rejected() -> None:
    with pytest.raises(ValueError, match="fpn_chanels"):
        build_retinanet(_cfg(fpn_chanels=16), ["a"])
