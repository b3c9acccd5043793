"""A shuffling sampler whose order is a function of (seed, epoch) alone, for exact resume.

It yields ``(epoch, index)`` pairs: the dataset derives each sample's augmentation randomness
from (seed, epoch, index), so what a sample looks like does not depend on which worker or
process loads it, on the number of workers, or on RNG states surviving a restart. Under
several processes Accelerate shards its batches; ``set_epoch`` is called through the prepared
dataloader's ``set_epoch``.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch.utils.data import Sampler


class Draw(NamedTuple):
    """The first element of a repeat-factor sampler's key (``hftrain.data.samplers``): the epoch, and which
    copy of the image within it (an image repeated in one epoch is augmented differently each time).
    EpochShuffle's keys carry the epoch alone, as an int (copy 0)."""

    epoch: int
    copy: int


def split_key(key) -> tuple[int | None, int, int]:
    """``(epoch, copy, index)`` of a dataset key: a plain index (epoch None: not known), ``(epoch, index)``
    from EpochShuffle, or ``(Draw(epoch, copy), index)`` from the repeat-factor sampler."""
    if not isinstance(key, tuple):
        return None, 0, key
    draw, index = key
    epoch, copy = draw if isinstance(draw, tuple) else (draw, 0)
    return epoch, copy, index


class EpochShuffle(Sampler):
    def __init__(self, length: int, seed: int):
        self.length = length
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.length

    def __iter__(self):
        generator = torch.Generator()
        generator.manual_seed(self.seed * 1_000_003 + self.epoch)
        epoch = self.epoch
        return iter([(epoch, i) for i in torch.randperm(self.length, generator=generator).tolist()])
