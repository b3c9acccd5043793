"""Batch prepared images: pad to the batch maximum with a pixel mask, labels in DETR format."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Collate:
    """Collate function for :class:`hftrain.data.loader.DetectionDataset` samples.

    ``normalize_by_canvas``: boxes are normalised by the padded canvas (for models that do not
    read the pixel mask and so predict in canvas coordinates) instead of each image's own size.
    ``skipped`` counts samples that stand in for images that failed to decode (and any None sample).
    ``pixel_mask`` is bool (True on image pixels): the models read it with ``.float()``/``.bool()``,
    and it costs an eighth of an int64 mask in the workers, the pinned buffers and the copy.
    """

    normalize_by_canvas: bool
    pad_to_multiple: int = 1
    """Round the canvas up to a multiple of this (RT-DETR's feature pyramid needs 32)."""

    def __call__(self, samples: list[dict | None]) -> dict:
        kept = [s for s in samples if s is not None]
        skipped = len(samples) - len(kept) + sum(s.get("failed", 0) for s in kept)
        if not kept:
            return {"pixel_values": None, "skipped": skipped, "images": 0}
        height = max(s["pixel_values"].shape[1] for s in kept)
        width = max(s["pixel_values"].shape[2] for s in kept)
        step = self.pad_to_multiple
        height, width = -(-height // step) * step, -(-width // step) * step
        pixels = torch.zeros((len(kept), 3, height, width), dtype=torch.uint8)
        mask = torch.zeros((len(kept), height, width), dtype=torch.bool)  # 1 byte a pixel (long: 8)
        labels, sizes, orig_sizes, image_ids = [], [], [], []
        for i, sample in enumerate(kept):
            _, h, w = sample["pixel_values"].shape
            pixels[i, :, :h, :w] = sample["pixel_values"]
            mask[i, :h, :w] = 1
            ref_h, ref_w = (height, width) if self.normalize_by_canvas else (h, w)
            boxes = sample["boxes"]  # absolute xywh in the resized image
            cxcywh = torch.stack(
                [
                    (boxes[:, 0] + boxes[:, 2] / 2) / ref_w,
                    (boxes[:, 1] + boxes[:, 3] / 2) / ref_h,
                    boxes[:, 2] / ref_w,
                    boxes[:, 3] / ref_h,
                ],
                dim=1,
            )
            labels.append({"class_labels": sample["class_labels"], "boxes": cxcywh})
            sizes.append((h, w))
            orig_sizes.append(sample["orig_size"])
            image_ids.append(sample["image_id"])
        sizes_t = torch.tensor(sizes, dtype=torch.float32)
        orig_t = torch.tensor(orig_sizes, dtype=torch.float32)
        canvas = torch.tensor([[height, width]], dtype=torch.float32)
        reference = canvas.expand_as(sizes_t) if self.normalize_by_canvas else sizes_t
        return {
            "pixel_values": pixels,
            "pixel_mask": mask,
            "labels": labels,
            "image_ids": torch.tensor(image_ids, dtype=torch.long),
            # (height, width) that normalised coordinates 0..1 map to, in original image pixels
            "target_sizes": orig_t * reference / sizes_t,
            "orig_sizes": orig_t,
            "skipped": skipped,
            "images": len(kept),
        }
