"""model.norm / model.norm_scope: every kind builds, trains a step, and lands where scoped."""

from __future__ import annotations

import copy
import types

import pytest
import torch
from torch import nn

from hftrain.models.cbn import ConvCBN, CrossIterationBatchNorm2d
from hftrain.models.norms import FrozenBatchNorm2d, convert_backbone_norms, group_count, resolve_norm_kind
from hftrain.models.retinanet_builder import build_retinanet

NORM_CLASS = {
    "bn": nn.BatchNorm2d,
    "frozenbn": FrozenBatchNorm2d,
    "gn": nn.GroupNorm,
    "cbn": CrossIterationBatchNorm2d,
}



def _cfg(norm: str, scope: list[str]) -> types.SimpleNamespace:
    return types.SimpleNamespace(
        name="retinanet",
        pretrained=None,
        config={
            "depths": [1, 1, 1, 1],
            "hidden_sizes": [16, 32, 48, 64],
            "embedding_size": 16,
            "layer_type": "basic",
            "fpn_channels": 48,
            "num_head_convs": 2,
            "cbn_options": {"buffer_num": 2},
        },
        norm=norm,
        norm_scope=scope,
    )


def _batch() -> tuple[torch.Tensor, list[dict[str, torch.Tensor]]]:
    torch.manual_seed(0)
    labels = [
        {"class_labels": torch.tensor([0, 1]), "boxes": torch.tensor([[0.3, 0.4, 0.3, 0.5], [0.7, 0.6, 0.4, 0.3]])},
        {"class_labels": torch.tensor([1]), "boxes": torch.tensor([[0.5, 0.5, 0.6, 0.6]])},
    ]
    return torch.randn(2, 3, 64, 96), labels


def _norm_types(module: nn.Module) -> set[type]:
    kinds = (nn.BatchNorm2d, nn.SyncBatchNorm, nn.GroupNorm, FrozenBatchNorm2d, CrossIterationBatchNorm2d)
    return {type(m) for m in module.modules() if isinstance(m, kinds)}


@pytest.mark.parametrize("norm", ["bn", "frozenbn", "gn", "cbn", "syncbn", "default"])
def test_every_norm_builds_and_trains_a_step(norm: str) -> None:
    scope = ["backbone", "fpn", "head"]
    if norm == "syncbn":
        with pytest.warns(UserWarning, match="syncbn"):
            model = build_retinanet(_cfg(norm, scope), ["a", "b"]).model
        expected = nn.BatchNorm2d  # the single-process fallback
    else:
        model = build_retinanet(_cfg(norm, scope), ["a", "b"]).model
        expected = NORM_CLASS.get(norm)
    if expected is None:  # "default": the backbone keeps its BN, FPN and heads have no norm
        assert _norm_types(model.backbone) == {nn.BatchNorm2d}
        assert _norm_types(model.fpn) == _norm_types(model.head) == set()
    else:
        for part in (model.backbone, model.fpn, model.head):
            assert _norm_types(part) == {expected}

    x, labels = _batch()
    before = copy.deepcopy(model.state_dict())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    for _ in range(3):  # with cbn, the third step uses the buffer of the previous two
        loss = model(pixel_values=x, labels=labels).loss
        assert torch.isfinite(loss)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = model.state_dict()
    assert not torch.equal(before["head.cls_score.weight"], after["head.cls_score.weight"])
    stem = next(k for k in before if k.startswith("backbone.embedder") and before[k].dim() == 4)
    assert not torch.equal(before[stem], after[stem])
    if norm == "frozenbn":
        frozen = [name for name, m in model.named_modules() if isinstance(m, FrozenBatchNorm2d)]
        assert frozen
        assert not [p for m in model.modules() if isinstance(m, FrozenBatchNorm2d) for p in m.parameters()]
        for name in frozen:
            for buffer in ("weight", "bias", "running_mean", "running_var"):
                assert torch.equal(before[f"{name}.{buffer}"], after[f"{name}.{buffer}"])
    if norm == "cbn":
        cbn = model.head.cls_tower.norms[0][0]
        assert len(cbn._history) == 2 and int(cbn.num_batches_tracked) == 3
    model.eval()
    with torch.no_grad():
        assert torch.isfinite(model(pixel_values=x).logits).all()


def test_scope_limits_where_the_norm_goes() -> None:
    model = build_retinanet(_cfg("gn", ["head"]), ["a"]).model
    assert _norm_types(model.backbone) == {nn.BatchNorm2d}
    assert _norm_types(model.fpn) == set()
    assert _norm_types(model.head) == {nn.GroupNorm}
    model = build_retinanet(_cfg("frozenbn", ["backbone"]), ["a"]).model
    assert _norm_types(model.backbone) == {FrozenBatchNorm2d}
    assert _norm_types(model.fpn) == _norm_types(model.head) == set()


def test_group_count_divides_channels() -> None:
    assert [group_count(c) for c in (256, 64, 48, 20, 7)] == [32, 32, 24, 20, 7]
    norm = build_retinanet(_cfg("gn", ["fpn"]), ["a"]).model.fpn.output[0].norm
    assert isinstance(norm, nn.GroupNorm) and norm.num_groups == 24 and norm.num_channels == 48


def _trained_bn_block() -> nn.Module:
    """A conv + BatchNorm2d in the transformers layout, with non-trivial statistics."""
    torch.manual_seed(0)
    block = nn.Module()
    block.convolution = nn.Conv2d(3, 8, 3, padding=1, bias=False)
    block.normalization = nn.BatchNorm2d(8)
    with torch.no_grad():
        block.normalization.running_mean.uniform_(-1, 1)
        block.normalization.running_var.uniform_(0.5, 2)
        block.normalization.weight.uniform_(0.5, 1.5)
        block.normalization.bias.uniform_(-0.5, 0.5)
    block.forward = lambda x: block.normalization(block.convolution(x))  # type: ignore[method-assign]
    return block.eval()


@pytest.mark.parametrize("norm", ["frozenbn", "cbn"])
def test_conversion_keeps_pretrained_statistics(norm: str) -> None:
    block = _trained_bn_block()
    x = torch.randn(2, 3, 5, 5)
    expected = block(x)
    converted = convert_backbone_norms(copy.deepcopy(block), norm).eval()
    if norm == "cbn":
        assert isinstance(converted.convolution, ConvCBN) and isinstance(converted.normalization, nn.Identity)
        out = converted.convolution(x)
    else:
        assert isinstance(converted.normalization, FrozenBatchNorm2d)
        out = converted.normalization(converted.convolution(x))
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)


def test_syncbn_falls_back_with_a_warning_and_unknown_norm_fails() -> None:
    with pytest.warns(UserWarning, match="BatchNorm2d"):
        assert resolve_norm_kind("syncbn") == "bn"
    with pytest.raises(ValueError, match="unknown norm"):
        resolve_norm_kind("layernorm")
