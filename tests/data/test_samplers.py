"""Samplers: repeat factors, aspect-ratio groups, under one and two processes."""


from __future__ import annotations

import json
import math
import os
import subprocess
from collections import Counter

import numpy as np
import pytest

from conftest import PYTHON, REPO, write_recipe
from hftrain.data import samplers
from hftrain.recipe import load_recipe
from hftrain.train import train
from helpers.datasets import dataset_recipe, write_coco  # noqa: F401 (fixtures)


# ---------------------------------------------------------------------------- samplers


def test_repeat_factors_follow_lvis_and_round_stochastically():
    # f(A) = 0.8, f(B) = 0.2 ; t = 0.8 -> r(A) = 1, r(B) = 2 ; an image with both gets 2, without boxes 1
    classes = [np.array([0])] * 15 + [np.array([1])] * 3 + [np.array([0, 1, 1]), np.array([], dtype=np.int64)]
    factors = samplers.repeat_factors(classes, 3, threshold=0.8)
    expected = [1.0] * 15 + [math.sqrt(0.8 / 0.2)] * 4 + [1.0]
    assert factors.tolist() == pytest.approx(expected)
    # a fractional factor is drawn floor or ceil per epoch, with the right mean; the epoch length is fixed
    rates = [1.0] * 100 + [1.5] * 100 + [2.25] * 100
    sampler = samplers.RepeatFactorSampler(rates, seed=3)
    counts = np.zeros((50, 300))
    for epoch in range(50):
        sampler.set_epoch(epoch)
        keys = list(sampler)
        assert len(keys) == len(sampler) == 475  # round(sum of the factors), every epoch
        for _, index in keys:
            counts[epoch, index] += 1
    for group, r in enumerate([1.0, 1.5, 2.25]):
        seen = counts[:, group * 100:(group + 1) * 100]
        assert abs(seen.mean() - r) < 0.03, (r, seen.mean())
        assert np.isin(seen, [np.floor(r), np.ceil(r)]).mean() > 0.97  # floor or ceil (a few wrap-arounds aside)
    # seeded by (seed, epoch): the same on every process, different per epoch; repeats get distinct draws
    sampler.set_epoch(7)
    first = list(sampler)
    again = samplers.RepeatFactorSampler(rates, seed=3)
    again.set_epoch(7)
    assert list(again) == first and len(set(first)) == len(first)
    sampler.set_epoch(8)
    assert list(sampler) != first
    # rank sharding (outside Accelerate) partitions the padded global order
    shards = []
    for rank in range(2):
        part = samplers.RepeatFactorSampler(rates, seed=3, num_replicas=2, rank=rank)
        part.set_epoch(7)
        shards.append(list(part))
    assert shards[0] == first[0::2] and shards[1] == first[1::2] + [first[0]]  # 475 padded to 476 by wrapping


def test_aspect_ratio_groups_never_mix_orientations():
    sizes = np.array([[64, 96], [96, 64]] * 7 + [[64, 64]])
    groups = samplers.aspect_groups(sizes)
    batcher = samplers.GroupedBatchSampler(samplers.RepeatFactorSampler(np.ones(len(sizes)), seed=1), groups, 4)
    batcher.set_epoch(2)
    batches = list(batcher)
    assert len(batches) == len(batcher)
    assert sorted(k[1] for b in batches for k in b) == list(range(len(sizes)))  # each image once, none dropped
    for batch in batches:
        assert len({int(groups[k[1]]) for k in batch}) == 1


def test_grouped_batches_train_with_mixed_orientations(tmp_path):
    sizes = [(64, 96) if i % 2 else (96, 64) for i in range(12)]
    images = [[(i % 2, [4.0, 4.0, 30.0, 20.0])] for i in range(12)]
    write_coco(tmp_path, "train", images, ["a", "b"], size=sizes)
    write_coco(tmp_path, "val", images[:4], ["a", "b"], size=sizes[:4])
    recipe = dataset_recipe(tmp_path, tmp_path / "run", train={"epochs": 1},
                            data={"group_by_aspect_ratio": True, "max_size": 96})
    recipe["data"]["train"]["subset"] = None
    train(load_recipe(write_recipe(tmp_path / "r.yaml", recipe), ["debug=true", "debug_batches=10"]))
    seen = [json.loads(line) for line in (tmp_path / "run" / "debug" / "samples_rank0.jsonl").read_text().splitlines()]
    assert sum(len(s["image_ids"]) for s in seen) == 12
    # image ids 1..12: odd ids are the (96, 64) portrait images. Every batch but the last holds one
    # orientation; the last pools the groups' leftovers (only the last batch may be short or mixed)
    for entry in seen[:-1]:
        assert len({i % 2 for i in entry["image_ids"]}) == 1, entry
    assert len(seen) == 3


# ---------------------------------------------------------------------------- two processes


def test_repeat_factor_sampler_under_two_processes(tmp_path):
    # 16 images of class A (f = 0.8), 4 of class B (f = 0.2); t = 0.8: B repeats exactly twice -> 24 samples
    images = [[(0, [4.0, 4.0, 20.0, 20.0])]] * 16 + [[(1, [30.0, 30.0, 20.0, 20.0])]] * 4
    write_coco(tmp_path, "train", images, ["A", "B"])
    write_coco(tmp_path, "val", images[:2], ["A", "B"])
    recipe = dataset_recipe(tmp_path, tmp_path / "run", train={"epochs": 1, "batch_size": 2},
                            data={"sampler": "repeat_factor", "repeat_threshold": 0.8})
    recipe.update({"debug": True, "debug_batches": 100})
    path = write_recipe(tmp_path / "r.yaml", recipe)
    accelerate = os.path.join(os.path.dirname(PYTHON), "accelerate")
    proc = subprocess.run([accelerate, "launch", "--config_file", str(REPO / "accelerate_configs" / "cpu_2proc.yaml"),
                           "hftrain/train.py", str(path)], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    seen = {}
    for rank in (0, 1):
        lines = (tmp_path / "run" / "debug" / f"samples_rank{rank}.jsonl").read_text().splitlines()
        seen[rank] = [i for line in lines for i in json.loads(line)["image_ids"]]
    assert len(seen[0]) == len(seen[1]) == 12  # 24 samples, 6 batches of 2 per process
    union = Counter(seen[0] + seen[1])
    assert union == Counter({**{i: 1 for i in range(1, 17)}, **{i: 2 for i in range(17, 21)}})
    # and they are the sampler's global order for epoch 1, dealt out batch by batch
    sampler = samplers.RepeatFactorSampler([1.0] * 16 + [2.0] * 4, seed=load_recipe(path).train.seed)
    order = [i + 1 for i in sampler.global_indices(epoch=1).tolist()]
    batches = [order[i:i + 2] for i in range(0, 24, 2)]
    assert seen[0] == [i for b in batches[0::2] for i in b] and seen[1] == [i for b in batches[1::2] for i in b]


def test_grouped_batches_pool_leftovers_so_only_the_last_batch_is_short():
    # Accelerate shards batch samplers assuming only the last batch can be short
    for n in (8, 14, 50):
        groups = np.array([i % 3 == 0 for i in range(n)], dtype=int)
        sampler = samplers.GroupedBatchSampler(list(range(n)), groups, 2)
        batches = list(sampler)
        assert len(batches) == len(sampler)
        assert sorted(i for batch in batches for i in batch) == list(range(n))
        assert all(len(batch) == 2 for batch in batches[:-1])
