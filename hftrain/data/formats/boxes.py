"""Box cleaning shared by every reader: clip to the image, drop degenerate and non-finite boxes."""

from __future__ import annotations

import math

from hftrain.data.formats.report import ConversionReport

MIN_BOX_SIDE = 1.0
"""Boxes narrower or lower than this many pixels after clipping are dropped."""


def clean_xywh(
    bbox, width: int, height: int, report: ConversionReport, where: str
) -> list[float] | None:
    """Clip a COCO ``[x, y, w, h]`` box to the image; None (counted in ``report``) when unusable."""
    if bbox is None or len(bbox) != 4:
        report.drop_box("malformed bbox", where)
        return None
    try:
        x, y, w, h = (float(v) for v in bbox)
    except (TypeError, ValueError):
        report.drop_box("malformed bbox", where)
        return None
    if not all(math.isfinite(v) for v in (x, y, w, h)):
        report.drop_box("non-finite coordinates", where)
        return None
    x1, y1 = max(0.0, x), max(0.0, y)
    x2, y2 = min(float(width), x + w), min(float(height), y + h)
    if (x1, y1, x2, y2) != (x, y, x + w, y + h):
        report.change_box("clipped to image", where)
    if x2 - x1 < MIN_BOX_SIDE or y2 - y1 < MIN_BOX_SIDE:
        report.drop_box(f"smaller than {MIN_BOX_SIDE:g} px after clipping", where)
        return None
    return [x1, y1, x2 - x1, y2 - y1]
