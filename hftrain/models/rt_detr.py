"""Builders for RT-DETR, RT-DETRv2 and D-FINE (transformers).

The real-time family: no pixel mask (boxes normalised by the padded canvas the model sees),
images only rescaled to [0, 1], the canvas a multiple of 32 (the hybrid encoder's FPN adds
stride-8/16/32 maps whose sizes must divide evenly). All three train their scores with a sigmoid
(varifocal) loss whatever ``use_focal_loss`` says (it only changes the matcher), so detections are
the top (query, class) pairs. None of them has its own image processor in transformers: their
checkpoints use ``RTDetrImageProcessor``.

Without ``auxiliary_loss`` the encoder's query-selection heads (``enc_output``,
``enc_score_head``, ``enc_bbox_head``) get no gradient: their loss is one of the auxiliary terms.

A micro-batch without boxes (background images) makes transformers skip denoising, so
``denoising_class_embed`` would get no gradient on that process and DDP's gradient buckets would
differ between processes (gloo: "Received data size doesn't match expected size"; NCCL: a hang).
:func:`keep_denoising_in_graph` adds the embedding to the loss with weight 0 on such batches: every
parameter then takes part on every process, and the gradient is unchanged (DDP's
``find_unused_parameters``, which would search the graph at every step, stays off).
"""

from __future__ import annotations

import functools

from transformers import (
    DFineConfig,
    DFineForObjectDetection,
    RTDetrConfig,
    RTDetrForObjectDetection,
    RTDetrV2Config,
    RTDetrV2ForObjectDetection,
)
from transformers.models.rt_detr.image_processing_pil_rt_detr import RTDetrImageProcessorPil

from hftrain.models.detector import Detector
from hftrain.models.detr_family import backbone_tail_unused, build_or_load, finish, reset_batchnorm_scale
from hftrain.models.postprocess import sigmoid_topk


def _detector(cfg, class_names, config_class, model_class, backbone_type: str, fp32_criterion: bool) -> Detector:
    model, loaded = build_or_load(cfg, class_names, config_class, model_class, backbone_type)
    reset_note = None if cfg.pretrained else reset_batchnorm_scale(model)
    keep_denoising_in_graph(model)
    config = model.config
    return Detector(
        model=model,
        postprocess=sigmoid_topk,
        image_processor=RTDetrImageProcessorPil(),
        image_mean=(0.0, 0.0, 0.0),
        image_std=(1.0, 1.0, 1.0),
        uses_pixel_mask=False,
        pad_to_multiple=32,
        find_unused_parameters=not config.auxiliary_loss or backbone_tail_unused(config),
        backbone_prefixes=("model.backbone",),
        loaded=loaded.summary,
        notes=loaded.notes + ([reset_note] if reset_note else []) + finish(model, fp32_criterion),
    )


def keep_denoising_in_graph(model) -> None:
    """Wrap ``model.loss_function``: when transformers skipped denoising (no box in the micro-batch),
    add ``0 * denoising_class_embed.weight.sum()`` to the loss, so the embedding gets a (zero)
    gradient as on the processes whose micro-batch had boxes."""
    embed = getattr(model.model, "denoising_class_embed", None)  # absent with num_denoising: 0
    original = model.loss_function
    if embed is None or getattr(original, "_hftrain_denoising", False):
        return

    @functools.wraps(original)
    def loss_function(*args, **kwargs):
        loss, *rest = original(*args, **kwargs)
        if kwargs.get("denoising_meta_values") is None:  # denoising skipped: no box in this micro-batch
            loss = loss + 0.0 * embed.weight.sum()
        return (loss, *rest)

    loss_function._hftrain_denoising = True
    model.loss_function = loss_function


def build_rt_detr(cfg, class_names: list[str], fp32_criterion: bool = True) -> Detector:
    """RT-DETR; a ``backbone_config`` dict is an ``RTDetrResNetConfig``."""
    return _detector(cfg, class_names, RTDetrConfig, RTDetrForObjectDetection, "rt_detr_resnet", fp32_criterion)


def build_rt_detr_v2(cfg, class_names: list[str], fp32_criterion: bool = True) -> Detector:
    """RT-DETRv2; a ``backbone_config`` dict is an ``RTDetrResNetConfig``."""
    return _detector(cfg, class_names, RTDetrV2Config, RTDetrV2ForObjectDetection, "rt_detr_resnet", fp32_criterion)


def build_d_fine(cfg, class_names: list[str], fp32_criterion: bool = True) -> Detector:
    """D-FINE; a ``backbone_config`` dict is an ``HGNetV2Config``."""
    return _detector(cfg, class_names, DFineConfig, DFineForObjectDetection, "hgnet_v2", fp32_criterion)
