"""CUDA memory settings (hftrain.health.cuda_memory) on a CPU: the allocator configuration reaches the environment
before CUDA initialises (and is refused after), empty_cache runs every N micro-batches of the real loop,
the memory cap goes to the process's device, and without CUDA nothing is applied."""

from __future__ import annotations

import os
import subprocess

import pytest
import torch

from conftest import PYTHON, REPO, records, tiny_recipe, write_recipe
from hftrain.health import cuda_memory
from hftrain.health.cuda_memory import ALLOC_ENV_VARS, CudaMemory, CudaSettingsError, apply_allocator
from hftrain.recipe import CudaConfig, RecipeError, load_recipe
from hftrain.train import train

CONF = "max_split_size_mb:64,garbage_collection_threshold:0.7"


@pytest.fixture
def clean_env(monkeypatch):
    """No allocator variables to start with; whatever a test sets is removed afterwards."""
    for name in ALLOC_ENV_VARS:
        monkeypatch.setenv(name, "")  # recorded as absent (or as it was): undone after the test
        monkeypatch.delenv(name)
    return monkeypatch


def test_the_allocator_configuration_is_set_in_both_variables(clean_env):
    assert not torch.cuda.is_initialized()
    said = apply_allocator(CudaConfig(alloc_conf=CONF), use_cuda=True)
    assert [os.environ.get(name) for name in ALLOC_ENV_VARS] == [CONF, CONF]
    assert said == f"allocator: {CONF}"
    clean_env.setenv("PYTORCH_ALLOC_CONF", "expandable_segments:True")  # the launcher's own value is replaced, visibly
    said = apply_allocator(CudaConfig(alloc_conf=CONF), use_cuda=True)
    assert os.environ["PYTORCH_ALLOC_CONF"] == CONF and "replaces PYTORCH_ALLOC_CONF=expandable_segments:True" in said


def test_torch_reads_a_value_set_after_import_but_before_the_allocator_starts():
    """torch parses the allocator settings once, lazily: setting them after ``import torch`` still counts."""
    script = ("import torch\nfrom hftrain.health.cuda_memory import apply_allocator\nfrom hftrain.recipe import CudaConfig\n"
              f"apply_allocator(CudaConfig(alloc_conf={CONF!r}), use_cuda=True)\n"
              "print(torch._C._accelerator_getAllocatorSettings())\n")
    env = {k: v for k, v in os.environ.items() if k not in ALLOC_ENV_VARS}
    proc = subprocess.run([PYTHON, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == CONF


def test_applying_after_cuda_initialised_is_refused(clean_env):
    clean_env.setattr(torch.cuda, "is_initialized", lambda: True)  # as if something had used CUDA already
    with pytest.raises(CudaSettingsError, match=r"cuda.alloc_conf=.*CUDA is already initialised"):
        apply_allocator(CudaConfig(alloc_conf=CONF), use_cuda=True)
    assert not any(os.environ.get(name) for name in ALLOC_ENV_VARS)  # nothing half-applied
    for name in ALLOC_ENV_VARS:  # the same value, set before CUDA started (a second run in this process): fine
        clean_env.setenv(name, CONF)
    assert "already set before CUDA initialised" in apply_allocator(CudaConfig(alloc_conf=CONF), use_cuda=True)


def test_train_sets_the_allocator_before_accelerate_touches_the_device(clean_env, tmp_path, shapes_dir):
    import hftrain.train as loop

    seen = {}

    class Stop(Exception):
        pass

    def recording_state(*args, **kwargs):
        seen.update({name: os.environ.get(name) for name in ALLOC_ENV_VARS})
        raise Stop

    clean_env.setattr(loop, "use_cpu", lambda: False)  # a CUDA machine, as far as train() can tell
    clean_env.setattr(loop, "PartialState", recording_state)  # the first thing that may initialise CUDA
    recipe = tiny_recipe(shapes_dir, tmp_path / "run", cuda={"alloc_conf": CONF})
    with pytest.raises(Stop):
        train(load_recipe(write_recipe(tmp_path / "r.yaml", recipe)))
    assert seen == {name: CONF for name in ALLOC_ENV_VARS}


def test_empty_cache_runs_every_n_micro_batches_and_the_cap_goes_to_the_device(monkeypatch, tmp_path, shapes_dir):
    emptied, capped = [], []
    monkeypatch.setattr(cuda_memory, "on_cuda", lambda device: True)  # the CUDA paths, on a CPU
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: emptied.append(1))
    monkeypatch.setattr(torch.cuda, "set_per_process_memory_fraction",
                        lambda fraction, device=None: capped.append((fraction, torch.device(device))))
    run_dir = tmp_path / "run"
    every, accumulation = 4, 3  # per epoch: micro-batch 4 only (not steps, not a count across epochs)
    recipe = tiny_recipe(shapes_dir, run_dir, train={"epochs": 2, "gradient_accumulation_steps": accumulation},
                         cuda={"memory_fraction": 0.85, "empty_cache_every": every}, eval={"interval": 5})
    train(load_recipe(write_recipe(tmp_path / "r.yaml", recipe)))
    micro_per_epoch = len(records(run_dir, "step")) * accumulation // 2
    assert micro_per_epoch == 6  # 24 images, batch 4
    assert len(emptied) == 2 * (micro_per_epoch // every)
    assert capped == [(0.85, torch.device("cpu"))]  # once, on this process's device
    assert "cuda memory       : allocator: PyTorch defaults; memory cap 0.85 of the GPU; empty_cache every 4 " \
           "micro-batches" in (run_dir / "train.log").read_text()


def test_without_cuda_nothing_is_applied(clean_env):
    calls = []
    clean_env.setattr(torch.cuda, "empty_cache", lambda: calls.append("empty"))
    clean_env.setattr(torch.cuda, "set_per_process_memory_fraction", lambda *a, **k: calls.append("cap"))
    cfg = CudaConfig(alloc_conf=CONF, memory_fraction=0.5, empty_cache_every=1)
    said = apply_allocator(cfg, use_cuda=False)
    assert not any(os.environ.get(name) for name in ALLOC_ENV_VARS)
    memory = CudaMemory(cfg, "cpu")
    memory.limit_memory()
    assert not any(memory.empty_cache_due(n) for n in range(1, 10)) and calls == []
    assert memory.describe(said) == (f"no CUDA device: not applied (alloc_conf {CONF}, memory_fraction 0.5, "
                                     "empty_cache_every 1)")


def test_the_seed_setups_allocator_strings_are_accepted():
    for text in ("max_split_size_mb:64", "max_split_size_mb:512,garbage_collection_threshold:0.7,expandable_segments:True",
                 "roundup_power2_divisions:[256:1,512:2,>:4],backend:native"):
        assert cuda_memory.check_alloc_conf(text) == [], text


def test_recipe_values_are_checked(tmp_path, shapes_dir):
    recipe = tiny_recipe(shapes_dir, tmp_path / "run", cuda={
        "alloc_conf": "max_split_size:64,expandable_segments,roundup_power2_divisions:[256:1,>:4]",
        "memory_fraction": 1.5, "empty_cache_every": 0})
    with pytest.raises(RecipeError) as err:
        load_recipe(write_recipe(tmp_path / "r.yaml", recipe))
    message = str(err.value)
    assert "unknown allocator option 'max_split_size' (did you mean 'max_split_size_mb'?)" in message
    assert "'expandable_segments' in" in message and "is not of the form key:value" in message
    assert "cuda.memory_fraction: must be in (0, 1] or null, got 1.5" in message
    assert "cuda.empty_cache_every: must be at least 1 or null, got 0" in message
