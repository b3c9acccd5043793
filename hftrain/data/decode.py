"""Decode an image file into an RGB PIL image the way training sees it.

EXIF orientation is applied (so the size is the displayed size, which the annotations use),
and CMYK, grayscale, palette, 16-bit and alpha images are converted to 8-bit RGB:

- 16-bit data (``I;16*``, and ``I`` holding 16-bit samples) is scaled by its bit depth,
  ``round(v * 255 / 65535)``, the same for every image, never clipped at 255 and never
  stretched by the image's own maximum (which would change brightness from frame to frame);
- alpha (RGBA, LA, PA, palette with transparency) is composited on black;
- modes with no sensible RGB reading (``F``, ``LAB``, ``HSV`` ...) raise ``UnsupportedMode``.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image, ImageFile, ImageOps

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
"""The image files hftrain finds by extension (any case) in a folder: LabelImg-style VOC folders,
``hftrain predict`` and ``hftrain export`` folders."""

SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")
CONVERTIBLE_MODES = ("1", "L", "P", "RGB", "RGBA", "RGBX", "RGBa", "LA", "La", "PA", "CMYK", "YCbCr")


class UnsupportedMode(ValueError):
    """The image decodes but its pixel mode has no defined conversion to RGB."""


def decode_image(source: str | Path | bytes) -> Image.Image:
    """Fully decode ``source`` (a path or encoded bytes) to an 8-bit RGB image.

    Raises OSError (or PIL's errors) for unreadable or truncated files: opening the header is
    not enough, so the pixels are loaded here, with truncated files refused.
    """
    return decode_for_size(source, None)[0]


def decode_for_size(source: str | Path | bytes,
                    size_for: Callable[[int, int], tuple[int, int]] | None) -> tuple[Image.Image, tuple[int, int]]:
    """Decode ``source`` for a resize to ``size_for(height, width)``; returns the RGB image and
    the (height, width) of the full image as displayed (after EXIF orientation).

    JPEG draft mode: when the output is at most half the stored image on both axes, libjpeg
    decodes at 1/2, 1/4 or 1/8 scale (DCT scaling, much less work), never below the output
    size; the caller resizes from there. The output size must then follow the full size, not the
    decoded one (``prepare_image(..., source_size=...)``). No effect on upscales or other formats.
    """
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    handle = io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else open(source, "rb")
    with handle, Image.open(handle) as image:
        stored_w, stored_h = image.size
        if size_for is not None:
            out_h, out_w = size_for(stored_h, stored_w)  # the size rule is symmetric under transposition
            if stored_w >= 2 * out_w and stored_h >= 2 * out_h:
                image.draft(None, (out_w, out_h))
        decoded_size = image.size
        image.load()
        image = ImageOps.exif_transpose(image)
        swapped = image.size != decoded_size
        return to_rgb(image), ((stored_w, stored_h) if swapped else (stored_h, stored_w))


def to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB from any supported PIL mode; 16-bit data is scaled by bit depth, not clipped."""
    if image.mode == "RGB":
        return image
    if image.mode in SIXTEEN_BIT_MODES:
        array = np.asarray(image).astype(np.int64)
        array = np.clip(array, 0, 65535)  # "I" is 32-bit signed; 16-bit sources never leave this range
        return Image.fromarray(((array + 128) // 257).astype(np.uint8), "L").convert("RGB")
    if image.mode not in CONVERTIBLE_MODES:
        raise UnsupportedMode(f"image mode {image.mode!r} has no defined conversion to RGB")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGB", image.size, (0, 0, 0))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return image.convert("RGB")


SWAPPING_ORIENTATIONS = (5, 6, 7, 8)
"""EXIF orientations that turn the image by 90 degrees (``exif_transpose`` swaps width and height)."""


def exif_orientation(image: Image.Image) -> int:
    """The EXIF Orientation tag (1 when absent or when the EXIF block is corrupt)."""
    try:
        return int(image.getexif().get(0x0112, 1))
    except Exception:  # corrupt EXIF: the pixels decoded, the orientation is unknown
        return 1
