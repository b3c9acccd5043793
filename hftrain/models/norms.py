"""Normalisation layers selected by ``model.norm`` and where they go (``model.norm_scope``).

Kinds:

- ``"default"``: leave the backbone's BatchNorm2d alone; FPN and heads get no norm layer.
- ``"bn"``: BatchNorm2d.
- ``"syncbn"``: SyncBatchNorm when torch.distributed runs with more than one process,
  otherwise BatchNorm2d (with a warning: there is nothing to synchronise with).
- ``"frozenbn"``: ``FrozenBatchNorm2d``, a fixed affine map from stored statistics.
- ``"gn"``: GroupNorm with 32 groups, or the largest divisor of the channel count below 32.
- ``"cbn"``: Cross-Iteration BN (``hftrain.models.cbn``), paired with its preceding conv.

The backbone is converted in place (its BatchNorm2d statistics and affine parameters are
carried over where the new layer has them); FPN and heads are built with ``ConvNorm``.
"""

from __future__ import annotations

import warnings
from typing import Any, Literal

import torch
from torch import nn

from hftrain.models.cbn import ConvCBN, CrossIterationBatchNorm2d

NormKind = Literal["default", "bn", "syncbn", "frozenbn", "gn", "cbn"]
NORM_KINDS: tuple[str, ...] = ("default", "bn", "syncbn", "frozenbn", "gn", "cbn")
NORM_SCOPES: tuple[str, ...] = ("backbone", "fpn", "head")
MAX_GROUPS = 32


class FrozenBatchNorm2d(nn.Module):
    """BatchNorm2d with fixed statistics and affine parameters (buffers, never trained).

    Loads BatchNorm2d state dicts (``num_batches_tracked`` is ignored).
    """

    def __init__(self, num_features: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.num_features = num_features
        self.eps = eps
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    @classmethod
    def from_batchnorm(cls, bn: nn.modules.batchnorm._BatchNorm) -> FrozenBatchNorm2d:
        """A frozen copy of ``bn``'s current statistics and affine parameters."""
        frozen = cls(bn.num_features, bn.eps)
        with torch.no_grad():
            if bn.affine:
                frozen.weight.copy_(bn.weight)
                frozen.bias.copy_(bn.bias)
            if bn.track_running_stats:
                frozen.running_mean.copy_(bn.running_mean)
                frozen.running_var.copy_(bn.running_var)
        source = bn.running_mean if bn.running_mean is not None else bn.weight
        return frozen.to(source.device) if source is not None else frozen

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # type: ignore[no-untyped-def]
        state_dict.pop(prefix + "num_batches_tracked", None)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.weight * torch.rsqrt(self.running_var + self.eps)
        shift = self.bias - self.running_mean * scale
        return x * scale.to(x.dtype)[None, :, None, None] + shift.to(x.dtype)[None, :, None, None]


def group_count(channels: int, max_groups: int = MAX_GROUPS) -> int:
    """Largest number of groups ``<= max_groups`` that divides ``channels``."""
    return max(g for g in range(1, min(max_groups, channels) + 1) if channels % g == 0)


def _distributed_world_size() -> int:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_world_size()
    return 1


def resolve_norm_kind(kind: str) -> str:
    """Validate ``kind``; ``"syncbn"`` becomes ``"bn"`` (with a warning) without several processes."""
    if kind not in NORM_KINDS:
        raise ValueError(f"unknown norm {kind!r}; expected one of {NORM_KINDS}")
    if kind == "syncbn" and _distributed_world_size() <= 1:
        warnings.warn(
            "norm='syncbn' without an initialised multi-process torch.distributed group: using BatchNorm2d",
            stacklevel=2,
        )
        return "bn"
    return kind


def make_norm(kind: str, channels: int, cbn_options: dict[str, Any] | None = None) -> nn.Module | None:
    """A fresh norm layer for ``channels`` channels; None for ``"default"`` (no norm).

    ``kind`` should have gone through ``resolve_norm_kind``. A ``"syncbn"`` layer is a
    SyncBatchNorm, which needs the distributed group when it runs in training mode.
    """
    if kind == "default":
        return None
    if kind == "bn":
        return nn.BatchNorm2d(channels)
    if kind == "syncbn":
        return nn.SyncBatchNorm(channels)
    if kind == "frozenbn":
        return FrozenBatchNorm2d(channels)
    if kind == "gn":
        return nn.GroupNorm(group_count(channels), channels)
    if kind == "cbn":
        return CrossIterationBatchNorm2d(channels, **(cbn_options or {}))
    raise ValueError(f"unknown norm {kind!r}; expected one of {NORM_KINDS}")


def apply_norm(norm: nn.Module | None, y: torch.Tensor, conv_weight: torch.Tensor) -> torch.Tensor:
    """Run ``norm`` on a conv output ``y``; CBN also gets the conv's weight."""
    if norm is None:
        return y
    if isinstance(norm, CrossIterationBatchNorm2d):
        return norm(y, conv_weight)
    return norm(y)


class ConvNorm(nn.Module):
    """A convolution followed by an optional norm layer of any kind (no activation)."""

    def __init__(self, conv: nn.Conv2d, norm: nn.Module | None) -> None:
        super().__init__()
        self.conv = conv
        self.norm = norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return apply_norm(self.norm, self.conv(x), self.conv.weight)


def _replacement_for(bn: nn.BatchNorm2d, kind: str, cbn_options: dict[str, Any] | None) -> nn.Module:
    """A ``kind`` layer standing in for ``bn``, with whatever of its state it can hold."""
    if kind == "frozenbn":
        return FrozenBatchNorm2d.from_batchnorm(bn)
    new = make_norm(kind, bn.num_features, cbn_options)
    assert new is not None
    if isinstance(new, (nn.BatchNorm2d, CrossIterationBatchNorm2d)):
        new.eps = bn.eps
        new.momentum = bn.momentum if bn.momentum is not None else new.momentum
        with torch.no_grad():
            new.running_mean.copy_(bn.running_mean)
            new.running_var.copy_(bn.running_var)
    if bn.affine:
        with torch.no_grad():
            new.weight.copy_(bn.weight)
            new.bias.copy_(bn.bias)
    return new.to(bn.running_mean.device)


def convert_backbone_norms(module: nn.Module, kind: str, cbn_options: dict[str, Any] | None = None) -> nn.Module:
    """Replace the BatchNorm2d layers of a backbone by ``kind`` in place; returns ``module``.

    For ``"cbn"`` every BatchNorm2d must follow a conv in the transformers layout (a parent
    with ``convolution`` and ``normalization`` attributes, as in ResNet): the pair becomes
    ``convolution = ConvCBN(conv, cbn)`` and ``normalization = Identity``.
    """
    kind = resolve_norm_kind(kind)
    if kind == "default":
        return module
    if kind == "syncbn":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    if kind == "cbn":
        for parent in list(module.modules()):
            conv = getattr(parent, "convolution", None)
            bn = getattr(parent, "normalization", None)
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                cbn = _replacement_for(bn, kind, cbn_options)
                assert isinstance(cbn, CrossIterationBatchNorm2d)
                parent.convolution = ConvCBN(conv, cbn)
                parent.normalization = nn.Identity()
        leftover = [name for name, m in module.named_modules() if isinstance(m, nn.BatchNorm2d)]
        if leftover:
            raise ValueError(f"cbn: these BatchNorm2d layers follow no conv it can pair with: {leftover}")
        return module
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.BatchNorm2d):
                setattr(parent, name, _replacement_for(child, kind, cbn_options))
    return module
