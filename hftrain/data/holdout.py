"""``data.val.from_train``: a validation split held out of the training split, for datasets without one.

Which images are held out depends only on each image's key (its path relative to the image root,
or its ``image_id`` when it has no path) and ``data.seed``: every image gets the SHA-256 digest of
``"<seed>:<key>"``, and the ``round(n * fraction)`` images with the smallest digests (at least one,
and at least one left to train on) are held out. So the split

- is the same in every run and in every process of a run (no Python ``hash``, no random state);
- does not depend on the order of the rows, and adding or removing k images moves at most about k
  others across the boundary (the held-out count follows the total);
- is chosen on the converted dataset before the blacklist and the subsets (``load_split``), so a
  blacklist removes images from either side without moving any image from one side to the other.

Rows sharing a key (the same file listed twice) always land on the same side. Training never sees
a held-out image: the two sides are complementary selections of the same rows.
"""

from __future__ import annotations

import hashlib

import datasets

from hftrain.data.blacklist import image_keys


def held_out_keys(dataset: datasets.Dataset, fraction: float, seed: int) -> set[str]:
    """The keys of the images to hold out (see the module docstring)."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"data.val.from_train: {fraction} must be a fraction in (0, 1)")
    keys = sorted(set(image_keys(dataset)))
    if len(keys) < 2:
        raise ValueError(f"data.val.from_train: the training split has {len(keys)} image(s); "
                         "holding out a validation split needs at least 2")
    count = min(max(int(len(keys) * fraction + 0.5), 1), len(keys) - 1)
    digest = {key: hashlib.sha256(f"{seed}:{key}".encode()).hexdigest() for key in keys}
    return set(sorted(keys, key=digest.__getitem__)[:count])


def split_by_keys(dataset: datasets.Dataset, keys: set[str]) -> tuple[datasets.Dataset, datasets.Dataset]:
    """(rows whose key is not in ``keys``, rows whose key is), each in the dataset's order."""
    inside = [key in keys for key in image_keys(dataset)]
    return (dataset.select([i for i, held in enumerate(inside) if not held]),
            dataset.select([i for i, held in enumerate(inside) if held]))
