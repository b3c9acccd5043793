"""Batch prepared images: pad to the batch maximum with a pixel mask, labels in DETR format.

The labels travel packed: one float32 tensor per batch (``labels_packed``) and the number of boxes
of each image (``labels_per_image``, a list of ints). A dataloader worker hands every tensor to the
training process as its own shared-memory segment (with PyTorch's default sharing a file descriptor
over a socket, about 0.3 ms of the training process's time each; by name, as our loaders share
(``hftrain.data.loader.share_by_name``), still about 0.07 ms), and pinning and the copy to the device
also go tensor by tensor: two tensors per image cost more than the rest of the batch.
:func:`unpack_labels` turns the packed tensor back into the per-image dicts the models take, as
views, in the training process (on the device, after the copy).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Collate:
    """Collate function for :class:`hftrain.data.loader.DetectionDataset` samples.

    ``normalize_by_canvas``: boxes are normalised by the padded canvas (for models that do not
    read the pixel mask and so predict in canvas coordinates) instead of each image's own size.
    ``skipped`` counts samples that stand in for images that failed to decode (and any None sample);
    ``boxes_dropped`` sums the boxes the samples' mosaics dropped as too small (``hftrain.data.augment``).
    ``pixel_mask`` is bool (True on image pixels): the models read it with ``.float()``/``.bool()``,
    and it costs an eighth of an int64 mask in the workers, the pinned buffers and the copy.
    """

    normalize_by_canvas: bool
    pad_to_multiple: int = 1
    """Round the canvas up to a multiple of this (RT-DETR's feature pyramid needs 32)."""

    def __call__(self, samples: list[dict | None]) -> dict:
        kept = [s for s in samples if s is not None]
        skipped = len(samples) - len(kept) + sum(s.get("failed", 0) for s in kept)
        dropped = sum(s.get("boxes_dropped", 0) for s in kept)
        if not kept:
            return {"pixel_values": None, "skipped": skipped, "images": 0, "boxes_dropped": dropped}
        height = max(s["pixel_values"].shape[1] for s in kept)
        width = max(s["pixel_values"].shape[2] for s in kept)
        step = self.pad_to_multiple
        height, width = -(-height // step) * step, -(-width // step) * step
        pixels = torch.zeros((len(kept), 3, height, width), dtype=torch.uint8)
        mask = torch.zeros((len(kept), height, width), dtype=torch.bool)  # 1 byte a pixel (long: 8)
        sizes, orig_sizes, image_ids = [], [], []
        for i, sample in enumerate(kept):
            _, h, w = sample["pixel_values"].shape
            pixels[i, :, :h, :w] = sample["pixel_values"]
            mask[i, :h, :w] = 1
            sizes.append((h, w))
            orig_sizes.append(sample["orig_size"])
            image_ids.append(sample["image_id"])
        sizes_t = torch.tensor(sizes, dtype=torch.float32)
        orig_t = torch.tensor(orig_sizes, dtype=torch.float32)
        canvas = torch.tensor([[height, width]], dtype=torch.float32)
        reference = canvas.expand_as(sizes_t) if self.normalize_by_canvas else sizes_t
        labels_packed, per_image = pack_labels(kept, reference)
        return {
            "pixel_values": pixels,
            "pixel_mask": mask,
            "labels_packed": labels_packed,  # unpack_labels(batch): the per-image DETR labels
            "labels_per_image": per_image,
            "image_ids": torch.tensor(image_ids, dtype=torch.long),
            # (height, width) that normalised coordinates 0..1 map to, in original image pixels
            "target_sizes": orig_t * reference / sizes_t,
            "orig_sizes": orig_t,
            "skipped": skipped,
            "images": len(kept),
            "boxes_dropped": dropped,
        }


def pack_labels(samples: list[dict], reference: torch.Tensor) -> tuple[torch.Tensor, list[int]]:
    """The batch's boxes (absolute xywh) as DETR targets, normalised cxcywh (by ``reference``,
    each image's (height, width)), in one flat float32 tensor: the N boxes' 4N coordinates, then
    their N class ids (exact as float32 below 2**24); and the number of boxes of each image."""
    per_image = [len(s["class_labels"]) for s in samples]
    boxes = torch.cat([s["boxes"].reshape(-1, 4) for s in samples])
    scale = reference.flip(1).repeat(1, 2).repeat_interleave(torch.tensor(per_image), dim=0)  # (w, h, w, h) per box
    total = len(boxes)
    packed = torch.empty(5 * total, dtype=torch.float32)
    cxcywh = packed[: 4 * total].view(total, 4)
    cxcywh[:, :2] = (boxes[:, :2] + boxes[:, 2:] / 2) / scale[:, :2]
    cxcywh[:, 2:] = boxes[:, 2:] / scale[:, 2:]
    packed[4 * total:] = torch.cat([s["class_labels"].reshape(-1) for s in samples])
    return packed, per_image


def unpack_labels(batch: dict) -> list[dict]:
    """Per-image ``{"class_labels": int64 (n,), "boxes": float32 (n, 4) normalised cxcywh}`` of a
    batch from :class:`Collate`, wherever its tensors now are; the boxes are views of the packed tensor."""
    packed, per_image = batch["labels_packed"], batch["labels_per_image"]
    total = sum(per_image)
    boxes = packed[: 4 * total].view(total, 4).split(per_image)
    classes = packed[4 * total:].long().split(per_image)
    return [{"class_labels": c, "boxes": b} for c, b in zip(classes, boxes)]
