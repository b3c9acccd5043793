"""What hftrain feeds the model equals transformers' own preparation (issue 18): for every training image
at a given (seed, epoch, index), hftrain's sample is ``RTDetrImageProcessorPil`` applied to the image
(or to its mirror image, with mirrored annotations, when hftrain's draw flipped it): same pixels, same
normalised boxes, same classes; and about half the images are flipped, a different half each epoch."""

from __future__ import annotations

import json

import torch
from PIL import Image, ImageOps
from transformers.models.rt_detr.image_processing_pil_rt_detr import RTDetrImageProcessorPil

from hftrain.data.collate import Collate, unpack_labels
from hftrain.data.loader import load_data
from hftrain.recipe import DataConfig, SplitConfig


def reference(image: Image.Image, annotations: list[dict], image_id: int, flipped: bool, size: int) -> dict:
    if flipped:
        image = ImageOps.mirror(image)
        width = image.width
        annotations = [{**a, "bbox": [width - a["bbox"][0] - a["bbox"][2], *a["bbox"][1:]]} for a in annotations]
    processor = RTDetrImageProcessorPil(size={"height": size, "width": size})
    out = processor(images=image, annotations={"image_id": image_id, "annotations": annotations}, return_tensors="pt")
    return {"pixel_values": out["pixel_values"][0], **out["labels"][0]}


def test_samples_equal_the_transformers_processor_flips_included(shapes_dir):
    cfg = DataConfig(train=SplitConfig(images=str(shapes_dir / "train"), labels=str(shapes_dir / "train.json")),
                     val=SplitConfig(images=str(shapes_dir / "val"), labels=str(shapes_dir / "val.json")),
                     resize="square", min_size=64, max_size=64, hflip=0.5, num_workers=0)
    data = load_data(cfg, seed=7)
    coco = json.loads((shapes_dir / "train.json").read_text())
    images = {im["id"]: im for im in coco["images"]}
    annotations: dict[int, list] = {}
    for a in coco["annotations"]:
        annotations.setdefault(a["image_id"], []).append(a)
    collate = Collate(normalize_by_canvas=True, pad_to_multiple=32)
    flips = {}
    for epoch in (1, 2):
        flips[epoch] = []
        for index in range(len(data.train)):
            sample = data.train[(epoch, index)]
            flipped = not torch.equal(sample["pixel_values"], data.train.load(index)["pixel_values"])
            flips[epoch].append(flipped)
            row = images[sample["image_id"]]
            image = Image.open(shapes_dir / "train" / row["file_name"]).convert("RGB")
            expected = reference(image, annotations.get(row["id"], []), row["id"], flipped, 64)
            batch = collate([sample])
            labels = unpack_labels(batch)[0]
            torch.testing.assert_close(batch["pixel_values"][0].float() / 255.0, expected["pixel_values"],
                                       atol=0.5 / 255, rtol=0)  # the images are 64 px: no resize, exact
            assert torch.equal(labels["class_labels"], expected["class_labels"] - 1)  # COCO ids 1..3 -> 0..2
            torch.testing.assert_close(labels["boxes"], expected["boxes"], atol=1e-6, rtol=0)
    assert 4 <= sum(flips[1]) <= 20 and flips[1] != flips[2]  # about half, drawn anew each epoch
