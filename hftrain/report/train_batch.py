"""``plots/train_batch.png``: the first training batches of an epoch exactly as the model receives them.

The batches come from a training loader of their own (:func:`loader_like_training`:
``make_train_loader`` with the run's dataset, batch size, sampler, collate and seed, in this process)
set to the run's epoch. The sampler's order and each sample's augmentation are functions of
(train.seed, epoch, index) alone (``hftrain.data.epoch_sampler``), so this loader delivers the very
batches the run's loader delivers; and reading it neither consumes nor shifts the run's order: it
shares no sampler with the run and draws from no global random generator (its order and its base
seed come from private generators). Under N processes the batches are the global order: batch k
goes to process (k - 1) mod N.

Each panel is one collated image: the whole padded canvas in uint8, before the normalisation done on
the device (``hftrain.models.inputs``), the padding hatched. The boxes are read back from the packed
labels the loss gets (``hftrain.data.collate.unpack_labels``: normalised cxcywh) and scaled by what the
model takes them relative to: each image's own extent (read from the pixel mask) for models that read
the mask, the padded canvas for the others. A box conversion that went wrong in the collate therefore
shows as boxes away from their objects.
"""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from hftrain.data.collate import unpack_labels
from hftrain.data.loader import make_train_loader
from hftrain.report import draw

FILE = "train_batch.png"
IMAGES = 16
"""Images drawn at the start of training: the first batches of the epoch up to this many."""
COLUMNS = 4
HEADER = 34
"""Height of the two caption lines above the panels."""
HATCH = ((58, 58, 58), (112, 72, 112))
"""The two colours of the diagonal stripes that mark padding."""
HATCH_PERIOD = 8
"""Pixels (in the picture) of one stripe pair."""


def loader_like_training(data, batch_size: int, data_cfg, seed: int, needs, num_processes: int = 1):
    """A training loader of its own: ``make_train_loader`` with the run's dataset, batch size, data
    section (sampler, aspect-ratio groups), seed, collate (``needs``: the detector's ``uses_pixel_mask``
    and ``pad_to_multiple``) and number of processes (the multi-scale side of a batch depends on it),
    read in this process (no workers, no pinning)."""
    return make_train_loader(data, batch_size, replace(data_cfg, num_workers=0, pin_memory=False), seed, needs,
                             num_processes=num_processes)


def set_epoch(loader, epoch: int) -> None:
    """What Accelerate's prepared loader does in ``set_epoch``: the batch sampler's epoch, or its sampler's."""
    batch_sampler = loader.batch_sampler
    if hasattr(batch_sampler, "set_epoch"):
        batch_sampler.set_epoch(epoch)
    elif hasattr(getattr(batch_sampler, "sampler", None), "set_epoch"):
        batch_sampler.sampler.set_epoch(epoch)
    else:
        raise TypeError(f"the training loader's sampler {type(batch_sampler).__name__} has no set_epoch")


def first_batches(loader, epoch: int, images: int = IMAGES) -> list[dict]:
    """The first batches of ``epoch`` that hold ``images`` images, as the loader collates them (a batch
    whose every image failed to decode is skipped, as training skips it)."""
    set_epoch(loader, epoch)
    batches, count = [], 0
    for batch in loader:
        if batch["pixel_values"] is None:
            continue
        batches.append(batch)
        count += batch["images"]
        if count >= images:
            break
    return batches


def loss_boxes(batch: dict, uses_pixel_mask: bool) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per image of a collated batch: the boxes the loss gets as absolute ``[x1, y1, x2, y2]`` canvas
    pixels, and their class ids. The normalised cxcywh labels are scaled by each image's extent in the
    pixel mask (``uses_pixel_mask``) or by the padded canvas."""
    _, _, height, width = batch["pixel_values"].shape
    out = []
    for i, target in enumerate(unpack_labels(batch)):
        if uses_pixel_mask:
            mask = batch["pixel_mask"][i]
            ref_h, ref_w = int(mask.any(dim=1).sum()), int(mask.any(dim=0).sum())
        else:
            ref_h, ref_w = height, width
        cx, cy, w, h = target["boxes"].double().numpy().reshape(-1, 4).T
        boxes = np.stack([(cx - w / 2) * ref_w, (cy - h / 2) * ref_h, (cx + w / 2) * ref_w, (cy + h / 2) * ref_h], 1)
        out.append((boxes, target["class_labels"].numpy()))
    return out


def panel_height(batches: list[dict], cell: int = draw.CELL) -> int:
    """Height of every panel: that of the tallest canvas scaled to ``cell`` on its longer side (less
    than ``cell`` when all canvases are landscape)."""
    return max(round(cell * min(1.0, b["pixel_values"].shape[-2] / b["pixel_values"].shape[-1])) for b in batches)


def panel_origin(index: int, columns: int = COLUMNS, cell: int = draw.CELL,
                 height: int | None = None) -> tuple[int, int]:
    """Top-left pixel of image ``index``'s panel (its canvas' top-left corner); ``height``: of a panel
    (:func:`panel_height`; ``cell`` by default)."""
    row, col = divmod(index, columns)
    height = cell if height is None else height
    return draw.GAP + col * (cell + draw.GAP), HEADER + draw.GAP + row * (height + draw.TITLE + draw.GAP) + draw.TITLE


def render_panel(pixels, mask, boxes, labels, class_names: list[str], cell: int = draw.CELL,
                 height: int | None = None) -> Image.Image:
    """One ``cell`` x ``height`` panel: the canvas (uint8 (3, H, W)) scaled so its longer side is ``cell``,
    padding (``mask`` False) hatched, boxes (canvas xyxy) outlined and named in their class's colour."""
    _, canvas_h, canvas_w = pixels.shape
    scale = draw.panel_scale((canvas_w, canvas_h), cell)
    size = (max(1, round(canvas_w * scale)), max(1, round(canvas_h * scale)))
    image = Image.fromarray(pixels.permute(1, 2, 0).numpy()).resize(size, Image.BILINEAR)
    padding = np.asarray(Image.fromarray(~mask.numpy()).resize(size, Image.NEAREST))
    if padding.any():
        ys, xs = np.nonzero(padding)
        stripes = ((xs + ys) // (HATCH_PERIOD // 2)) % 2
        shown = np.array(image)
        shown[ys, xs] = np.array(HATCH, dtype=np.uint8)[stripes]
        image = Image.fromarray(shown)
    panel = Image.new("RGB", (cell, cell if height is None else height), draw.BACKGROUND)
    panel.paste(image, (0, 0))
    names = [class_names[c] if 0 <= c < len(class_names) else f"class {c}" for c in labels.tolist()]
    draw.draw_boxes(panel, boxes.tolist(), [draw.class_colour(int(c)) for c in labels], names, scale,
                    draw.line_width(cell))
    return panel


def batch_grid(batches: list[dict], class_names: list[str], uses_pixel_mask: bool, epoch: int,
               images: int | None = IMAGES, processes: int = 1, columns: int = COLUMNS,
               cell: int = draw.CELL) -> Image.Image:
    """The picture: the first ``images`` images (None: all) of ``batches``, ``columns`` panels a row
    (:func:`panel_origin`, :func:`panel_height`), each captioned with its batch, image id, canvas size and
    box count, under two lines saying what is shown."""
    panels = [(number, i, batch) for number, batch in enumerate(batches, 1) for i in range(batch["images"])]
    panels = panels[:images] if images is not None else panels
    if not panels:
        raise ValueError("train batch picture: the loader delivered no image")
    columns = max(1, min(columns, len(panels)))
    rows = math.ceil(len(panels) / columns)
    font = draw.font(11)
    batch_size = max(batch["images"] for _, _, batch in panels)
    reference = "each image's extent (pixel mask)" if uses_pixel_mask else "the padded canvas"
    lines = [f"epoch {epoch}: the first {len(panels)} training images ({panels[-1][0]} batch(es) of {batch_size}) as the "
             f"model receives them: augmented, uint8 before normalisation",
             f"padding hatched; boxes read back from the loss's labels (normalised cxcywh, relative to {reference})"
             + (f"; batch k trains on process (k - 1) mod {processes}" if processes > 1 else "")]
    text_width = math.ceil(max(font.getlength(line) for line in lines))
    width = max(draw.GAP + columns * (cell + draw.GAP), 2 * draw.GAP + text_width)
    height = panel_height([batch for _, _, batch in panels], cell)
    grid = Image.new("RGB", (width, HEADER + draw.GAP + rows * (height + draw.TITLE + draw.GAP)), draw.BACKGROUND)
    pen = ImageDraw.Draw(grid)
    for n, line in enumerate(lines):
        pen.text((draw.GAP, 3 + 15 * n), line, fill=(230, 230, 230), font=font)
    boxes_of = {}
    for index, (number, i, batch) in enumerate(panels):
        if number not in boxes_of:
            boxes_of[number] = loss_boxes(batch, uses_pixel_mask)
        boxes, labels = boxes_of[number][i]
        x, y = panel_origin(index, columns, cell, height)
        pixels, mask = batch["pixel_values"][i], batch["pixel_mask"][i]
        grid.paste(render_panel(pixels, mask, boxes, labels, class_names, cell, height), (x, y))
        canvas = "x".join(map(str, pixels.shape[-2:]))
        caption = f"batch {number} #{i + 1}: image {int(batch['image_ids'][i])}, {canvas}, {len(labels)} box(es)"
        pen.text((x + 2, y - draw.TITLE + 3), caption, fill=(230, 230, 230), font=font)
    return grid


def save_png(image: Image.Image, path: Path) -> None:
    """Write ``path`` whole or not at all (a viewer never reads half a picture)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    image.save(partial, format="PNG")
    partial.replace(path)
