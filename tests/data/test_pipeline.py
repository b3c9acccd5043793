"""The input pipeline: uint8 resize/flip/pad, labels, and pixels equal to the reference processor's."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader
from transformers.models.deformable_detr.image_processing_pil_deformable_detr import DeformableDetrImageProcessorPil

from helpers.fixtures_path import fixtures_dir
from hftrain.data.collate import Collate, unpack_labels
from hftrain.data.decode import decode_for_size, decode_image
from hftrain.data.transforms import Resize, prepare_image
from hftrain.models.detr_family import IMAGENET_MEAN, IMAGENET_STD
from hftrain.models.inputs import Normalize


def test_size_and_pixels_match_the_transformers_processor():
    """Our uint8 path + on-device normalisation vs DeformableDetrImageProcessorPil on a real image."""
    path = fixtures_dir() / "coco" / "000000040083.jpg"
    image = decode_image(path)
    processor = DeformableDetrImageProcessorPil(size={"shortest_edge": 200, "longest_edge": 300}, do_pad=False)
    reference = processor(images=image, return_tensors="pt")["pixel_values"][0]
    pixels, _ = prepare_image(image, np.zeros((0, 4)), (image.height, ow := image.width), Resize(200, 300), hflip=0.0)
    assert pixels.dtype == torch.uint8
    assert tuple(pixels.shape) == tuple(reference.shape)
    ours = Normalize(IMAGENET_MEAN, IMAGENET_STD, "cpu")(pixels[None])[0]
    # the processor resizes in float and rounds differently; one uint8 step is 1/255/std ~ 0.0175
    diff = (ours - reference).abs()
    assert diff.mean() < 0.01
    assert diff.max() < 0.05
    assert ow == image.width


def test_boxes_follow_resize_and_flip():
    image = Image.new("RGB", (200, 100))
    boxes = np.array([[10, 20, 30, 40]], dtype=np.float32)
    pixels, out = prepare_image(image, boxes, (100, 200), Resize(50, 1000), hflip=0.0)
    assert tuple(pixels.shape) == (3, 50, 100)
    assert out.tolist() == [[5.0, 10.0, 15.0, 20.0]]

    class Always:
        def random(self):
            return 0.0

    marked = np.zeros((100, 200, 3), dtype=np.uint8)
    marked[20:60, 10:40] = 255
    pixels, out = prepare_image(Image.fromarray(marked), boxes, (100, 200), Resize(100, 1000), hflip=1.0, rng=Always())
    assert out.tolist() == [[200 - 10 - 30, 20.0, 30.0, 40.0]]
    x, y, w, h = (int(v) for v in out[0])
    assert pixels[:, y:y + h, x:x + w].float().mean() > 250  # the flipped box still covers the marked pixels
    assert pixels[:, :, :x].float().mean() < 5


def sample(h, w, boxes, labels, image_id, orig):
    return {"pixel_values": torch.full((3, h, w), 7, dtype=torch.uint8), "boxes": torch.tensor(boxes, dtype=torch.float32),
            "class_labels": torch.tensor(labels), "image_id": image_id, "orig_size": orig}


@pytest.mark.parametrize("by_canvas", [False, True])
def test_collate_pads_masks_and_normalises_boxes(by_canvas):
    a = sample(40, 60, [[6, 4, 12, 8]], [1], 11, (80, 120))
    b = sample(50, 30, [[0, 0, 30, 50]], [2], 12, (50, 30))
    batch = Collate(normalize_by_canvas=by_canvas)([a, None, b])
    assert batch["skipped"] == 1 and batch["images"] == 2
    assert tuple(batch["pixel_values"].shape) == (2, 3, 50, 60)
    assert batch["pixel_values"].dtype == torch.uint8
    assert batch["pixel_mask"].dtype == torch.bool  # 1 byte a pixel through the workers and the copy
    assert batch["pixel_mask"][0, :40, :60].all() and not batch["pixel_mask"][0, 40:].any()
    assert batch["pixel_mask"][1, :, :30].all() and not batch["pixel_mask"][1, :, 30:].any()
    ref_a = (50, 60) if by_canvas else (40, 60)
    expected = [(6 + 6) / ref_a[1], (4 + 4) / ref_a[0], 12 / ref_a[1], 8 / ref_a[0]]
    assert unpack_labels(batch)[0]["boxes"][0].tolist() == pytest.approx(expected)
    # normalised coordinates times target_sizes land back in original pixels
    xyxy_norm = torch.tensor([(6) / ref_a[1], 4 / ref_a[0], 18 / ref_a[1], 12 / ref_a[0]])
    h, w = batch["target_sizes"][0].tolist()
    back = (xyxy_norm * torch.tensor([w, h, w, h])).tolist()
    assert back == pytest.approx([12, 8, 36, 24])  # original image is 2x the resized one


def test_labels_travel_as_one_tensor_and_unpack_to_per_image_views():
    """One packed label tensor per batch whatever the number of images (a worker sends each tensor
    through its own file descriptor); unpack_labels gives each image its int64 classes and normalised
    cxcywh boxes back, views of the packed tensor, also after a real dataloader worker sent the batch."""
    a = sample(40, 60, [[6, 4, 12, 8], [0, 0, 60, 40]], [3, 70000], 11, (40, 60))
    empty = sample(20, 20, [], [], 12, (20, 20))  # an image without boxes
    b = sample(50, 30, [[3, 5, 6, 10]], [1], 13, (50, 30))
    collate = Collate(normalize_by_canvas=False)
    batch = collate([a, empty, b])
    tensors = sorted(k for k, v in batch.items() if torch.is_tensor(v))
    assert tensors == ["image_ids", "labels_packed", "orig_sizes", "pixel_mask", "pixel_values", "target_sizes"]
    labels = unpack_labels(batch)
    assert [sorted(t) for t in labels] == [["boxes", "class_labels"]] * 3
    assert [t["class_labels"].dtype for t in labels] == [torch.long] * 3
    assert [t["class_labels"].tolist() for t in labels] == [[3, 70000], [], [1]]
    assert torch.allclose(labels[0]["boxes"], torch.tensor([[12 / 60, 8 / 40, 12 / 60, 8 / 40], [0.5, 0.5, 1.0, 1.0]]))
    assert labels[1]["boxes"].shape == (0, 4)
    assert labels[2]["boxes"][0].tolist() == pytest.approx([6 / 30, 10 / 50, 6 / 30, 10 / 50])
    assert labels[2]["boxes"].is_contiguous()
    assert labels[2]["boxes"].untyped_storage().data_ptr() == batch["labels_packed"].untyped_storage().data_ptr()
    (sent,) = DataLoader([a, empty, b], batch_size=3, num_workers=1, collate_fn=collate)
    for got, want in zip(unpack_labels(sent), labels, strict=True):
        assert torch.equal(got["class_labels"], want["class_labels"]) and torch.equal(got["boxes"], want["boxes"])


def test_batches_held_from_workers_hold_no_file_descriptors(shapes_dir):
    """The workers share batches by shared-memory name, not one file descriptor per tensor (which costs
    the training process a socket handshake per tensor and keeps a descriptor open per held tensor)."""
    from hftrain.data.loader import DetectionDataset, make_loader
    from hftrain.data.sources import load_split
    from hftrain.recipe import DataConfig

    split = load_split("coco", str(shapes_dir / "train"), str(shapes_dir / "train.json"))
    loader = make_loader(DetectionDataset(split, Resize(64, 64)), 2, DataConfig(num_workers=1), shuffle=False,
                         normalize_by_canvas=False, seed=0)
    assert len(list(loader)) == 12  # a first pass starts the (persistent) worker and its pipes
    before = len(os.listdir("/proc/self/fd"))
    held = list(loader)  # 12 batches of 6 tensors
    assert sum(torch.is_tensor(v) for batch in held for v in batch.values()) == 72
    assert len(os.listdir("/proc/self/fd")) - before < 6


def test_decode_converts_unusual_modes_to_rgb():
    images = fixtures_dir() / "images"
    for name in ("pil_sample_cmyk.jpg", "hopper_gray.jpg", "p_trns_single.png", "i_trns.png", "mode_16bit.png",
                 "transparent.webp"):
        decoded = decode_image(images / name)
        assert decoded.mode == "RGB", name
    rotated = decode_image(images / "hopper_orientation_6.jpg")
    plain = decode_image(images / "hopper.jpg")
    assert rotated.size == plain.size[::-1] or rotated.size == plain.size
    with pytest.raises(OSError):
        decode_image(images / "truncated_jpeg.jpg")


def processor_and_ours(path, min_size, max_size, draft):
    """Reference pixels (full decode + DeformableDetrImageProcessorPil) and ours, normalised."""
    processor = DeformableDetrImageProcessorPil(size={"shortest_edge": min_size, "longest_edge": max_size}, do_pad=False)
    reference = processor(images=decode_image(path), return_tensors="pt")["pixel_values"][0]
    resize = Resize(min_size, max_size)
    image, full = decode_for_size(path, resize.output_size if draft else None)
    pixels, _ = prepare_image(image, np.zeros((0, 4)), full, resize, hflip=0.0, source_size=full)
    return image, full, reference, Normalize(IMAGENET_MEAN, IMAGENET_STD, "cpu")(pixels[None])[0]


def test_upscale_matches_the_processor_and_never_drafts():
    """640x429 -> shortest edge 600 (an upscale, as BDD100K's 720 -> 750): full decode, 1 uint8 level."""
    path = fixtures_dir() / "coco" / "000000196141.jpg"
    image, full, reference, ours = processor_and_ours(path, 600, 1000, draft=True)
    assert (image.height, image.width) == full == (429, 640)
    assert ours.shape == reference.shape
    diff = (ours - reference).abs()
    assert diff.mean() < 0.01 and diff.max() < 0.05


@pytest.mark.parametrize("min_size,max_size,scale", [(200, 300, 2), (100, 150, 4)])
def test_jpeg_draft_decodes_smaller_within_the_stated_tolerance(min_size, max_size, scale):
    """Downscale >= 2x: libjpeg decodes at 1/scale, the output size still follows the full image,
    and the pixels stay within data.jpeg_draft's stated tolerance (mean |diff| < 0.1 normalised)."""
    path = fixtures_dir() / "coco" / "000000196141.jpg"
    image, full, reference, ours = processor_and_ours(path, min_size, max_size, draft=True)
    assert full == (429, 640)
    assert (image.height, image.width) == (-(-429 // scale), -(-640 // scale))  # decoded at 1/scale
    assert ours.shape == reference.shape  # sized from the full image, as the processor sizes it
    diff = (ours - reference).abs()
    assert diff.mean() < 0.1
    plain_image, _, _, plain = processor_and_ours(path, min_size, max_size, draft=False)
    assert plain_image.size == (640, 429)
    plain_diff = (plain - reference).abs()
    assert plain_diff.mean() < 0.01 and plain_diff.max() < 0.05  # without draft: 1 uint8 level


def test_draft_size_follows_exif_orientation(tmp_path):
    """A 400x200 JPEG stored sideways (EXIF orientation 6) and drafted at 1/4: the image comes back
    upright and the full size reported is the displayed one (400 high, 200 wide)."""
    stored = np.zeros((200, 400, 3), dtype=np.uint8)
    stored[:, :200] = 255
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "sideways.jpg"
    Image.fromarray(stored).save(path, exif=exif.tobytes())
    image, full = decode_for_size(path, Resize(40, 80).output_size)
    assert full == (400, 200)
    assert image.size == (50, 100)  # (width, height): upright, 1/4 of 200 x 400
    pixels, _ = prepare_image(image, np.zeros((0, 4)), full, Resize(40, 80), hflip=0.0, source_size=full)
    assert tuple(pixels.shape) == (3, 80, 40)
