"""A shuffling sampler whose order is a function of (seed, epoch) alone, for exact resume.

It yields ``(epoch, index)`` pairs: the dataset derives each sample's augmentation randomness
from (seed, epoch, index), so what a sample looks like does not depend on which worker or
process loads it, on the number of workers, or on RNG states surviving a restart. Under
several processes Accelerate shards its batches; ``set_epoch`` is called through the prepared
dataloader's ``set_epoch``.
"""

from __future__ import annotations

import torch
from torch.utils.data import Sampler


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
