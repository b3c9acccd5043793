"""From the recipe's data section to PyTorch datasets and dataloaders."""

from __future__ import annotations

import random
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from hftrain.data.collate import Collate
from hftrain.data.decode import decode_image
from hftrain.data.schema import check_schema, class_names_of, resolve_image_path
from hftrain.data.sources import LoadedSplit, load_split
from hftrain.data.transforms import Resize, prepare_image


class DetectionDataset(Dataset):
    """Rows of the project's schema as uint8 image tensors and absolute xywh boxes.

    The Arrow table is read row by row (memory-mapped and shared by dataloader workers).
    Crowd and difficult boxes are ignore regions: they are not training targets. An image that
    fails to decode yields None, which the collate function drops and counts.
    """

    def __init__(self, split: LoadedSplit, resize: Resize, hflip: float = 0.0):
        check_schema(split.dataset, str(split.image_root))
        self.rows = split.dataset
        self.image_root = split.image_root
        self.resize = resize
        self.hflip = hflip

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict | None:
        row = self.rows[index]
        image_ref = row["image"]
        try:
            if image_ref.get("bytes"):
                image = decode_image(image_ref["bytes"])
            else:
                where = f"row {index} (image_id {row['image_id']})"
                image = decode_image(resolve_image_path(self.image_root, image_ref["path"], where))
        except (OSError, ValueError, SyntaxError) as err:
            print(f"[hftrain] skipping image {image_ref.get('path')!r}: {err}", flush=True)
            return None
        objects = [o for o in row["objects"] if not o["iscrowd"] and not o.get("difficult", 0)]
        boxes = np.array([o["bbox"] for o in objects], dtype=np.float32).reshape(-1, 4)
        pixels, boxes = prepare_image(
            image, boxes, (row["height"], row["width"]), self.resize, self.hflip, random
        )
        return {
            "pixel_values": pixels,
            "boxes": boxes,
            "class_labels": torch.tensor([o["category"] for o in objects], dtype=torch.long),
            "image_id": row["image_id"],
            "orig_size": (row["height"], row["width"]),
        }


@dataclass
class DataBundle:
    train: DetectionDataset
    val: DetectionDataset
    class_names: list[str]
    notes: list[str]


def materialise_synthetic(data_cfg):
    """If the recipe asks for the shapes demo, generate it and point train/val at its files."""
    syn = data_cfg.synthetic
    if syn is None:
        return data_cfg
    from hftrain.data.shapes import generate_shapes_coco

    out = Path(syn.out_dir)
    splits = {}
    for name, count, seed in (("train", syn.train_images, syn.seed), ("val", syn.val_images, syn.seed + 1)):
        labels = generate_shapes_coco(out, name, count, image_size=syn.image_size, seed=seed)
        splits[name] = replace(getattr(data_cfg, name), images=str(out / name), labels=str(labels))
    return replace(data_cfg, format="coco", synthetic=None, **splits)


def load_data(data_cfg) -> DataBundle:
    """Read both splits and wrap them as datasets; the class names come from the train split."""
    loaded = {}
    for name in ("train", "val"):
        split = getattr(data_cfg, name)
        loaded[name] = load_split(
            data_cfg.format, split.images, split.labels,
            sets=split.sets or None, modality=data_cfg.modality, drone_classes=data_cfg.drone_classes,
            category_map=data_cfg.category_map or None, max_missing=data_cfg.max_missing,
            read_image_sizes=data_cfg.read_image_sizes, subset=split.subset, seed=data_cfg.seed,
            cache_dir=data_cfg.cache_dir, blacklist=data_cfg.blacklist,
        )
    class_names = class_names_of(loaded["train"].dataset)
    val_names = class_names_of(loaded["val"].dataset)
    if val_names != class_names:
        raise ValueError(f"data.val: class names {val_names} differ from data.train's {class_names}")
    resize = Resize(data_cfg.min_size, data_cfg.max_size, square=data_cfg.resize == "square")
    notes = [line for split in loaded.values() for line in split.report.lines() + split.notes]
    return DataBundle(
        train=DetectionDataset(loaded["train"], resize, hflip=data_cfg.hflip),
        val=DetectionDataset(loaded["val"], resize, hflip=0.0),
        class_names=class_names,
        notes=notes,
    )


def make_loader(dataset: Dataset, batch_size: int, data_cfg, *, shuffle: bool, normalize_by_canvas: bool,
                seed: int, pad_to_multiple: int = 1) -> DataLoader:
    workers = data_cfg.num_workers
    generator = torch.Generator()
    generator.manual_seed(seed)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        num_workers=workers,
        collate_fn=Collate(normalize_by_canvas=normalize_by_canvas, pad_to_multiple=pad_to_multiple),
        pin_memory=data_cfg.pin_memory and torch.cuda.is_available(),
        persistent_workers=workers > 0,
        prefetch_factor=data_cfg.prefetch_factor if workers > 0 else None,
        generator=generator,
        drop_last=False,
    )

