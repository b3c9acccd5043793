"""Count the calls that make the host wait for the device (``.item()``, ``.tolist()``, ``.cpu()``,
``.numpy()``, ``float(t)``, ``int(t)``, ``bool(t)`` on a tensor), by the package of the code that
made them. On a CPU nothing waits, but each of these calls is a synchronisation on a GPU (as
``torch.cuda.set_sync_debug_mode`` would report), so the count is what a GPU run would pay."""

from __future__ import annotations

import collections
import contextlib
import sys

import torch

METHODS = ("item", "tolist", "cpu", "numpy", "__float__", "__int__", "__bool__")


def owner(filename: str) -> str:
    if "/hftrain/data/" in filename:
        return "hftrain.data"  # the data pipeline: CPU tensors of the loader (e.g. the sampler's order), no device
    for package in ("hftrain", "transformers", "accelerate", "torch"):
        if f"/{package}/" in filename:
            return package
    return "other"


@contextlib.contextmanager
def counting_syncs():
    """Yields a Counter of (package, method) -> calls made while the block runs."""
    counts: collections.Counter = collections.Counter()
    originals = {name: getattr(torch.Tensor, name) for name in METHODS}

    def counted(name, original):
        def method(self, *args, **kwargs):
            counts[(owner(sys._getframe(1).f_code.co_filename), name)] += 1
            return original(self, *args, **kwargs)
        return method

    for name, original in originals.items():
        setattr(torch.Tensor, name, counted(name, original))
    try:
        yield counts
    finally:
        for name, original in originals.items():
            setattr(torch.Tensor, name, original)


def by_package(counts) -> dict[str, int]:
    totals: collections.Counter = collections.Counter()
    for (package, _), n in counts.items():
        totals[package] += n
    return dict(totals)
