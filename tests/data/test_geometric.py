"""Zoom-out, crops, DETR's resize, ultralytics' affine and the one-resample render (hftrain.data.geometric),
on hand-made images whose boxes are known."""

from __future__ import annotations

import random

import torch

from hftrain.data import geometric as g


def sample_with(boxes, height=80, width=100):
    """A sample whose pixels are their own coordinates (red = x, green = y), with xywh ``boxes``."""
    ys, xs = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    pixels = torch.stack([xs, ys, torch.full_like(xs, 7)]).to(torch.uint8)
    boxes = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    return {"pixel_values": pixels, "boxes": boxes, "class_labels": torch.arange(len(boxes)), "image_id": 1,
            "orig_size": (height, width), "failed": 0}


def test_a_box_survives_a_crop_at_known_coordinates_and_the_pixels_are_the_cut():
    sample = sample_with([[30, 20, 20, 20]])
    view = g.View.whole(sample["pixel_values"])
    cropped, view = g.crop(sample, view, left=25, top=10, width=50, height=40)
    out = g.render(cropped, view, view.size())  # no resize: the window as it is
    assert out["boxes"].tolist() == [[5.0, 10.0, 20.0, 20.0]]
    assert torch.equal(out["pixel_values"], sample["pixel_values"][:, 10:50, 25:75])
    assert out["boxes_dropped"] == 0 and out["class_labels"].tolist() == [0]
    # rendered at twice the size: one resample, boxes scaled with it
    double = g.render(cropped, view, (80, 100))
    assert double["boxes"].tolist() == [[10.0, 20.0, 40.0, 40.0]]
    assert double["pixel_values"].shape == (3, 80, 100)


def test_a_box_cut_to_nothing_is_dropped_and_counted_one_wholly_outside_is_not():
    # box 0 inside; box 1 reaches 0.5 px into the crop (under 1 px: dropped, counted);
    # box 2 wholly outside the crop (nothing of it visible: left out, not counted)
    sample = sample_with([[30, 20, 20, 20], [74.5, 30, 10, 10], [90, 60, 5, 5]])
    view = g.View.whole(sample["pixel_values"])
    cropped, view = g.crop(sample, view, left=25, top=10, width=50, height=40)
    assert cropped["class_labels"].tolist() == [0]
    assert cropped["boxes_dropped"] == 1
    assert g.render(cropped, view, view.size())["boxes_dropped"] == 1  # counted once


def test_iou_crop_keeps_only_boxes_whose_centre_is_inside_and_counts_the_others():
    sample = sample_with([[5, 5, 30, 30], [40, 30, 20, 20], [70, 50, 25, 25]])
    for seed in range(30):
        view = g.View.whole(sample["pixel_values"])
        out, view = g.iou_crop(sample, view, random.Random(seed))
        if view.is_whole(sample["pixel_values"]):
            assert torch.equal(out["boxes"], sample["boxes"])  # 'leave as is' drawn
            continue
        rendered = g.render(out, view, view.size())
        h, w = view.size()
        boxes = rendered["boxes"]
        assert ((boxes[:, :2] >= 0) & (boxes[:, :2] + boxes[:, 2:] <= torch.tensor([w, h]))).all()
        # every original box is kept (centre inside), dropped and counted (reaching in), or wholly outside
        x0, y0 = view.x0, view.y0
        kept = set(rendered["class_labels"].tolist())
        for label, (bx, by, bw, bh) in enumerate(sample["boxes"].tolist()):
            cx, cy = bx + bw / 2 - x0, by + bh / 2 - y0
            if label in kept:
                assert 0 < cx < w and 0 < cy < h
        outside = sum(1 for bx, by, bw, bh in sample["boxes"].tolist()
                      if bx + bw <= x0 or bx >= x0 + w or by + bh <= y0 or by >= y0 + h)
        assert len(kept) + rendered["boxes_dropped"] + outside == 3


def test_zoom_out_places_the_image_on_a_zero_canvas_and_shifts_its_boxes():
    sample = sample_with([[30, 20, 20, 20]])
    view = g.zoom_out(g.View.whole(sample["pixel_values"]), ratio=2.0, rx=0.5, ry=0.5)
    assert view.size() == (160, 200) and (view.x0, view.y0) == (-50, -40)
    out = g.render(sample, view, view.size())
    assert torch.equal(out["pixel_values"][:, 40:120, 50:150], sample["pixel_values"])
    mask = torch.ones(160, 200, dtype=torch.bool)
    mask[40:120, 50:150] = False
    assert (out["pixel_values"][:, mask] == 0).all()
    assert out["boxes"].tolist() == [[80.0, 60.0, 20.0, 20.0]]
    # the same zoom rendered at the original size: one resample to half, boxes with it
    small = g.render(sample, view, (80, 100))
    assert small["boxes"].tolist() == [[40.0, 30.0, 10.0, 10.0]]


def test_resize_then_size_crop_then_resize_is_one_window():
    """DETR's crop branch: intermediate resize to half, a crop there, output at the crop's size: the
    output is the source's window at half resolution and the box follows."""
    sample = sample_with([[40, 20, 20, 20]])
    view = g.resize_view(g.View.whole(sample["pixel_values"]), (40, 50))  # half size
    cropped, view = g.crop(sample, view, left=10, top=5, width=30, height=20)  # source (20, 10)-(80, 50)
    assert (view.x0, view.y0, view.x1, view.y1) == (20, 10, 80, 50)
    out = g.render(cropped, view, view.size())
    assert out["pixel_values"].shape == (3, 20, 30)
    assert out["boxes"].tolist() == [[10.0, 5.0, 10.0, 10.0]]
    reference = g.resize(sample["pixel_values"][:, 10:50, 20:80], (20, 30))
    assert torch.equal(out["pixel_values"], reference)


def test_affine_identity_scale_and_box_candidates():
    sample = sample_with([[30, 20, 20, 20], [2, 2, 4, 4]])
    whole = g.View.whole(sample["pixel_values"])
    same = g.affine(whole, 1.0, 0.5, 0.5)
    assert (same.x0, same.y0, same.x1, same.y1) == (0, 0, 100, 80)
    out = g.render(sample, same, same.size())
    assert torch.equal(out["pixel_values"], sample["pixel_values"]) and torch.equal(out["boxes"], sample["boxes"])
    # half scale about the centre: the image in the middle at half size, gray around; the 4 px box
    # becomes 2 px, not over ultralytics' 2 px threshold: dropped and counted
    half = g.affine(whole, 0.5, 0.5, 0.5)
    out = g.render(sample, half, half.size())
    assert out["pixel_values"].shape == (3, 80, 100)
    assert (out["pixel_values"][:, :15, :] == g.AFFINE_FILL).all()
    assert out["boxes"].tolist() == [[40.0, 30.0, 10.0, 10.0]] and out["boxes_dropped"] == 1
    # moved right by 10% of the width at scale 1: the left 10 columns are gray, a box at the right edge clipped
    moved = g.affine(whole, 1.0, 0.6, 0.5)
    out = g.render(sample_with([[85, 10, 15, 30]]), moved, moved.size())
    assert (out["pixel_values"][:, :, :10] == g.AFFINE_FILL).all()
    assert torch.equal(out["pixel_values"][:, :, 10:], sample["pixel_values"][:, :, :90])
    assert out["boxes"].tolist() == [[95.0, 10.0, 5.0, 30.0]]  # 5 x 30 of 15 x 30: a third, kept


def test_box_candidates_rule():
    before = torch.tensor([[0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 100, 10], [0, 0, 10, 10]], dtype=torch.float32)
    after = torch.tensor([[0, 0, 10, 10], [0, 0, 2, 10], [0, 0, 100, 0.9], [0, 0, 3, 3]], dtype=torch.float32)
    # kept; 2 px wide (not over 2); 0.9 px high; 9% of the area (not over 10%)
    assert g.box_candidates(before, after).tolist() == [True, False, False, False]
