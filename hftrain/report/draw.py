"""Boxes drawn on images with PIL: the prediction grid of a run's fixed validation images.

No matplotlib here, so the grid is drawn whether or not plots are enabled. Each image becomes
two panels side by side, ground truth then predictions, ``columns`` such pairs per row. A panel
is a ``cell`` x ``cell`` square under a ``TITLE`` pixel strip; the image is scaled to fit
(longest side = ``cell``) and placed at the panel's top-left corner. Boxes are outlined in
their class's colour (``class_colour``) and labelled with the class name (and score for
predictions) on a patch of the same colour. Ground-truth ignore regions (crowd, difficult) are
grey and labelled ``(ignored)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from PIL import Image, ImageDraw, ImageFont

CELL = 256
"""Default panel side in pixels."""
GAP = 4
"""Pixels between panels and around the grid."""
TITLE = 18
"""Height of the title strip above each panel."""
BACKGROUND = (24, 24, 24)
IGNORED = (150, 150, 150)

PALETTE = [
    (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
    (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (220, 190, 255),
    (170, 110, 40), (255, 250, 200), (128, 0, 0), (170, 255, 195), (128, 128, 0), (255, 215, 180),
    (0, 0, 128), (255, 255, 255),
]
"""Twenty well-separated colours (Sasha Trubetskoy's list); classes beyond them get golden-ratio hues."""


def class_colour(index: int) -> tuple[int, int, int]:
    """A distinct RGB colour per class index (the same in every picture of every run)."""
    if index < len(PALETTE):
        return PALETTE[index]
    hue = (index * 0.618033988749895) % 1.0
    image = Image.new("HSV", (1, 1), (int(hue * 255), 200, 230)).convert("RGB")
    return image.getpixel((0, 0))


@dataclass
class Sample:
    """One image with its ground truth and predictions, boxes as absolute ``[x1, y1, x2, y2]``."""

    image: Image.Image
    image_id: int
    gt_boxes: list[list[float]] = field(default_factory=list)
    gt_labels: list[int] = field(default_factory=list)
    gt_ignored: list[bool] = field(default_factory=list)
    pred_boxes: list[list[float]] = field(default_factory=list)
    pred_labels: list[int] = field(default_factory=list)
    pred_scores: list[float] = field(default_factory=list)


def panel_origin(index: int, which: int, columns: int, cell: int = CELL) -> tuple[int, int]:
    """Top-left pixel of the image area of sample ``index``'s panel ``which`` (0 ground truth, 1 predictions)."""
    row, col = divmod(index, columns)
    x = GAP + (2 * col + which) * (cell + GAP)
    y = GAP + row * (cell + TITLE + GAP) + TITLE
    return x, y


def panel_scale(image_size: tuple[int, int], cell: int = CELL) -> float:
    """Factor from image pixels to panel pixels (the longest side becomes ``cell``)."""
    return cell / max(image_size)


def box_outline(box: list[float], scale: float) -> tuple[int, int, int, int]:
    """The panel pixels ``(left, top, right, bottom)`` (inclusive) of a box's outline."""
    x1, y1, x2, y2 = (v * scale for v in box)
    return math.floor(x1), math.floor(y1), max(math.floor(x1), math.ceil(x2) - 1), max(math.floor(y1), math.ceil(y2) - 1)


def line_width(cell: int = CELL) -> int:
    return max(2, cell // 128)


def font(size: int):
    """PIL's default font at ``size`` pixels (its one bitmap size on Pillow < 10.1)."""
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: one bitmap size
        return ImageFont.load_default()


def _text_colour(colour) -> tuple[int, int, int]:
    r, g, b = colour
    return (0, 0, 0) if 0.299 * r + 0.587 * g + 0.114 * b > 140 else (255, 255, 255)


def draw_boxes(panel: Image.Image, boxes, colours, texts, scale: float, width: int) -> None:
    """Outline each box in its colour and label it on a patch of that colour (above the box when it fits)."""
    draw = ImageDraw.Draw(panel)
    label_font = font(max(10, width * 5))
    for box, colour, text in zip(boxes, colours, texts):
        left, top, right, bottom = box_outline(box, scale)
        draw.rectangle((left, top, right, bottom), outline=colour, width=width)
        if not text:
            continue
        tl, tt, tr, tb = draw.textbbox((0, 0), text, font=label_font)
        tw, th = tr - tl + 4, tb - tt + 2
        y = top - th if top - th >= 0 else top
        x = min(left, max(0, panel.width - tw))
        draw.rectangle((x, y, x + tw - 1, y + th - 1), fill=colour)
        draw.text((x + 2 - tl, y + 1 - tt), text, fill=_text_colour(colour), font=label_font)


def render_panel(sample: Sample, which: int, class_names: list[str], score_threshold: float,
                 cell: int = CELL, max_boxes: int = 50) -> Image.Image:
    """One ``cell`` x ``cell`` panel: the scaled image with ground truth (0) or predictions (1) drawn."""
    scale = panel_scale(sample.image.size, cell)
    size = (max(1, round(sample.image.width * scale)), max(1, round(sample.image.height * scale)))
    panel = Image.new("RGB", (cell, cell), BACKGROUND)
    panel.paste(sample.image.convert("RGB").resize(size, Image.BILINEAR), (0, 0))
    width = line_width(cell)
    if which == 0:
        ignored = sample.gt_ignored or [False] * len(sample.gt_boxes)
        order = sorted(range(len(sample.gt_boxes)), key=lambda i: not ignored[i])  # ignore regions underneath
        colours = [IGNORED if ignored[i] else class_colour(sample.gt_labels[i]) for i in order]
        texts = ["(ignored)" if ignored[i] else class_names[sample.gt_labels[i]] for i in order]
        draw_boxes(panel, [sample.gt_boxes[i] for i in order], colours, texts, scale, width)
    else:
        keep = [i for i, s in enumerate(sample.pred_scores) if s >= score_threshold]
        keep = sorted(keep, key=lambda i: sample.pred_scores[i])[-max_boxes:]  # best drawn last, on top
        colours = [class_colour(sample.pred_labels[i]) for i in keep]
        texts = [f"{_name(class_names, sample.pred_labels[i])} {sample.pred_scores[i]:.2f}" for i in keep]
        draw_boxes(panel, [sample.pred_boxes[i] for i in keep], colours, texts, scale, width)
    return panel


def _name(class_names: list[str], label: int) -> str:
    return class_names[label] if 0 <= label < len(class_names) else f"class {label}"


def prediction_grid(samples: list[Sample], class_names: list[str], score_threshold: float = 0.3,
                    columns: int = 2, cell: int = CELL) -> Image.Image:
    """The grid: per sample a ground-truth panel and a predictions panel (scores >= ``score_threshold``)."""
    if not samples:
        raise ValueError("prediction_grid: no samples to draw")
    columns = max(1, min(columns, len(samples)))
    rows = math.ceil(len(samples) / columns)
    width = GAP + 2 * columns * (cell + GAP)
    height = GAP + rows * (cell + TITLE + GAP)
    grid = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(grid)
    caption_font = font(11)
    for index, sample in enumerate(samples):
        for which in (0, 1):
            x, y = panel_origin(index, which, columns, cell)
            grid.paste(render_panel(sample, which, class_names, score_threshold, cell), (x, y))
            if which == 0:
                caption = f"image {sample.image_id}: ground truth ({len(sample.gt_boxes)})"
            else:
                shown = sum(s >= score_threshold for s in sample.pred_scores)
                caption = f"predictions >= {score_threshold:.2f} ({shown})"
            draw.text((x + 2, y - TITLE + 3), caption, fill=(230, 230, 230), font=caption_font)
    return grid
