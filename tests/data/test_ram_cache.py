"""data.cache: ram: one copy of the resized images, filled by the workers, shared with every
process, exactly sized in advance, refused when memory is short, and invisible to training."""

from __future__ import annotations

import copy
import json
import os
import pickle
import subprocess
import sys
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import tiny_recipe, write_recipe
from hftrain.data.loader import load_data, make_loader
from hftrain.data.ram_cache import (EMPTY, FILLED, TOO_LARGE, RamCache, RamCacheRefused, cache_bytes, output_sizes,
                                    ram_caches)
from hftrain.data.shapes import generate_shapes_coco
from hftrain.data.transforms import Resize
from hftrain.recipe import DataConfig, SplitConfig, load_recipe


def shapes(root: Path, train: int = 16) -> Path:
    """A shapes dataset of its own (some tests delete or break its files)."""
    generate_shapes_coco(root, "train", train, image_size=64, seed=0)
    generate_shapes_coco(root, "val", 4, image_size=64, seed=1)
    return root


def data_config(root: Path, **values) -> DataConfig:
    values = {"min_size": 48, "max_size": 48, "hflip": 0.0, "cache": "ram", "num_workers": 2, **values}
    return DataConfig(train=SplitConfig(images=str(root / "train"), labels=str(root / "train.json")),
                      val=SplitConfig(images=str(root / "val"), labels=str(root / "val.json")), **values)


def uncached(dataset):
    plain = copy.copy(dataset)
    plain.cache = None
    return plain


def epoch(loader) -> tuple[list[torch.Tensor], int]:
    batches = list(loader)
    return [b["pixel_values"] for b in batches], sum(b["skipped"] for b in batches)


def test_workers_fill_one_shared_copy_and_later_epochs_decode_nothing(tmp_path):
    root = shapes(tmp_path)
    cfg = data_config(root)
    data = load_data(cfg)
    cache = data.train.cache
    assert data.val.cache is None  # the validation split is cached only with data.cache_val
    assert (cache.states() == EMPTY).all()
    loader = make_loader(data.train, 4, cfg, shuffle=False, normalize_by_canvas=False, seed=0)  # 2 forked workers
    first, skipped = epoch(loader)
    assert skipped == 0
    # the workers wrote into memory this process sees: every slot filled, with the uncached pixels
    assert (cache.states() == FILLED).all()
    reference = uncached(data.train)
    for index in range(len(data.train)):
        expected = reference.load(index)
        assert torch.equal(cache.get(index), expected["pixel_values"])
        assert torch.equal(data.train.load(index)["boxes"], expected["boxes"])

    for image in (root / "train").iterdir():  # from here on, any decode would fail
        image.unlink()
    second, skipped = epoch(loader)  # the same persistent workers
    assert skipped == 0 and all(torch.equal(a, b) for a, b in zip(first, second))


CHILD = """
import pickle, sys, torch
cache = pickle.loads(sys.stdin.buffer.read())
sys.stdout.write(repr(cache.get(0).flatten().tolist()))
cache.put(1, torch.arange(45, dtype=torch.uint8).reshape(3, 5, 3))
"""


def test_a_new_process_given_the_pickled_cache_reads_and_fills_the_same_memory():
    """What a spawned dataloader worker does with its pickled dataset's cache (in a fresh interpreter
    that inherits nothing: the descriptor is close-on-exec, and only (pid, fd) is pickled)."""
    cache = RamCache.allocate(np.array([[4, 6], [5, 3], [2, 2]]))
    first = torch.randint(0, 256, (3, 4, 6), dtype=torch.uint8)
    cache.put(0, first)
    child = subprocess.run([sys.executable, "-c", CHILD], input=pickle.dumps(cache), capture_output=True, timeout=120)
    assert child.returncode == 0, child.stderr.decode()[-2000:]
    assert eval(child.stdout) == first.flatten().tolist()  # it read what this process wrote...
    assert cache.states().tolist() == [FILLED, FILLED, EMPTY]  # ...and wrote where this process reads
    assert cache.get(1).flatten().tolist() == list(range(45))


def test_a_broken_image_never_enters_the_cache_and_counts_as_failed_every_epoch(tmp_path):
    root = shapes(tmp_path, train=8)
    cfg = data_config(root, num_workers=0)  # in order: image 4 is decoded first as the stand-in for 3
    data = load_data(cfg)
    broken = 3
    path = root / "train" / data.train.rows[broken]["image"]["path"]
    path.write_bytes(path.read_bytes()[:200])  # truncated JPEG
    loader = make_loader(data.train, 4, cfg, shuffle=False, normalize_by_canvas=False, seed=0)
    for _ in range(2):
        _, skipped = epoch(loader)
        assert skipped == 1  # counted each epoch, as without the cache
        states = data.train.cache.states()
        assert states[broken] == EMPTY and (states[[i for i in range(8) if i != broken]] == FILLED).all()
    stand_in = data.train.load(broken)  # the next image stands in for it
    assert stand_in["failed"] == 1
    assert torch.equal(stand_in["pixel_values"], data.train.cache.get(broken + 1))


def test_an_image_not_of_its_annotated_size_never_enters_the_cache_and_an_oversize_put_is_refused(tmp_path, capfd):
    root = shapes(tmp_path, train=4)
    labels = json.loads((root / "train.json").read_text())
    labels["images"][0].update(height=64, width=8)  # a 64 x 64 file: its slot is sized 96 x 12
    (root / "train.json").write_text(json.dumps(labels))
    cfg = data_config(root, min_size=48, max_size=96, num_workers=0)
    data = load_data(cfg)
    for _ in range(2):  # the loader skips it (counted) every time, as the scan's size mismatch
        sample = data.train.load(0)
        assert sample["failed"] == 1 and sample["image_id"] == data.train.rows[1]["image_id"]
        assert torch.equal(sample["pixel_values"], data.train.cache.get(1))
    assert data.train.cache.states().tolist() == [EMPTY, FILLED, EMPTY, EMPTY]
    assert capfd.readouterr().out.count("size mismatch: annotated 8x64, image 64x64") == 2
    # the cache's own guard stays: pixels larger than their slot are refused, reported once
    oversize = torch.zeros((3, 96, 96), dtype=torch.uint8)
    assert data.train.cache.put(0, oversize) is False and data.train.cache.put(0, oversize) is False
    assert data.train.cache.states().tolist() == [TOO_LARGE, FILLED, EMPTY, EMPTY]
    assert capfd.readouterr().out.count("is larger than its slot") == 1


def test_the_estimate_is_the_buffer_and_short_memory_is_refused(tmp_path, monkeypatch):
    root = shapes(tmp_path, train=8)
    cfg = data_config(root, cache_val=True, cache_margin_gb=0.5)
    data = load_data(replace(cfg, cache="none"))
    resize = Resize(cfg.min_size, cfg.max_size)
    need = sum(cache_bytes(output_sizes(split.rows, resize)) for split in (data.train, data.val))
    margin = int(0.5 * 1024 ** 3)

    monkeypatch.setenv("HFTRAIN_TEST_AVAILABLE_MEMORY", str(need + margin - 1))
    with pytest.raises(RamCacheRefused) as refused:
        load_data(cfg)
    message = str(refused.value)
    assert "data.cache" in message and "available" in message and "data.cache: none" in message
    assert f"{need / 2 ** 20:.2f} MiB" in message  # what it needs, in numbers

    monkeypatch.setenv("HFTRAIN_TEST_AVAILABLE_MEMORY", str(need + margin))
    data = load_data(cfg)
    assert any(note.startswith("data.cache: ram") for note in data.notes)
    held = sum(os.fstat(split.cache.fd).st_size for split in (data.train, data.val))
    assert held == need  # the estimate is the real buffer
    pixels = sum(uncached(split).load(i)["pixel_values"].numel() for split in (data.train, data.val)
                 for i in range(len(split)))
    assert data.train.cache.pixel_bytes + data.val.cache.pixel_bytes == pixels

    # three training processes on this machine that do not share one copy need three
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "3")
    with pytest.raises(RamCacheRefused, match="x 3 processes"):
        load_data(cfg)


def test_train_refuses_before_building_anything(tmp_path, shapes_dir, monkeypatch, capsys):
    from hftrain.train import main

    recipe = tiny_recipe(shapes_dir, tmp_path / "run", data={"cache": "ram"})
    monkeypatch.setenv("HFTRAIN_TEST_AVAILABLE_MEMORY", str(1024 ** 3))  # 1 GiB, below the 4 GiB margin
    assert main([str(write_recipe(tmp_path / "r.yaml", recipe))]) == 2
    err = capsys.readouterr().err
    assert "data.cache: ram needs" in err and "1.00 GiB is available" in err
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_margin_is_range_checked(tmp_path, shapes_dir):
    from hftrain.recipe import RecipeError

    path = write_recipe(tmp_path / "r.yaml", tiny_recipe(shapes_dir, tmp_path / "run"))
    with pytest.raises(RecipeError, match="data.cache_margin_gb: must be 0 or more"):
        load_recipe(path, ["data.cache=ram", "data.cache_margin_gb=-1"])
    with pytest.raises(RecipeError, match="data.cache: expected one of"):
        load_recipe(path, ["data.cache=disk"])


def test_training_with_the_cache_is_training_without_it(tmp_path, shapes_dir):
    from conftest import records
    from hftrain.train import train

    losses = {}
    for cache in ("none", "ram"):
        recipe = tiny_recipe(shapes_dir, tmp_path / cache, data={"cache": cache, "cache_val": True,
                                                                  "cache_margin_gb": 0.0, "hflip": 0.5},
                             train={"epochs": 2, "batch_size": 8})
        train(load_recipe(write_recipe(tmp_path / f"{cache}.yaml", recipe)))
        losses[cache] = [r["loss"] for r in records(tmp_path / cache, "train")]
    assert len(losses["ram"]) == 6  # 24 images, batch 8, 2 epochs: the second read from the cache
    assert losses["ram"] == losses["none"]
    assert "data.cache: ram:" in (tmp_path / "ram" / "train.log").read_text()


# ---------------------------------------------------------------------------- two training processes


RANK_ONE = """
import os, sys
from datetime import timedelta
import torch, torch.distributed as dist
from hftrain.data.ram_cache import RamCacheRefused, ram_caches

os.environ.update(LOCAL_RANK="1", LOCAL_WORLD_SIZE="2")
dist.init_process_group("gloo", init_method=sys.argv[1], rank=1, world_size=2, timeout=timedelta(seconds=120))
try:
    ram_caches({"train": torch.tensor([[4, 6], [5, 3]]).numpy()}, 0.0, "two images")
except RamCacheRefused as err:  # local rank 0 refused: so does every process
    print(err, file=sys.stderr)
caches, _ = ram_caches({"train": torch.tensor([[4, 6], [5, 3]]).numpy()}, 0.0, "two images")
caches["train"].put(1, torch.arange(45, dtype=torch.uint8).reshape(3, 5, 3))
dist.barrier()
dist.destroy_process_group()
"""


def test_two_training_processes_share_one_copy_or_both_refuse(tmp_path, monkeypatch):
    """Two training processes on this machine (gloo): this one is local rank 0 and makes the cache;
    the other attaches to it and writes an image that this one then reads."""
    import torch.distributed as dist

    init = f"file://{tmp_path}/rendezvous"
    other = subprocess.Popen([sys.executable, "-c", RANK_ONE, init], stderr=subprocess.PIPE, text=True)
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    dist.init_process_group("gloo", init_method=init, rank=0, world_size=2, timeout=timedelta(seconds=120))
    try:
        sizes = {"train": np.array([[4, 6], [5, 3]])}
        monkeypatch.setenv("HFTRAIN_TEST_AVAILABLE_MEMORY", "1000")
        with pytest.raises(RamCacheRefused) as refused:
            ram_caches(sizes, 0.0, "two images")
        monkeypatch.delenv("HFTRAIN_TEST_AVAILABLE_MEMORY")
        caches, note = ram_caches(sizes, 0.0, "two images")
        dist.barrier()  # the other process has written image 1
        assert caches["train"].states().tolist() == [EMPTY, FILLED]
        assert caches["train"].get(1).flatten().tolist() == list(range(45))
        assert "one copy shared by the 2 processes on this machine" in note
    finally:
        dist.destroy_process_group()
    assert other.wait(timeout=120) == 0, other.stderr.read()[-2000:]
    assert str(refused.value) in other.stderr.read()  # the same refusal, raised there too
