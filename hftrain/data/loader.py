"""From the recipe's data section to PyTorch datasets and dataloaders."""

from __future__ import annotations

import random
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset

from hftrain.data.augment import MIXUP_BETA, MOSAIC_CENTRE, mixup, mosaic, scale
from hftrain.data import geometric
from hftrain.data.multiscale import MultiScaleBatches
from hftrain.data.photometric import gray_mean, hsv_jitter, hsv_params, photometric_distort, photometric_params
from hftrain.recipe.presets import resolve_augment
from hftrain.data.blacklist import size_mismatch
from hftrain.data.collate import Collate
from hftrain.data.decode import decode_for_size
from hftrain.data import samplers
from hftrain.data.epoch_sampler import EpochShuffle, Sized, split_key
from hftrain.data.schema import check_schema, class_names_of, resolve_image_path
from hftrain.data.convert import take_subset
from hftrain.data.sources import LoadedSplit, load_split
from hftrain.data.ram_cache import RamCache, make_ram_caches
from hftrain.data.transforms import Resize, flip_horizontal, prepare_image, resize_boxes


class DetectionDataset(Dataset):
    """Rows of the project's schema as uint8 image tensors and absolute xywh boxes.

    The Arrow table is read row by row (memory-mapped and shared by dataloader workers).
    Crowd and difficult boxes are ignore regions: they are not training targets. An image that
    fails to decode, or whose displayed size (after EXIF orientation) is not the row's width and
    height, is replaced by the next one that does (``failed`` counts it, against
    ``data.max_bad_fraction``), so batches keep their size and every process stays in step.
    """

    def __init__(self, split: LoadedSplit, resize: Resize, hflip: float = 0.0, seed: int = 0, augment=None,
                 cache: RamCache | None = None):
        check_schema(split.dataset, str(split.image_root))
        self.rows = split.dataset
        self.image_root = split.image_root
        self.resize = resize
        self.hflip = hflip
        self.seed = seed
        # data.augment (AugmentConfig, its preset resolved) for training; None: no augmentation but the flip
        self.augment = resolve_augment(augment, resize.min_size) if augment is not None else None
        self.cache = cache  # data.cache: ram (resized pixels shared by all workers), None: decode every time

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def draft_for(self):
        """The output-size rule that lets a JPEG decode at reduced scale (None: full decode)."""
        return self.resize.output_size if self.resize.draft else None

    def __getitem__(self, key) -> dict | None:
        """``key`` is an index, ``(epoch, index)`` from EpochShuffle or ``(Draw(epoch, copy), index)`` from
        the repeat-factor sampler (maybe :class:`Sized` by its batch's multi-scale side): then every random
        choice of the sample's augmentation comes from a generator seeded by (seed, epoch, index[, copy]),
        the same in any worker or process. Order: mosaic, mixup, photometric distort, the geometric
        operations (one resample), HSV, scale jitter, flip; mosaic and mixup stop at
        data.augment.close_mosaic_epoch, all but the flip at data.augment.stop_epoch."""
        epoch, copy, index = split_key(key)
        side = key.side if isinstance(key, Sized) else None
        if epoch is None:
            rng = random  # a plain index (no epoch): the process's own stream
        else:
            rng = random.Random(f"{self.seed}:{epoch}:{index}" + (f":{copy}" if copy else ""))
        aug = self.augment
        on = aug is not None and (aug.stop_epoch is None or epoch is None or epoch < aug.stop_epoch)
        mixing = on and (aug.close_mosaic_epoch is None or epoch is None or epoch < aug.close_mosaic_epoch)
        # without a RAM cache, a sample that goes through the geometric operations is loaded as decoded (not
        # resized): their one resample to the output size is then the only one (hftrain.data.geometric)
        native = on and self.cache is None and (side is not None or self.moves_pixels)
        sample = self.compose(index, rng, mixing, native)  # a mosaic (data.augment.mosaic) or the image as loaded
        if mixing and aug.mixup > 0 and rng.random() < aug.mixup:  # data.augment.mixup
            other = self.compose(self.other_index(index, rng), rng, mixing, native)
            sample = mixup(sample, other, rng.betavariate(MIXUP_BETA, MIXUP_BETA))
        if on:  # data.augment: photometric, zoom-out, IoU crop, random resize / size crop, affine, HSV, multi-scale
            sample = self.reshape(sample, rng, side)
        if on and aug.scale_jitter > 0 and rng.random() < aug.scale_jitter:  # data.augment.scale_jitter
            sample = scale(sample, rng.uniform(*aug.scale_range))
        if self.hflip > 0 and rng.random() < self.hflip:  # data.hflip
            pixels, boxes = flip_horizontal(sample["pixel_values"], sample["boxes"])
            sample = {**sample, "pixel_values": pixels, "boxes": boxes}  # a new dict: load's may be cached
        return sample

    def reshape(self, sample: dict, rng, side: int | None) -> dict:
        """The photometric distort, then the geometric operations on a :class:`~hftrain.data.geometric.View`
        rendered once to the output size (the batch's multi-scale ``side``, DETR's random resize, or the
        recipe's resize of the view), then the HSV jitter. Draws nothing for an operation that is off."""
        aug = self.augment
        colour = None
        if aug.photometric > 0:  # RT-DETR's RandomPhotometricDistort (each part with this probability)
            params = photometric_params(rng, aug.photometric)
            mean = gray_mean(sample["pixel_values"]) if params["contrast"] is not None else None
            colour = lambda pixels: photometric_distort(pixels, params, mean)  # noqa: E731  (applied in the render)
        view = geometric.View.whole(sample["pixel_values"])
        if "loaded_size" in sample:  # loaded as decoded: the view is the resized image the operations expect
            loaded_h, loaded_w = sample.pop("loaded_size")
            view = replace(view, width=float(loaded_w), height=float(loaded_h))
        out_size = None
        if aug.zoom_out > 0 and rng.random() < aug.zoom_out:  # RandomZoomOut, fill 0
            view = geometric.zoom_out(view, rng.uniform(*aug.zoom_out_range), rng.random(), rng.random())
        if aug.iou_crop > 0 and rng.random() < aug.iou_crop:  # RandomIoUCrop (RandomApply p)
            sample, view = geometric.iou_crop(sample, view, rng)
        if aug.random_resize:  # DETR: random resize, or resize + size crop + random resize
            if aug.size_crop > 0 and aug.size_crop_resize and rng.random() < aug.size_crop:
                view = geometric.resize_view(view, geometric.shortest_side_size(view, rng.choice(aug.size_crop_resize), None))
                sample, view = geometric.size_crop(sample, view, *aug.size_crop_range, rng)
            out_size = self.side_size(view, rng.choice(aug.random_resize))
        if aug.affine > 0 and rng.random() < aug.affine:  # ultralytics' random_perspective: scale + translate
            t = aug.translate
            view = geometric.affine(view, rng.uniform(1 - aug.affine_scale, 1 + aug.affine_scale),
                                    rng.uniform(0.5 - t, 0.5 + t), rng.uniform(0.5 - t, 0.5 + t))
        if side is not None:  # data.augment.multiscale: this batch's side
            out_size = self.side_size(view, side)
        elif out_size is None:  # the recipe's resize of what the operations left (the loaded size if nothing)
            out_size = view.size() if view.is_whole(sample["pixel_values"]) else self.resize.output_size(*view.size())
        if not view.is_whole(sample["pixel_values"]) or tuple(out_size) != tuple(sample["pixel_values"].shape[1:]):
            sample = geometric.render(sample, view, out_size, colour)  # the colour on the image's part only
        elif colour is not None:
            sample = {**sample, "pixel_values": colour(sample["pixel_values"])}
        if aug.hsv > 0 and rng.random() < aug.hsv:  # ultralytics' augment_hsv
            sample = {**sample, "pixel_values": hsv_jitter(sample["pixel_values"], hsv_params(rng, aug.hsv_gains))}
        return sample

    def side_size(self, view, side: int) -> tuple[int, int]:
        """(height, width) of ``view`` resized to ``side`` by the recipe's resize rule (data.resize square:
        side x side; else shorter side ``side``, the longer at most data.max_size)."""
        return replace(self.resize, min_size=side).output_size(*view.size())

    @property
    def moves_pixels(self) -> bool:
        """data.augment has a geometric operation that renders the sample (zoom-out, IoU crop, random
        resize, affine)."""
        aug = self.augment
        return aug is not None and bool(aug.zoom_out or aug.iou_crop or aug.random_resize or aug.affine)

    def compose(self, index: int, rng, mixing: bool, native: bool = False) -> dict:
        """Image ``index`` as loaded (``native``: as decoded, see :meth:`load`) or, with probability
        data.augment.mosaic while ``mixing``, a mosaic of it and three other images drawn from ``rng`` on a
        canvas of its own resized size."""
        aug = self.augment
        if mixing and aug.mosaic > 0 and rng.random() < aug.mosaic:
            tiles = [self.load(index)] + [self.load(self.other_index(index, rng)) for _ in range(3)]
            centre = (rng.uniform(*MOSAIC_CENTRE), rng.uniform(*MOSAIC_CENTRE))
            size = tuple(tiles[0]["pixel_values"].shape[1:])
            return mosaic(tiles, size, centre, aug.min_box_size, aug.min_visible)
        return self.load(index, native)

    def other_index(self, index: int, rng) -> int:
        """An image other than ``index`` drawn uniformly (``index`` itself in a one-image dataset)."""
        if len(self) < 2:
            return index
        other = rng.randrange(len(self) - 1)
        return other + (other >= index)

    def load(self, index: int, native: bool = False) -> dict:
        """Image ``index`` decoded and resized to the recipe's size (uint8 (3, H, W)), with its
        training boxes (absolute xywh in the resized frame) and labels; no augmentation. ``native`` (no
        RAM cache): the image as decoded (JPEG draft scale included), boxes in its frame, and
        ``loaded_size``, the (height, width) the resize would have given, for a later single resample."""
        failed, cached, extra = 0, None, {}
        for attempt in range(len(self.rows)):  # a broken image is replaced by the next one that decodes
            position = (index + attempt) % len(self.rows)
            row = self.rows[position]
            if self.cache is not None and (cached := self.cache.get(position)) is not None:  # data.cache: ram
                break
            decoded = self._decode(row, index + attempt)
            if decoded is not None:
                break
            failed = 1  # a failed image leaves its cache slot empty: tried again next time
        else:
            raise RuntimeError(f"no image of the dataset under {self.image_root} decodes")
        objects = row["objects"]  # the Hub's dict of lists
        train = ~(np.asarray(objects["iscrowd"], dtype=bool) | np.asarray(objects["difficult"], dtype=bool))
        boxes = np.asarray(objects["bbox"], dtype=np.float32).reshape(-1, 4)[train]
        labels = np.asarray(objects["category"], dtype=np.int64).reshape(-1)[train]
        if cached is not None:
            pixels, boxes = cached, resize_boxes(boxes, (row["height"], row["width"]), tuple(cached.shape[1:]))
        elif native:
            image, source_size = decoded
            pixels = torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1)  # (3, H, W) view of HWC
            boxes = resize_boxes(boxes, (row["height"], row["width"]), tuple(pixels.shape[1:]))
            extra = {"loaded_size": self.resize.output_size(*source_size)}
        else:
            image, source_size = decoded
            pixels, boxes = prepare_image(
                image, boxes, (row["height"], row["width"]), self.resize, 0.0, source_size=source_size
            )
            if self.cache is not None:
                self.cache.put(position, pixels)
        return {**extra,
            "pixel_values": pixels,
            "boxes": boxes,
            "class_labels": torch.from_numpy(labels),
            "image_id": row["image_id"],
            "orig_size": (row["height"], row["width"]),
            "failed": failed,  # this sample stands in for one that failed to decode (counted)
        }

    def _decode(self, row: dict, index: int):
        """(image, displayed (height, width)), or None (said on the console) when the image does not
        decode or its displayed size is not the annotated one (the scan's ``size mismatch``: its boxes
        would not match the pixels, e.g. labels drawn on the unrotated pixels of an EXIF-rotated JPEG)."""
        image_ref = row["image"]
        try:
            if image_ref.get("bytes"):
                decoded = decode_for_size(image_ref["bytes"], self.draft_for)
            else:
                where = f"row {index} (image_id {row['image_id']})"
                decoded = decode_for_size(resolve_image_path(self.image_root, image_ref["path"], where), self.draft_for)
        except (OSError, ValueError, SyntaxError) as err:
            print(f"[hftrain] skipping image {image_ref.get('path')!r}: {err}", flush=True)
            return None
        shown_h, shown_w = decoded[1]
        mismatch = size_mismatch((row["width"], row["height"]), (shown_w, shown_h))
        if mismatch:
            print(f"[hftrain] skipping image {image_ref.get('path')!r} (image_id {row['image_id']}): {mismatch} "
                  "as displayed after EXIF orientation", flush=True)
            return None
        return decoded


@dataclass
class DataBundle:
    train: DetectionDataset
    val: DetectionDataset
    class_names: list[str]
    notes: list[str]
    category_ids: list[int] | None = None
    """The dataset's own category id of each class (``report.category_ids``; the first one where
    ``category_map`` merged several), for writing predictions back in them; None if it has none."""

    def ram_caches(self) -> list:
        """The RAM caches of the splits (``data.cache: ram``), each once."""
        caches = [d.cache for d in (self.train, self.val) if d.cache is not None]
        return list({id(c): c for c in caches}.values())


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


def read_split(data_cfg, name: str, hold_out: float | None = None) -> LoadedSplit:
    """The split ``data.<name>`` (train, val or test) read as the recipe's data section describes it."""
    split = getattr(data_cfg, name)
    return load_split(
        data_cfg.format, split.images, split.labels,
        sets=split.sets or None, modality=data_cfg.modality, drone_classes=data_cfg.drone_classes,
        fred_boxes=data_cfg.fred_boxes,
        category_map=data_cfg.category_map or None, max_missing=data_cfg.max_missing,
        read_image_sizes=data_cfg.read_image_sizes, subset=split.subset, seed=data_cfg.seed,
        cache_dir=data_cfg.cache_dir, blacklist=data_cfg.blacklist, recipe_split=name,
        scan_workers=max(1, data_cfg.num_workers),
        class_names=data_cfg.class_names or None, hold_out=hold_out,
    )


def make_resize(data_cfg) -> Resize:
    """The recipe's resize (data.min_size, max_size, resize, jpeg_draft): training's and evaluation's."""
    return Resize(data_cfg.min_size, data_cfg.max_size, square=data_cfg.resize == "square", draft=data_cfg.jpeg_draft)


def load_data(data_cfg, seed: int = 0) -> DataBundle:
    """Read both splits and wrap them as datasets; the class names come from the train split.
    With ``data.val.from_train`` the validation split is the part held out of the training split."""
    loaded = {"train": read_split(data_cfg, "train", hold_out=data_cfg.val.from_train)}
    if data_cfg.val.from_train:  # data.val.from_train: the validation images are held out of train
        val = loaded["train"].held_out
        val.dataset = take_subset(val.dataset, val.report, data_cfg.val.subset, data_cfg.seed)
        loaded["val"] = val
    else:
        loaded["val"] = read_split(data_cfg, "val")
    class_names = class_names_of(loaded["train"].dataset)
    val_names = class_names_of(loaded["val"].dataset)
    if val_names != class_names:
        raise ValueError(f"data.val: class names {val_names} differ from data.train's {class_names}")
    resize = make_resize(data_cfg)
    notes = [line for split in loaded.values() for line in split.report.lines() + split.notes]
    notes.append(augment_note(resolve_augment(data_cfg.augment, data_cfg.min_size)))
    # data.cache: ram: sized and checked against the available memory here, before any worker starts
    caches, cache_notes = make_ram_caches(data_cfg, {name: split.dataset for name, split in loaded.items()}, resize)
    return DataBundle(
        train=DetectionDataset(loaded["train"], resize, hflip=data_cfg.hflip, seed=seed, augment=data_cfg.augment,
                               cache=caches.get("train")),
        val=DetectionDataset(loaded["val"], resize, hflip=0.0, cache=caches.get("val")),
        class_names=class_names,
        notes=notes + cache_notes,
        category_ids=source_category_ids(loaded["train"].report.category_ids, class_names),
    )


def augment_note(aug) -> str:
    """One line saying what the training augmentation does (its preset resolved)."""
    parts = [f"{name} {getattr(aug, name)}" for name in ("mosaic", "mixup", "photometric", "zoom_out", "iou_crop",
                                                          "size_crop", "hsv", "affine", "scale_jitter")
             if getattr(aug, name)]
    parts += [f"{name} {getattr(aug, name)}" for name in ("random_resize", "multiscale") if getattr(aug, name)]
    parts += [f"{name} {getattr(aug, name)}" for name in ("close_mosaic_epoch", "stop_epoch")
              if getattr(aug, name) is not None]
    return f"augment: preset {aug.preset}: " + (", ".join(parts) if parts else "nothing but data.hflip")


def source_category_ids(category_ids: dict[str, list[int]], class_names: list[str]) -> list[int] | None:
    """The source's id of each class, in label order (None unless every class has one)."""
    if not all(category_ids.get(name) for name in class_names):
        return None
    return [min(category_ids[name]) for name in class_names]


def share_by_name(worker_id: int) -> None:
    """``worker_init_fn``: this worker hands its batches to the training process by shared-memory
    *name* (``file_system``) instead of PyTorch's default of passing a file descriptor per tensor,
    which costs a socket connection and handshake per tensor in the training process: 1.4 instead of
    2.9 ms of its time (1.7 instead of 4.4 ms wall) per batch in bench/bench_loop.py's setting. Only
    the workers switch; torch_shm_manager removes the segments of a process that dies."""
    if "file_system" in torch.multiprocessing.get_all_sharing_strategies():
        torch.multiprocessing.set_sharing_strategy("file_system")


def make_loader(dataset: Dataset, batch_size: int, data_cfg, *, shuffle: bool, normalize_by_canvas: bool,
                seed: int, pad_to_multiple: int = 1, batch_sampler=None) -> DataLoader:
    """``shuffle`` uses :class:`EpochShuffle` (call the loader's ``set_epoch`` every epoch);
    a ``batch_sampler`` (``hftrain.data.samplers``: repeat factor, aspect-ratio groups) replaces both."""
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
        worker_init_fn=share_by_name,
        generator=generator,
    )



def make_train_loader(data, batch_size: int, data_cfg, seed: int, needs, num_processes: int = 1) -> DataLoader:
    """The training dataloader: seeded random batches, or the batch sampler of ``data.sampler`` /
    ``data.group_by_aspect_ratio`` (class-balanced repeat factors, aspect-ratio groups). ``needs``
    is the detector (anything with ``uses_pixel_mask`` and ``pad_to_multiple``): without a pixel
    mask, boxes are normalised by the padded canvas the model sees. With ``data.augment.multiscale``
    the batches are tagged with their side (the same on all ``num_processes`` processes at a step)."""
    batch_sampler = None
    if data_cfg.sampler != "random" or data_cfg.group_by_aspect_ratio:
        batch_sampler = samplers.train_batch_sampler(
            data_cfg, samplers.image_classes(data.train.rows), samplers.image_sizes(data.train.rows),
            len(data.class_names), batch_size, seed)
    aug = data.train.augment
    if aug is not None and aug.multiscale:  # data.augment.multiscale: a side per batch, chosen with the batch
        if batch_sampler is None:
            batch_sampler = BatchSampler(EpochShuffle(len(data.train), seed), batch_size, drop_last=False)
        batch_sampler = MultiScaleBatches(batch_sampler, aug.multiscale, seed, num_processes, aug.stop_epoch)
    return make_loader(data.train, batch_size, data_cfg, shuffle=True, normalize_by_canvas=not needs.uses_pixel_mask,
                       seed=seed, pad_to_multiple=needs.pad_to_multiple, batch_sampler=batch_sampler)


def make_eval_loader(dataset: Dataset, batch_size: int, data_cfg, seed: int, needs) -> DataLoader:
    """An evaluation dataloader over ``dataset`` in order (``needs``: as :func:`make_train_loader`)."""
    return make_loader(dataset, batch_size, data_cfg, shuffle=False, normalize_by_canvas=not needs.uses_pixel_mask,
                       seed=seed, pad_to_multiple=needs.pad_to_multiple)
