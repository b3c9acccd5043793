"""EpochShuffle: the order is a function of (seed, epoch); a loop that never calls set_epoch still
gets a new epoch (order and augmentation draws) on each pass (issue 18)."""

from hftrain.data.epoch_sampler import EpochShuffle


def test_set_epoch_fixes_the_order():
    a, b = EpochShuffle(50, seed=3), EpochShuffle(50, seed=3)
    a.set_epoch(4)
    b.set_epoch(4)
    first = list(a)
    assert first == list(b) and all(epoch == 4 for epoch, _ in first)
    a.set_epoch(4)
    assert list(a) == first  # set_epoch again: the same epoch replayed (resume, Accelerate's __iter__)


def test_passes_without_set_epoch_advance():
    sampler = EpochShuffle(50, seed=3)
    first, second = list(sampler), list(sampler)
    assert [e for e, _ in first] == [0] * 50 and [e for e, _ in second] == [1] * 50
    assert [i for _, i in first] != [i for _, i in second]
    reference = EpochShuffle(50, seed=3)
    reference.set_epoch(1)
    assert second == list(reference)
