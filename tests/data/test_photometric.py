"""RT-DETR's photometric distort and ultralytics' HSV jitter (hftrain.data.photometric) on known pixels."""

from __future__ import annotations

import colorsys
import random

import torch

from hftrain.data.photometric import hsv_jitter, hsv_params, photometric_distort, photometric_params

NONE = {"brightness": None, "contrast": None, "saturation": None, "hue": None, "contrast_before": True,
        "permutation": None}


def image(seed=0, height=24, width=32) -> torch.Tensor:
    """Random uint8 pixels in the channels-last layout the loader produces."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (height, width, 3), dtype=torch.uint8, generator=gen).permute(2, 0, 1)


def test_single_operations_match_their_definitions():
    x = image()
    bright = photometric_distort(x, {**NONE, "brightness": 1.1})
    assert (bright.int() - (x.float() * 1.1).round().clamp(0, 255).int()).abs().max() <= 1
    assert torch.equal(photometric_distort(x, {**NONE, "permutation": [2, 0, 1]}), x[[2, 0, 1]])
    gray = photometric_distort(x, {**NONE, "saturation": 0.0})  # no saturation: every channel the gray level
    expected = (0.2989 * x[0].float() + 0.587 * x[1].float() + 0.114 * x[2].float()).round()
    assert ((gray.float() - expected).abs() <= 1).all()
    flat = photometric_distort(x, {**NONE, "contrast": 0.0})  # no contrast: the image's mean gray everywhere
    assert flat.float().std() < 1 and abs(flat.float().mean() - expected.mean()) < 3
    assert torch.equal(photometric_distort(x, NONE), x)
    assert x.shape == bright.shape and bright.dtype == torch.uint8


def test_hue_rotation_keeps_gray_and_moves_colour():
    x = torch.tensor([[[200]], [[40]], [[40]]], dtype=torch.uint8).expand(3, 4, 4)  # red
    gray = torch.full((3, 4, 4), 90, dtype=torch.uint8)
    turned = photometric_distort(x, {**NONE, "hue": 0.05})
    assert not torch.equal(turned, x)
    assert ((photometric_distort(gray, {**NONE, "hue": 0.05}).int() - 90).abs() <= 1).all()


def test_hsv_jitter_is_ultralytics_gains_in_hsv():
    x = image(1)
    assert (hsv_jitter(x, (1.0, 1.0, 1.0)).int() - x.int()).abs().max() <= 1  # identity
    factors = (1.012, 1.5, 0.7)
    out = hsv_jitter(x, factors)
    for (r, g, b), got in zip(x.permute(1, 2, 0).reshape(-1, 3).tolist()[:50], out.permute(1, 2, 0).reshape(-1, 3).tolist()):
        h, s, v = colorsys.rgb_to_hsv(r / 255, g / 255, b / 255)
        want = colorsys.hsv_to_rgb((h * factors[0]) % 1.0, min(1.0, s * factors[1]), min(1.0, v * factors[2]))
        assert max(abs(a * 255 - b) for a, b in zip(want, got)) <= 1.01, ((r, g, b), got, want)


def test_hsv_jitter_matches_colorsys_on_grays_ties_and_the_hue_wrap():
    """Every branch of the branch-free conversion: grays and black, two channels tied for the maximum,
    red maximum with g < b (hue just under the full circle, where a gain above 1 wraps it), and each
    channel the maximum, against colorsys pixel by pixel."""
    values = [0, 1, 2, 17, 128, 254, 255]
    pixels = [(a, b, c) for a in values for b in values for c in values]  # every tie pattern
    pixels += [(200, 10, 11), (200, 10, 199), (255, 0, 1), (10, 200, 11), (11, 10, 200), (90, 90, 90)]
    x = torch.tensor(pixels, dtype=torch.uint8).t().reshape(3, 1, -1)
    for factors in ((1.015, 1.7, 0.6), (0.985, 0.3, 1.4), (1.3, 1.0, 1.0)):
        out = hsv_jitter(x, factors).reshape(3, -1).t().tolist()
        for (r, g, b), got in zip(pixels, out):
            h, s, v = colorsys.rgb_to_hsv(r / 255, g / 255, b / 255)
            want = colorsys.hsv_to_rgb((h * factors[0]) % 1.0, min(1.0, s * factors[1]), min(1.0, v * factors[2]))
            assert max(abs(a * 255 - b) for a, b in zip(want, got)) <= 1.01, ((r, g, b), factors, got, want)


def test_draws_follow_the_generator():
    a, b = photometric_params(random.Random("3:1:5"), 0.5), photometric_params(random.Random("3:1:5"), 0.5)
    assert a == b
    assert hsv_params(random.Random(1), [0.015, 0.7, 0.4]) == hsv_params(random.Random(1), [0.015, 0.7, 0.4])
    assert all(p is None for k, p in photometric_params(random.Random(0), 0.0).items() if k != "contrast_before")
