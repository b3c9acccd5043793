"""RetinaNet (Lin et al., "Focal Loss for Dense Object Detection") as a transformers model.

ResNet backbone (transformers ``ResNetBackbone``, C3-C5) -> FPN P3-P7 -> shared class and box
heads over 9 anchors per location, trained with sigmoid focal loss and smooth-L1 (or L1) box
regression. Defaults follow detectron2's RetinaNet (see the config docstring).

Coordinates: the model works on the padded canvas it is given. Label boxes are normalised
``(cx, cy, w, h)`` relative to that canvas (the padding is just black pixels; no pixel mask),
``pred_boxes`` are normalised ``(cx, cy, w, h)`` relative to the canvas too, and
``RetinaNetForObjectDetection.postprocess`` maps canvas coordinates 0..1 to ``target_sizes``.

``RetinaNetConfig``/``RetinaNetForObjectDetection`` are registered with ``AutoConfig`` and
``AutoModelForObjectDetection`` by ``register_retinanet()`` (called by :mod:`hftrain.models.retinanet_builder`), so a saved
model loads with ``AutoModelForObjectDetection.from_pretrained(directory)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F
from transformers import (
    AutoConfig,
    AutoModelForObjectDetection,
    PreTrainedConfig,
    PreTrainedModel,
    ResNetBackbone,
    ResNetConfig,
)
from transformers import initialization as init
from transformers.utils import ModelOutput

from hftrain.models.anchors import cell_anchors, decode_boxes, encode_boxes, grid_anchors, match_anchors
from hftrain.models.cbn import CrossIterationBatchNorm2d
from hftrain.models.nms import batched_nms, box_iou
from hftrain.models.norms import (
    NORM_SCOPES,
    ConvNorm,
    FrozenBatchNorm2d,
    apply_norm,
    convert_backbone_norms,
    make_norm,
    resolve_norm_kind,
)

MODEL_TYPE = "hftrain_retinanet"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
BACKBONE_STAGES = ("stage2", "stage3", "stage4")  # C3, C4, C5
NUM_LEVELS = 5  # P3..P7


class RetinaNetConfig(PreTrainedConfig):
    """Configuration of ``RetinaNetForObjectDetection`` (defaults: detectron2's RetinaNet R50-FPN).

    Args:
        backbone_config: ``ResNetConfig`` fields as a dict (ResNet-50 when None).
        fpn_channels: channels of P3-P7 and of the heads.
        num_head_convs: 3x3 conv layers in each of the class and box towers.
        norm: ``"default" | "bn" | "syncbn" | "frozenbn" | "gn" | "cbn"`` (see ``hftrain.models.norms``).
        norm_scope: parts that get ``norm``: any of ``"backbone"``, ``"fpn"``, ``"head"``.
            Out of scope, the backbone keeps BatchNorm2d and FPN/heads have no norm layer.
        cbn_options: keyword arguments of ``CrossIterationBatchNorm2d`` (buffer_num, rho, burnin, two_stage).
        anchor_octave_base_scale: anchor size over stride (4: 32 px on P3 ... 512 px on P7).
        anchor_scales_per_octave: sizes per level, ``base * 2**(i / n)`` for ``i < n``.
        anchor_ratios: height/width ratios.
        anchor_offset: anchor centres at ``(i + offset) * stride`` (detectron2: 0).
        fg_iou_threshold, bg_iou_threshold: IoU >= fg is positive, < bg negative, between ignored.
        allow_low_quality_matches: also make each ground-truth box's best anchors positive.
        focal_alpha, focal_gamma, prior_prob: focal loss and the class-bias initialisation.
        box_loss: ``"smooth_l1"`` or ``"l1"``; ``smooth_l1_beta`` is its transition point.
        box_coder_weights: (wx, wy, ww, wh) of the (dx, dy, dw, dh) encoding.
        score_threshold, topk_candidates, nms_threshold, detections_per_image: inference.
    """

    model_type = MODEL_TYPE

    backbone_config: dict | None = None
    fpn_channels: int = 256
    num_head_convs: int = 4
    norm: str = "default"
    norm_scope: list[str] | tuple[str, ...] = NORM_SCOPES
    cbn_options: dict | None = None
    anchor_octave_base_scale: float = 4.0
    anchor_scales_per_octave: int = 3
    anchor_ratios: list[float] | tuple[float, ...] = (0.5, 1.0, 2.0)
    anchor_offset: float = 0.0
    fg_iou_threshold: float = 0.5
    bg_iou_threshold: float = 0.4
    allow_low_quality_matches: bool = True
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0
    prior_prob: float = 0.01
    box_loss: str = "smooth_l1"
    smooth_l1_beta: float = 0.1
    box_coder_weights: list[float] | tuple[float, ...] = (1.0, 1.0, 1.0, 1.0)
    score_threshold: float = 0.05
    topk_candidates: int = 1000
    nms_threshold: float = 0.5
    detections_per_image: int = 100

    def __post_init__(self, **kwargs: Any) -> None:
        super().__post_init__(**kwargs)
        if self.box_loss not in ("smooth_l1", "l1"):
            raise ValueError(f"box_loss must be 'smooth_l1' or 'l1', got {self.box_loss!r}")
        unknown = set(self.norm_scope) - set(NORM_SCOPES)
        if unknown:
            raise ValueError(f"norm_scope: unknown parts {sorted(unknown)}; expected {NORM_SCOPES}")

    def resnet_config(self) -> ResNetConfig:
        """The backbone's ResNetConfig, returning C3-C5."""
        fields = dict(self.backbone_config or {})
        for key in ("model_type", "out_features", "out_indices", "stage_names"):
            fields.pop(key, None)
        return ResNetConfig(**fields, out_features=list(BACKBONE_STAGES))

    def num_anchors(self) -> int:
        """Anchors per feature-map location."""
        return self.anchor_scales_per_octave * len(self.anchor_ratios)


@dataclass
class RetinaNetObjectDetectionOutput(ModelOutput):
    """Output of ``RetinaNetForObjectDetection``.

    Args:
        loss: focal + box loss (with labels).
        loss_dict: ``{"loss_cls", "loss_box"}`` (with labels).
        logits: (B, A, num_labels) class logits of all anchors, levels P3..P7 in order.
        pred_boxes: (B, A, 4) decoded boxes, normalised (cx, cy, w, h) relative to the canvas.
        anchors_per_level: (5,) how many of the A anchors belong to each level.
    """

    loss: torch.Tensor | None = None
    loss_dict: dict[str, torch.Tensor] | None = None
    logits: torch.Tensor | None = None
    pred_boxes: torch.Tensor | None = None
    anchors_per_level: torch.Tensor | None = None


# ---------------------------------------------------------------------------------------------
# The loss


def sigmoid_focal_loss(logits: torch.Tensor, targets: torch.Tensor, alpha: float, gamma: float) -> torch.Tensor:
    """Elementwise focal loss (Lin et al. eq. 5) of sigmoid ``logits`` against 0/1 ``targets``."""
    p = torch.sigmoid(logits)
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = p * targets + (1 - p) * (1 - targets)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = loss * (alpha * targets + (1 - alpha) * (1 - targets))
    return loss


def _cxcywh_to_xyxy(boxes: torch.Tensor) -> torch.Tensor:
    cx, cy, w, h = boxes.unbind(-1)
    return torch.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], dim=-1)


def _xyxy_to_cxcywh(boxes: torch.Tensor) -> torch.Tensor:
    x1, y1, x2, y2 = boxes.unbind(-1)
    return torch.stack([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1], dim=-1)


# ---------------------------------------------------------------------------------------------
# Modules


class FeaturePyramid(nn.Module):
    """FPN over C3-C5 giving P3-P5, plus P6 (3x3/2 conv on C5) and P7 (3x3/2 on ReLU(P6)).

    Lateral and output convs get ``norm`` (as detectron2's FPN does); P6/P7 have none.
    """

    def __init__(self, in_channels: list[int], channels: int, norm: str, cbn_options: dict | None) -> None:
        super().__init__()
        has_norm = norm != "default"
        self.lateral = nn.ModuleList(
            ConvNorm(nn.Conv2d(c, channels, 1, bias=not has_norm), make_norm(norm, channels, cbn_options))
            for c in in_channels
        )
        self.output = nn.ModuleList(
            ConvNorm(
                nn.Conv2d(channels, channels, 3, padding=1, bias=not has_norm), make_norm(norm, channels, cbn_options)
            )
            for _ in in_channels
        )
        self.p6 = nn.Conv2d(in_channels[-1], channels, 3, stride=2, padding=1)
        self.p7 = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        laterals = [conv(f) for conv, f in zip(self.lateral, features)]
        merged = [laterals[-1]]
        for lateral in reversed(laterals[:-1]):
            merged.insert(0, lateral + F.interpolate(merged[0], size=lateral.shape[-2:], mode="nearest"))
        outputs = [conv(m) for conv, m in zip(self.output, merged)]
        p6 = self.p6(features[-1])
        p7 = self.p7(F.relu(p6))
        return outputs + [p6, p7]


class HeadTower(nn.Module):
    """``num_convs`` 3x3 conv + norm + ReLU layers shared across levels.

    Norm layers are per level (the convs are shared): batch statistics of P3 and P7 differ,
    and a Cross-Iteration BN must see the same level from one iteration to the next.
    """

    def __init__(self, channels: int, num_convs: int, norm: str, cbn_options: dict | None) -> None:
        super().__init__()
        has_norm = norm != "default"
        self.convs = nn.ModuleList(
            nn.Conv2d(channels, channels, 3, padding=1, bias=not has_norm) for _ in range(num_convs)
        )
        self.norms = (
            nn.ModuleList(
                nn.ModuleList(make_norm(norm, channels, cbn_options) for _ in range(num_convs))
                for _ in range(NUM_LEVELS)
            )
            if has_norm
            else None
        )

    def forward(self, x: torch.Tensor, level: int) -> torch.Tensor:
        for i, conv in enumerate(self.convs):
            norm = self.norms[level][i] if self.norms is not None else None
            x = F.relu(apply_norm(norm, conv(x), conv.weight))
        return x


class RetinaNetHead(nn.Module):
    """Class and box subnets: towers, then per-anchor class logits and box deltas."""

    def __init__(self, config: RetinaNetConfig, norm: str) -> None:
        super().__init__()
        channels, anchors = config.fpn_channels, config.num_anchors()
        self.num_labels = config.num_labels
        self.cls_tower = HeadTower(channels, config.num_head_convs, norm, config.cbn_options)
        self.box_tower = HeadTower(channels, config.num_head_convs, norm, config.cbn_options)
        self.cls_score = nn.Conv2d(channels, anchors * config.num_labels, 3, padding=1)
        self.bbox_pred = nn.Conv2d(channels, anchors * 4, 3, padding=1)

    def forward(self, features: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, A_total, num_labels) logits and (B, A_total, 4) deltas, levels concatenated."""
        logits, deltas = [], []
        for level, feature in enumerate(features):
            b, _, h, w = feature.shape
            cls = self.cls_score(self.cls_tower(feature, level))
            box = self.bbox_pred(self.box_tower(feature, level))
            # (B, A*K, H, W) -> (B, H, W, A, K) -> (B, H*W*A, K), matching grid_anchors' order
            logits.append(cls.view(b, -1, self.num_labels, h, w).permute(0, 3, 4, 1, 2).reshape(b, -1, self.num_labels))
            deltas.append(box.view(b, -1, 4, h, w).permute(0, 3, 4, 1, 2).reshape(b, -1, 4))
        return torch.cat(logits, dim=1), torch.cat(deltas, dim=1)


def _backbone_strides(config: ResNetConfig) -> list[int]:
    """Strides of C3, C4, C5 for a transformers ResNet (stem /4, stages after the first /2)."""
    stride = 4 * (2 if config.downsample_in_first_stage else 1)
    strides = []
    for stage in range(2, len(config.depths) + 1):
        stride *= 2
        if f"stage{stage}" in BACKBONE_STAGES:
            strides.append(stride)
    return strides


_NORM_LAYERS = (nn.GroupNorm, nn.modules.batchnorm._BatchNorm, CrossIterationBatchNorm2d, FrozenBatchNorm2d)


class RetinaNetPreTrainedModel(PreTrainedModel):
    """Weight initialisation and the config class for the RetinaNet model."""

    config: RetinaNetConfig
    config_class = RetinaNetConfig
    base_model_prefix = "retinanet"
    main_input_name = "pixel_values"
    input_modalities = ("image",)

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, nn.Conv2d):
            head = getattr(self, "head", None)
            if head is not None and module is head.cls_score:
                init.normal_(module.weight, std=0.01)
                init.constant_(module.bias, -math.log((1 - self.config.prior_prob) / self.config.prior_prob))
            elif head is not None and any(module is m for m in head.modules()):
                init.normal_(module.weight, std=0.01)
                if module.bias is not None:
                    init.zeros_(module.bias)
            else:  # FPN: detectron2's c2_xavier_fill
                init.kaiming_uniform_(module.weight, a=1)
                if module.bias is not None:
                    init.zeros_(module.bias)
        elif isinstance(module, _NORM_LAYERS):
            if module.weight is not None:
                init.ones_(module.weight)
                init.zeros_(module.bias)
            if getattr(module, "running_mean", None) is not None:
                init.zeros_(module.running_mean)
                init.ones_(module.running_var)


class RetinaNetForObjectDetection(RetinaNetPreTrainedModel):
    """RetinaNet with a transformers ResNet backbone; see the module docstring for coordinates."""

    def __init__(self, config: RetinaNetConfig) -> None:
        super().__init__(config)
        norm = resolve_norm_kind(config.norm)
        scope = set(config.norm_scope)
        resnet_config = config.resnet_config()
        self.backbone = ResNetBackbone(resnet_config)
        if "backbone" in scope:
            convert_backbone_norms(self.backbone, norm, config.cbn_options)
        self.fpn = FeaturePyramid(
            self.backbone.channels, config.fpn_channels, norm if "fpn" in scope else "default", config.cbn_options
        )
        self.head = RetinaNetHead(config, norm if "head" in scope else "default")
        strides = _backbone_strides(resnet_config)
        self.strides = strides + [strides[-1] * 2, strides[-1] * 4]
        self.post_init()

    def anchors(self, feature_sizes: list[tuple[int, int]], device: torch.device) -> list[torch.Tensor]:
        """Pixel xyxy anchors of each level for the given (H, W) feature-map sizes."""
        cfg = self.config
        result = []
        for stride, (h, w) in zip(self.strides, feature_sizes):
            cell = cell_anchors(cfg.anchor_octave_base_scale * stride, cfg.anchor_scales_per_octave, cfg.anchor_ratios)
            result.append(grid_anchors(cell, stride, h, w, cfg.anchor_offset).to(device))
        return result

    def forward(
        self,
        pixel_values: torch.Tensor,
        pixel_mask: torch.Tensor | None = None,
        labels: list[dict[str, torch.Tensor]] | None = None,
        return_dict: bool | None = None,
        **kwargs: Any,
    ) -> RetinaNetObjectDetectionOutput:
        """``pixel_mask`` is ignored (canvas convention); ``labels`` as in the module docstring."""
        features = list(self.backbone(pixel_values).feature_maps)
        pyramid = self.fpn(features)
        logits, deltas = self.head(pyramid)
        level_anchors = self.anchors([tuple(p.shape[-2:]) for p in pyramid], pixel_values.device)
        anchors = torch.cat(level_anchors)
        height, width = pixel_values.shape[-2:]
        scale = anchors.new_tensor([width, height, width, height])
        weights = tuple(self.config.box_coder_weights)
        loss = loss_dict = None
        with torch.autocast(device_type=pixel_values.device.type, enabled=False):  # decoding and loss in fp32
            pred_boxes = _xyxy_to_cxcywh(decode_boxes(deltas.float(), anchors, weights) / scale)
            if labels is not None:
                loss_dict = self.loss(logits.float(), deltas.float(), anchors, labels, scale)
                loss = loss_dict["loss_cls"] + loss_dict["loss_box"]
        return RetinaNetObjectDetectionOutput(
            loss=loss,
            loss_dict=loss_dict,
            logits=logits,
            pred_boxes=pred_boxes,
            anchors_per_level=torch.tensor([len(a) for a in level_anchors], device=pixel_values.device),
        )

    def loss(
        self,
        logits: torch.Tensor,
        deltas: torch.Tensor,
        anchors: torch.Tensor,
        labels: list[dict[str, torch.Tensor]],
        scale: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        """Focal and box losses, both summed over anchors and divided by the positives (>= 1)."""
        cfg = self.config
        weights = tuple(cfg.box_coder_weights)
        cls_targets, box_targets, states = [], [], []
        for target in labels:
            gt_boxes = _cxcywh_to_xyxy(target["boxes"].to(anchors)) * scale
            gt_classes = target["class_labels"].to(anchors.device).long()
            matched, state = match_anchors(
                box_iou(gt_boxes, anchors), cfg.fg_iou_threshold, cfg.bg_iou_threshold, cfg.allow_low_quality_matches
            )
            one_hot = torch.zeros(len(anchors), cfg.num_labels, device=anchors.device)
            if len(gt_boxes):
                positive = state == 1
                one_hot[positive, gt_classes[matched[positive]]] = 1.0
                box_targets.append(encode_boxes(gt_boxes[matched], anchors, weights))
            else:
                box_targets.append(torch.zeros_like(anchors))
            cls_targets.append(one_hot)
            states.append(state)
        state = torch.stack(states)
        cls_target = torch.stack(cls_targets)
        box_target = torch.stack(box_targets)
        positive = state == 1
        num_positive = positive.sum().clamp(min=1).float()

        valid = state >= 0
        loss_cls = sigmoid_focal_loss(logits[valid], cls_target[valid], cfg.focal_alpha, cfg.focal_gamma).sum()
        if cfg.box_loss == "l1":
            loss_box = F.l1_loss(deltas[positive], box_target[positive], reduction="sum")
        else:
            loss_box = F.smooth_l1_loss(
                deltas[positive], box_target[positive], beta=cfg.smooth_l1_beta, reduction="sum"
            )
        return {"loss_cls": loss_cls / num_positive, "loss_box": loss_box / num_positive}

    def postprocess(
        self,
        outputs: RetinaNetObjectDetectionOutput,
        target_sizes: torch.Tensor | list[tuple[int, int]],
        score_threshold: float | None = None,
    ) -> list[dict[str, torch.Tensor]]:
        """Detections per image: per level the top ``topk_candidates`` scores above the threshold,
        then class-wise NMS and the best ``detections_per_image``.

        Boxes are absolute xyxy, clipped to the canvas, with canvas 0..1 mapped to each
        ``target_sizes`` row (height, width).
        """
        cfg = self.config
        threshold = cfg.score_threshold if score_threshold is None else score_threshold
        level_sizes = [int(n) for n in outputs.anchors_per_level]
        results = []
        for i in range(outputs.logits.shape[0]):
            boxes_all, scores_all, classes_all = [], [], []
            for logits, boxes in zip(
                outputs.logits[i].float().split(level_sizes), outputs.pred_boxes[i].float().split(level_sizes)
            ):
                scores = torch.sigmoid(logits).flatten()
                candidates = torch.nonzero(scores > threshold).flatten()
                top = scores[candidates].topk(min(cfg.topk_candidates, len(candidates)))
                flat = candidates[top.indices]
                anchor_index = torch.div(flat, cfg.num_labels, rounding_mode="floor")
                boxes_all.append(boxes[anchor_index])
                scores_all.append(top.values)
                classes_all.append(flat % cfg.num_labels)
            boxes = _cxcywh_to_xyxy(torch.cat(boxes_all)).clamp(0, 1)
            scores, classes = torch.cat(scores_all), torch.cat(classes_all)
            keep = batched_nms(boxes, scores, classes, cfg.nms_threshold)[: cfg.detections_per_image]
            h, w = (float(v) for v in target_sizes[i])
            results.append(
                {
                    "scores": scores[keep],
                    "labels": classes[keep],
                    "boxes": boxes[keep] * boxes.new_tensor([w, h, w, h]),
                }
            )
        return results


# ---------------------------------------------------------------------------------------------
# Registration (the builder: hftrain.models.retinanet_builder)


def register_retinanet() -> None:
    """Make ``AutoConfig``/``AutoModelForObjectDetection`` know ``hftrain_retinanet`` (idempotent)."""
    AutoConfig.register(MODEL_TYPE, RetinaNetConfig, exist_ok=True)
    AutoModelForObjectDetection.register(RetinaNetConfig, RetinaNetForObjectDetection, exist_ok=True)
