"""RT-DETR's multi-scale training (``data.augment.multiscale``): one image side per batch, the same on
every process for a given step and after a resume, applied in the workers as the sample's one resample.

RT-DETR's official collate resizes the already resized batch again (``F.interpolate`` to a scale drawn
per batch). Here the side is chosen before the samples are made: :class:`MultiScaleBatches` wraps the
training batch sampler and tags every key of a batch with its side (:class:`~hftrain.data.epoch_sampler.Sized`);
the dataset renders each sample at that side directly (with its zoom-out and crop, in
:func:`hftrain.data.geometric.render`), so the pixels are resampled once after loading.

The side is a function of (seed, epoch, step) alone, where the step is the batch's position in the epoch
divided by the number of processes: Accelerate hands global batch ``g`` to process ``g % P`` as its
``g // P``-th batch (``BatchSamplerShard``), so every process draws the same side at the same step, and
``skip_first_batches`` after a resume skips whole tagged batches without changing the later ones'
sides. (With ``even_batches`` Accelerate completes a short last batch with keys of the epoch's first
batches, which carry their own side: that batch is then padded to its largest image by the collate.)
"""

from __future__ import annotations

import random

from hftrain.data.epoch_sampler import Sized, split_key


def side_for(sides: list[int], seed: int, epoch: int, step: int) -> int:
    """The side of the batches of ``step`` (the same on every process) in ``epoch``."""
    return sides[random.Random(f"{seed}:{epoch}:{step}:multiscale").randrange(len(sides))]


class MultiScaleBatches:
    """A batch sampler that yields ``batches``' batches with every key :class:`Sized` by the batch's side,
    drawn by :func:`side_for`; from ``stop_epoch`` on (and with no sides) the keys are passed as they are."""

    def __init__(self, batches, sides: list[int], seed: int, num_processes: int = 1, stop_epoch: int | None = None):
        self.batches = batches
        self.sides = list(sides)
        self.seed = seed
        self.num_processes = max(1, num_processes)
        self.stop_epoch = stop_epoch
        self.batch_size = getattr(batches, "batch_size", None)  # Accelerate's sharding reads these two
        self.drop_last = getattr(batches, "drop_last", False)

    @property
    def sampler(self):
        """The sampler under the batches (Accelerate calls its ``set_epoch``)."""
        return self.batches.sampler

    def set_epoch(self, epoch: int) -> None:
        for target in (self.batches, getattr(self.batches, "sampler", None)):
            if hasattr(target, "set_epoch"):
                target.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self):
        for number, batch in enumerate(self.batches):
            epoch = split_key(batch[0])[0] if batch else None
            if not self.sides or epoch is None or (self.stop_epoch is not None and epoch >= self.stop_epoch):
                yield batch
                continue
            side = side_for(self.sides, self.seed, epoch, number // self.num_processes)
            yield [Sized(key, side) for key in batch]
