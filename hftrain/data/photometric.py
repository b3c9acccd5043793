"""Colour augmentation on uint8 (3, H, W) images: RT-DETR's photometric distort and ultralytics' HSV jitter.

Neither moves a pixel, so boxes are untouched. The parameters are drawn from the sample's generator
(``rng``, a ``random.Random`` seeded by (seed, epoch, index)) by the ``*_params`` functions, in a fixed
order, and applied by the others, which are deterministic.

Speed: the photometric distort's brightness, contrast, saturation, hue and channel permutation are all
linear in RGB (hue as a rotation about the gray axis in YIQ, the usual linear form), so they are
composed into one 3x4 matrix and applied in one pass over the pixels (float32, clamped once at the
end; torchvision clamps after each step, which differs only where an intermediate value leaves
0..255). The HSV jitter is exact in HSV (ultralytics' multiplicative gains), vectorised and branch-free
(see :func:`hsv_jitter`). Layout changes (channels-last uint8 <-> float planes) go through numpy, whose
strided casts are several times faster than torch's here.
"""

from __future__ import annotations

import math

import numpy as np
import torch

GRAY = torch.tensor([0.2989, 0.587, 0.114])
"""torchvision's rgb_to_grayscale weights (ITU-R 601-2)."""

BRIGHTNESS, CONTRAST, SATURATION, HUE = (0.875, 1.125), (0.5, 1.5), (0.5, 1.5), (-0.05, 0.05)
"""torchvision v2 RandomPhotometricDistort's default ranges (RT-DETR uses the defaults)."""

_RGB_TO_YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
_YIQ_TO_RGB = torch.linalg.inv(_RGB_TO_YIQ)


def photometric_params(rng, p: float) -> dict:
    """torchvision v2's draws: each of brightness, contrast, saturation and hue with probability ``p``
    (then its factor), whether contrast comes before saturation/hue, and a channel permutation with
    probability ``p``."""
    params = {}
    for name, (low, high) in (("brightness", BRIGHTNESS), ("contrast", CONTRAST), ("saturation", SATURATION),
                              ("hue", HUE)):
        params[name] = rng.uniform(low, high) if rng.random() < p else None
    params["contrast_before"] = rng.random() < 0.5
    params["permutation"] = rng.sample(range(3), 3) if rng.random() < p else None
    return params


def colour_matrix(params: dict, gray_mean: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The 3x3 matrix and 3-vector bias (out = M @ rgb + b) of the photometric distort ``params`` on an
    image whose grayscale mean is ``gray_mean`` (contrast blends towards the mean of the image it is
    applied to: brightness scales it, saturation and hue keep it)."""
    matrix, bias = torch.eye(3), torch.zeros(3)
    mean = gray_mean

    def contrast():
        nonlocal matrix, bias
        c = params["contrast"]
        matrix, bias = c * matrix, c * bias + (1 - c) * mean

    if params["brightness"] is not None:
        matrix, mean = params["brightness"] * matrix, params["brightness"] * mean
    if params["contrast"] is not None and params["contrast_before"]:
        contrast()
    if params["saturation"] is not None:
        s = params["saturation"]
        step = s * torch.eye(3) + (1 - s) * GRAY.expand(3, 3)  # blend with the grayscale image
        matrix, bias = step @ matrix, step @ bias
    if params["hue"] is not None:
        angle = 2 * math.pi * params["hue"]
        rotation = torch.tensor([[1.0, 0.0, 0.0], [0.0, math.cos(angle), -math.sin(angle)],
                                 [0.0, math.sin(angle), math.cos(angle)]])
        step = _YIQ_TO_RGB @ rotation @ _RGB_TO_YIQ
        matrix, bias = step @ matrix, step @ bias
    if params["contrast"] is not None and not params["contrast_before"]:
        contrast()
    if params["permutation"] is not None:
        matrix, bias = matrix[params["permutation"]], bias[params["permutation"]]
    return matrix, bias


def gray_mean(pixels: torch.Tensor) -> float:
    """Mean grayscale level of a uint8 (3, H, W) image (torchvision's contrast reference), from a regular
    grid of about 65,000 pixels at most (every pixel of a small image): within a fraction of a level
    of the full mean on photographs, at a fraction of its cost on large images."""
    _, height, width = pixels.shape
    step = max(1, int((height * width / 65536) ** 0.5))
    sub = torch.from_numpy(pixels.numpy()[:, ::step, ::step].astype(np.float32, order="C"))  # numpy: 3x torch
    return float((sub * GRAY[:, None, None]).sum(0).mean())


def photometric_distort(pixels: torch.Tensor, params: dict, mean: float | None = None) -> torch.Tensor:
    """``pixels`` (uint8 (3, H, W)) with the distort ``params`` applied; a new tensor (channels-last).
    ``mean``: the grayscale mean that contrast uses (default: this image's)."""
    if all(params[k] is None for k in ("brightness", "contrast", "saturation", "hue", "permutation")):
        return pixels
    if params["contrast"] is not None and mean is None:
        mean = gray_mean(pixels)
    matrix, bias = colour_matrix(params, mean or 0.0)
    return apply_colour(pixels, matrix, bias)


def apply_colour(pixels: torch.Tensor, matrix: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """uint8 ``clamp(M @ rgb + b)`` per pixel (rounded); a new channels-last tensor. One (3, 3) x (3, H W)
    ``addmm`` on contiguous float planes, then one clamp: about 3x faster than 9 separate plane
    multiply-adds, and the same values."""
    planes = float_planes(pixels)
    out = torch.addmm((bias + 0.5)[:, None], matrix, planes.view(3, -1)).clamp_(0, 255)
    return uint8_channels_last(out.view(planes.shape))  # float -> uint8 truncates: + 0.5 above rounds


def float_planes(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 (3, H, W) in any layout -> contiguous float32 planes. Through numpy: its strided cast is
    several times faster than torch's ``contiguous().float()`` on a channels-last image."""
    return torch.from_numpy(pixels.numpy().astype(np.float32, order="C"))


def uint8_channels_last(planes: torch.Tensor) -> torch.Tensor:
    """float32 (3, H, W) planes with values in [0, 256) -> uint8 channels-last (truncated), the loader's
    layout, through numpy (its transposing cast is several times faster than torch's)."""
    return torch.from_numpy(planes.numpy().transpose(1, 2, 0).astype(np.uint8)).permute(2, 0, 1)


def hsv_params(rng, gains: list[float]) -> tuple[float, float, float]:
    """ultralytics' ``r = uniform(-1, 1, 3) * [hgain, sgain, vgain] + 1``."""
    return tuple(rng.uniform(-1.0, 1.0) * g + 1.0 for g in gains)


def hsv_jitter(pixels: torch.Tensor, factors: tuple[float, float, float]) -> torch.Tensor:
    """ultralytics' augment_hsv on a uint8 (3, H, W) image: hue times factors[0] (modulo the circle),
    saturation and value times factors[1] and factors[2], clipped; a new tensor (channels-last).

    Exact HSV arithmetic (within rounding of :mod:`colorsys`), about 3x faster than the plain float
    version: the forward conversion on int16 planes (the maximum, the chroma, which channel is the
    maximum as 0/1 from ``clamp(max - channel, max=1)`` since the inputs are whole numbers, the hue
    numerator), float only from the division by the chroma on; no ``torch.where`` or ``remainder`` (each
    several times the cost of an add on the CPU); the back conversion from each channel's hexagon weight
    ``clamp(|h - centre| - 1, 0, 1)`` with one fused multiply-add; nearly every step in place."""
    fh, fs, fv = factors
    r, g, b = torch.from_numpy(pixels.numpy().astype(np.int16, order="C"))
    value = torch.maximum(r, g)
    torch.maximum(value, b, out=value)
    chroma = torch.minimum(r, g)
    torch.minimum(chroma, b, out=chroma)
    chroma.neg_().add_(value)
    is_r = torch.sub(value, r).clamp_(max=1).bitwise_xor_(1)  # 1 where red is the maximum
    is_g = torch.sub(value, g).clamp_(max=1).bitwise_xor_(1).sub_(is_r).clamp_(min=0)  # green is, red is not
    # hue in sextants times the chroma: red g - b (+ 6c where g < b), green 2c + b - r, blue 4c + r - g
    hue = torch.sub(g, b)
    scratch = torch.neg(hue).clamp_(0, 1).mul_(chroma)  # c where g < b (whole numbers: b - g >= 1)
    hue.add_(scratch, alpha=6).mul_(is_r)
    torch.sub(b, r, out=scratch).add_(chroma, alpha=2).mul_(is_g)
    hue.add_(scratch)
    is_b = is_r.add_(is_g).bitwise_xor_(1)
    torch.sub(r, g, out=scratch).add_(chroma, alpha=4).mul_(is_b)
    hue.add_(scratch)
    # float from here, in one workspace (fewer fresh pages to fault in than a tensor per step)
    work = torch.empty((6, *hue.shape))
    planes, chroma, value, hue = work[:3], work[3].copy_(chroma), work[4].copy_(value), work[5].copy_(hue)
    chroma.clamp_(min=1e-6)  # 0 only for grays, whose hue numerator is 0 and whose drop below is 0 after rounding
    hue.div_(chroma).mul_(fh)
    hue.sub_(torch.mul(hue, 1 / 6, out=planes[0]).floor_().mul_(6))  # modulo the circle: [0, 6)
    drop = chroma.div_(value.clamp_(min=1e-6)).mul_(fs).clamp_(0, 1)  # the new saturation s
    value.mul_(fv).clamp_(0, 255)
    drop.mul_(value)  # v s: what the smallest channel loses from v
    value.add_(0.5)  # float -> uint8 truncates: rounds
    # hsv -> rgb: channel = v - v s w, w its hexagon weight (0 where it is the maximum, 1 the minimum);
    # red's weight is 1 - clamp(|h - 3| - 1, 0, 1), so red = (v - v s) + v s clamp(|h - 3| - 1, 0, 1),
    # its clamp term computed in green's plane (written after it)
    red_term = torch.sub(hue, 3.0, out=planes[1]).abs_().sub_(1).clamp_(0, 1)
    torch.sub(value, drop, out=planes[0]).addcmul_(red_term, drop)
    for channel, centre in ((1, 2.0), (2, 4.0)):
        weight = torch.sub(hue, centre, out=planes[channel]).abs_().sub_(1).clamp_(0, 1)
        torch.addcmul(value, weight, drop, value=-1, out=planes[channel])
    return uint8_channels_last(planes)
