"""Training samplers: ``data.sampler`` (random | repeat_factor) and ``data.group_by_aspect_ratio``.

Repeat factor sampling (LVIS, Gupta et al. 2019): for each class ``c`` let ``f(c)`` be the
fraction of training images that contain it; its repeat factor is
``r(c) = max(1, sqrt(t / f(c)))`` with ``t = data.repeat_threshold``; an image's factor is the
largest over its classes (1 for an image without boxes). Each epoch an image appears
``floor(r)`` times plus once more with probability ``r - floor(r)`` (stochastic rounding), and
the list is shuffled. An epoch's length is kept fixed at ``round(sum(r))`` (the draw is cut or
wrapped to it), so the number of batches, and with it the learning-rate schedule, is the same
every epoch.

Aspect-ratio grouping puts landscape (width >= height) and portrait images in separate batches
so a batch is padded less; the leftovers of each group at the end of an epoch form smaller
batches (nothing is dropped).

Several processes: the samplers are seeded by ``(seed, epoch)`` only, so every process draws the
same global order. Inside hftrain, Accelerate's ``prepare`` then hands whole batches to the
processes in turn (``BatchSamplerShard``: process ``p`` gets batches ``p, p + P, ...``), and
calls ``set_epoch`` through its wrappers. Outside Accelerate, ``num_replicas``/``rank`` shard
the indices like ``torch.utils.data.DistributedSampler`` (padded by wrapping to a multiple of
``num_replicas``).
"""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
from torch.utils.data import BatchSampler, Sampler

from hftrain.data.epoch_sampler import Draw


# ---------------------------------------------------------------------------- labels, without images


def image_classes(rows) -> list[np.ndarray]:
    """Per image of an HF dataset in the project's schema: the training class indices of its boxes
    (crowd and difficult boxes left out, as training leaves them out). Reads only the label
    columns (Arrow), never an image."""
    table = rows.select_columns(["objects"]).with_format("arrow")[:]
    objects = table.column("objects").combine_chunks()  # the Hub's struct of lists
    category = objects.field("category")
    offsets = (category.offsets.to_numpy() - category.offsets[0].as_py()) if len(category) else np.zeros(1, np.int64)
    categories = category.flatten().to_numpy(zero_copy_only=False)
    keep = objects.field("iscrowd").flatten().to_numpy(zero_copy_only=False) == 0
    keep &= objects.field("difficult").flatten().to_numpy(zero_copy_only=False) == 0
    return [categories[a:b][keep[a:b]] for a, b in zip(offsets[:-1], offsets[1:])]


def image_sizes(rows) -> np.ndarray:
    """(N, 2) array of (height, width) per image, from the label columns."""
    table = rows.select_columns(["height", "width"]).with_format("arrow")[:]
    return np.stack([table.column("height").to_numpy(), table.column("width").to_numpy()], axis=1)


def aspect_groups(sizes: np.ndarray) -> np.ndarray:
    """0 for landscape or square images (width >= height), 1 for portrait ones."""
    return (sizes[:, 1] < sizes[:, 0]).astype(np.int64)


def class_image_fractions(classes: list[np.ndarray], num_classes: int) -> np.ndarray:
    """f(c): the fraction of images that contain class c."""
    counts = np.zeros(num_classes, dtype=np.float64)
    for present in classes:
        counts[np.unique(present)] += 1
    return counts / max(1, len(classes))


def repeat_factors(classes: list[np.ndarray], num_classes: int, threshold: float) -> np.ndarray:
    """Per-image repeat factor ``max over its classes of max(1, sqrt(t / f(c)))`` (1 without boxes)."""
    fractions = class_image_fractions(classes, num_classes)
    with np.errstate(divide="ignore"):
        per_class = np.maximum(1.0, np.sqrt(threshold / np.where(fractions > 0, fractions, np.inf)))
    return np.array([per_class[np.unique(c)].max() if len(c) else 1.0 for c in classes], dtype=np.float64)


# ---------------------------------------------------------------------------- samplers


class RepeatFactorSampler(Sampler[tuple[Draw, int]]):
    """Indices of one epoch: each image ``floor(r)`` or ``ceil(r)`` times (stochastic rounding),
    shuffled, seeded by ``(seed, epoch)``. With all factors 1 it is a seedable shuffle."""

    def __init__(self, factors, seed: int = 0, num_replicas: int = 1, rank: int = 0):
        self.factors = np.asarray(factors, dtype=np.float64)
        if self.factors.ndim != 1 or len(self.factors) == 0 or (self.factors < 1).any():
            raise ValueError("RepeatFactorSampler: factors must be a non-empty list of numbers >= 1")
        if not 0 <= rank < num_replicas:
            raise ValueError(f"RepeatFactorSampler: rank {rank} is not in [0, {num_replicas})")
        self.seed, self.epoch = seed, 0
        self.num_replicas, self.rank = num_replicas, rank
        self.epoch_length = max(1, int(round(self.factors.sum())))  # the global length of every epoch

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def global_indices(self, epoch: int | None = None) -> np.ndarray:
        """The whole epoch's order, the same on every process."""
        rng = np.random.default_rng([self.seed, self.epoch if epoch is None else epoch])
        whole = np.floor(self.factors)
        repeats = whole + (rng.random(len(self.factors)) < self.factors - whole)
        indices = np.repeat(np.arange(len(self.factors)), repeats.astype(np.int64))
        rng.shuffle(indices)
        if len(indices) < self.epoch_length:  # stochastic rounding drew fewer: wrap around
            indices = np.resize(indices, self.epoch_length)
        return indices[: self.epoch_length]

    def __len__(self) -> int:
        return math.ceil(self.epoch_length / self.num_replicas)

    def __iter__(self):
        """``(Draw(epoch, copy), index)`` pairs: the dataset seeds a sample's augmentation by them (see
        ``DetectionDataset``), so the repeats of an image within an epoch are augmented differently, and
        reads the epoch from them (``data.augment.close_mosaic_epoch``)."""
        indices = self.global_indices()
        copies: Counter = Counter()
        keys = []
        for index in indices.tolist():
            keys.append((Draw(self.epoch, copies[index]), index))
            copies[index] += 1
        if self.num_replicas > 1:
            keys = [keys[i % len(keys)] for i in range(len(self) * self.num_replicas)][self.rank :: self.num_replicas]
        return iter(keys)


class GroupedBatchSampler(Sampler[list[int]]):
    """Batches of ``batch_size`` indices drawn from ``sampler`` in its order, each batch from one
    group (``group_ids[index]``). The groups' leftovers are pooled at the end of the epoch into
    full batches (which may mix groups) and one last short batch: only the last batch may be short,
    which Accelerate's sharding over several processes assumes."""

    def __init__(self, sampler: Sampler[int], group_ids, batch_size: int):
        self.sampler = sampler  # Accelerate finds ``sampler.set_epoch`` here
        self.group_ids = np.asarray(group_ids)
        self.batch_size = batch_size
        self.drop_last = False

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)

    def __iter__(self):
        buffers: dict[int, list[int]] = {}
        for key in self.sampler:
            group = buffers.setdefault(int(self.group_ids[_index(key)]), [])
            group.append(key)
            if len(group) == self.batch_size:
                yield list(group)
                group.clear()
        leftovers = [key for group in buffers.values() for key in group]
        for start in range(0, len(leftovers), self.batch_size):
            yield leftovers[start:start + self.batch_size]

    def __len__(self) -> int:
        per_group = Counter(int(self.group_ids[_index(key)]) for key in self.sampler)
        full = sum(n // self.batch_size for n in per_group.values())
        leftover = sum(n % self.batch_size for n in per_group.values())
        return full + math.ceil(leftover / self.batch_size)


def _index(key) -> int:
    return key[1] if isinstance(key, tuple) else key


def train_batch_sampler(data_cfg, classes: list[np.ndarray], sizes: np.ndarray, num_classes: int,
                        batch_size: int, seed: int) -> Sampler | None:
    """The batch sampler that ``data.sampler`` and ``data.group_by_aspect_ratio`` ask for; None for
    plain random batches (the DataLoader's own shuffle, made seedable by Accelerate)."""
    if data_cfg.sampler == "random" and not data_cfg.group_by_aspect_ratio:
        return None
    if data_cfg.sampler == "repeat_factor":
        factors = repeat_factors(classes, num_classes, data_cfg.repeat_threshold)
    elif data_cfg.sampler == "random":
        factors = np.ones(len(classes))
    else:
        raise ValueError(f"data.sampler: unknown sampler {data_cfg.sampler!r}; expected random or repeat_factor")
    sampler = RepeatFactorSampler(factors, seed=seed)
    if data_cfg.group_by_aspect_ratio:
        return GroupedBatchSampler(sampler, aspect_groups(sizes), batch_size)
    return BatchSampler(sampler, batch_size, drop_last=False)
