"""From the recipe's data section to PyTorch datasets and dataloaders."""

from __future__ import annotations

import random
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from hftrain.data.collate import Collate
from hftrain.data.decode import decode_for_size
from hftrain.data.epoch_sampler import EpochShuffle
from hftrain.data.schema import check_schema, class_names_of, resolve_image_path
from hftrain.data.sources import LoadedSplit, load_split
from hftrain.data.transforms import Resize, flip_horizontal, prepare_image


class DetectionDataset(Dataset):
    """Rows of the project's schema as uint8 image tensors and absolute xywh boxes.

    The Arrow table is read row by row (memory-mapped and shared by dataloader workers).
    Crowd and difficult boxes are ignore regions: they are not training targets. An image that
    fails to decode is replaced by the next one that does (``failed`` counts it), so batches keep
    their size and every process stays in step with the others.
    """

    def __init__(self, split: LoadedSplit, resize: Resize, hflip: float = 0.0, seed: int = 0):
        check_schema(split.dataset, str(split.image_root))
        self.rows = split.dataset
        self.image_root = split.image_root
        self.resize = resize
        self.hflip = hflip
        self.seed = seed

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def draft_for(self):
        """The output-size rule that lets a JPEG decode at reduced scale (None: full decode)."""
        return self.resize.output_size if self.resize.draft else None

    def __getitem__(self, key: int | tuple[int, int]) -> dict | None:
        """``key`` is an index, or ``(epoch, index)`` from EpochShuffle: then the sample's
        augmentation is seeded by (seed, epoch, index) and reproducible anywhere."""
        if isinstance(key, tuple):
            epoch, index = key
            rng = random.Random(f"{self.seed}:{epoch}:{index}")
        else:
            epoch, index, rng = 0, key, random
        sample = self.load(index)  # decoded and resized, not yet augmented
        if self.hflip > 0 and rng.random() < self.hflip:
            sample["pixel_values"], sample["boxes"] = flip_horizontal(sample["pixel_values"], sample["boxes"])
        return sample

    def load(self, index: int) -> dict:
        """Image ``index`` decoded and resized to the recipe's size (uint8 (3, H, W)), with its
        training boxes (absolute xywh in the resized frame) and labels; no augmentation."""
        failed = 0
        for attempt in range(len(self.rows)):  # a broken image is replaced by the next one that decodes
            row = self.rows[(index + attempt) % len(self.rows)]
            decoded = self._decode(row, index + attempt)
            if decoded is not None:
                break
            failed = 1
        else:
            raise RuntimeError(f"no image of the dataset under {self.image_root} decodes")
        image, source_size = decoded
        objects = [o for o in row["objects"] if not o["iscrowd"] and not o.get("difficult", 0)]
        boxes = np.array([o["bbox"] for o in objects], dtype=np.float32).reshape(-1, 4)
        pixels, boxes = prepare_image(
            image, boxes, (row["height"], row["width"]), self.resize, 0.0, source_size=source_size
        )
        return {
            "pixel_values": pixels,
            "boxes": boxes,
            "class_labels": torch.tensor([o["category"] for o in objects], dtype=torch.long),
            "image_id": row["image_id"],
            "orig_size": (row["height"], row["width"]),
            "failed": failed,  # this sample stands in for one that failed to decode (counted)
        }

    def _decode(self, row: dict, index: int):
        image_ref = row["image"]
        try:
            if image_ref.get("bytes"):
                return decode_for_size(image_ref["bytes"], self.draft_for)
            where = f"row {index} (image_id {row['image_id']})"
            return decode_for_size(resolve_image_path(self.image_root, image_ref["path"], where), self.draft_for)
        except (OSError, ValueError, SyntaxError) as err:
            print(f"[hftrain] skipping image {image_ref.get('path')!r}: {err}", flush=True)
            return None


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


def load_data(data_cfg, seed: int = 0) -> DataBundle:
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
    resize = Resize(data_cfg.min_size, data_cfg.max_size, square=data_cfg.resize == "square", draft=data_cfg.jpeg_draft)
    notes = [line for split in loaded.values() for line in split.report.lines() + split.notes]
    return DataBundle(
        train=DetectionDataset(loaded["train"], resize, hflip=data_cfg.hflip, seed=seed),
        val=DetectionDataset(loaded["val"], resize, hflip=0.0),
        class_names=class_names,
        notes=notes,
    )


def make_loader(dataset: Dataset, batch_size: int, data_cfg, *, shuffle: bool, normalize_by_canvas: bool,
                seed: int, pad_to_multiple: int = 1, batch_sampler=None) -> DataLoader:
    """``shuffle`` uses :class:`EpochShuffle` (call the loader's ``set_epoch`` every epoch);
    a ``batch_sampler`` (``hftrain.samplers``: repeat factor, aspect-ratio groups) replaces both."""
    workers = data_cfg.num_workers
    # a private generator: creating an iterator (worker base seeds) must not draw from the global
    # torch RNG, whose stream the model uses (RT-DETR's denoising queries) and a resume restores
    generator = torch.Generator()
    generator.manual_seed(seed)
    if batch_sampler is not None:
        batching = {"batch_sampler": batch_sampler}
    else:
        batching = {"batch_size": batch_size, "sampler": EpochShuffle(len(dataset), seed) if shuffle else None,
                    "drop_last": False}
    return DataLoader(
        dataset,
        **batching,
        num_workers=workers,
        collate_fn=Collate(normalize_by_canvas=normalize_by_canvas, pad_to_multiple=pad_to_multiple),
        pin_memory=data_cfg.pin_memory and torch.cuda.is_available(),
        persistent_workers=workers > 0,
        prefetch_factor=data_cfg.prefetch_factor if workers > 0 else None,
        generator=generator,
    )

