"""A shuffling sampler whose order is a function of (seed, epoch) alone, for exact resume.

It yields ``(epoch, index)`` pairs: the dataset derives each sample's augmentation randomness
from (seed, epoch, index), so what a sample looks like does not depend on which worker or
process loads it, on the number of workers, or on RNG states surviving a restart. Under
several processes Accelerate shards its batches; ``set_epoch`` is called through the prepared
dataloader's ``set_epoch``.

A loop that never calls ``set_epoch`` (a hand-written loop over ``make_loader``'s loader) still gets a
new order and new augmentation draws each time it iterates the loader, as with
``DataLoader(shuffle=True)``: an iteration not preceded by ``set_epoch`` starts the next epoch.
Without that, every pass was epoch 0 again: the same order and the same flip of every image, epoch
after epoch (issue 18).
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


class Sized(NamedTuple):
    """A dataset key with the side its batch is made at (``data.augment.multiscale``,
    :class:`hftrain.data.multiscale.MultiScaleBatches`)."""

    key: object
    side: int


def split_key(key) -> tuple[int | None, int, int]:
    """``(epoch, copy, index)`` of a dataset key: a plain index (epoch None: not known), ``(epoch, index)``
    from EpochShuffle, or ``(Draw(epoch, copy), index)`` from the repeat-factor sampler, maybe
    :class:`Sized`."""
    if isinstance(key, Sized):
        key = key.key
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
        self._epoch_is_set = True  # the first iteration is epoch 0 (or what set_epoch chose)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self._epoch_is_set = True

    def __len__(self) -> int:
        return self.length

    def __iter__(self):
        if not self._epoch_is_set:  # iterated again without set_epoch: the next epoch, not a replay
            self.epoch += 1
        self._epoch_is_set = False
        generator = torch.Generator()
        generator.manual_seed(self.seed * 1_000_003 + self.epoch)
        epoch = self.epoch
        return iter([(epoch, i) for i in torch.randperm(self.length, generator=generator).tolist()])
