"""The GPU speed switches: TF32, cuDNN benchmark, the fused optimizer, channels-last, compile.
No CUDA device here: each switch's decision is tested with the device facts given to it, and the
torch backend flags it sets are read back."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from hftrain.engine.accelerator import apply_cudnn_benchmark, apply_tf32, fixed_input_size, speed_settings
from hftrain.engine.optim import build_optimizer, use_fused
from hftrain.recipe import Recipe, RecipeError, load_recipe
from hftrain.recipe.schema import AugmentConfig, DataConfig, OptimConfig


@pytest.fixture
def backend_flags():
    """Whatever a test sets, the process's flags are put back."""
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark)
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark = saved


def test_tf32_is_set_on_ampere_and_newer_only(backend_flags):
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    assert apply_tf32(True, (7, 5)).startswith("n/a")  # Turing: no TF32, flags untouched
    assert not torch.backends.cuda.matmul.allow_tf32
    assert apply_tf32(True, (8, 0)).startswith("on")
    assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
    assert apply_tf32(False, (9, 0)).startswith("off")  # H100 with precision.tf32: false
    assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
    assert apply_tf32(True, None).startswith("n/a")


def test_cudnn_benchmark_auto_follows_fixed_input_sizes(backend_flags):
    square = DataConfig(resize="square")
    jitter = DataConfig(resize="square", augment=AugmentConfig(scale_jitter=0.5))
    assert fixed_input_size(square) and not fixed_input_size(jitter) and not fixed_input_size(DataConfig())
    assert apply_cudnn_benchmark("auto", square, on_cuda=True) == "on (auto: fixed input size)"
    assert torch.backends.cudnn.benchmark
    assert apply_cudnn_benchmark("auto", DataConfig(), on_cuda=True) == "off (auto: input sizes vary)"
    assert not torch.backends.cudnn.benchmark
    assert apply_cudnn_benchmark(True, jitter, on_cuda=True) == "on" and torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = False
    assert apply_cudnn_benchmark(True, square, on_cuda=False).startswith("n/a") and not torch.backends.cudnn.benchmark


def test_fused_adamw_on_cuda_by_default():
    assert use_fused("auto", "cuda") and not use_fused("auto", "cpu")
    assert use_fused(True, "cpu") and not use_fused(False, "cuda")
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
    # built before accelerator.prepare moves the weights: the device type decides, not where they are now
    assert build_optimizer(model, ("0.",), OptimConfig(), "cuda").defaults["fused"] is True
    assert build_optimizer(model, ("0.",), OptimConfig(), "cpu").defaults["fused"] is None  # for-each default
    forced = build_optimizer(model, ("0.",), OptimConfig(fused=True), "cpu")  # CPU has a fused kernel too
    model(torch.ones(1, 4)).sum().backward()
    forced.step()
    assert forced.defaults["fused"] is True and len(forced.state) == 4


def test_header_rows_and_bad_values_are_rejected(tmp_path, backend_flags):
    rows = dict(speed_settings(Recipe(), torch.device("cpu")))
    assert rows["tf32"].startswith("n/a") and rows["cudnn benchmark"].startswith("n/a")
    assert rows["optimizer kernel"] == "for-each (optim.fused: auto)"
    assert rows["channels last"] == "off" and rows["compile"] == "off"
    path = tmp_path / "r.yaml"
    path.write_text("output_dir: out\n")
    recipe = load_recipe(path, ["precision.tf32=false", "cuda.cudnn_benchmark=true", "optim.fused=auto",
                                "cuda.channels_last=true", "train.compile=true"], check_paths=False)
    assert (recipe.precision.tf32, recipe.cuda.cudnn_benchmark, recipe.optim.fused) == (False, True, "auto")
    assert recipe.cuda.channels_last and recipe.train.compile
    with pytest.raises(RecipeError) as err:
        load_recipe(path, ["precision.tf32=maybe", "optim.fused=fast", "cuda.cudnn_benchmark=2", "train.compile=yes please"],
                    check_paths=False)
    text = str(err.value)
    for key in ("precision.tf32", "optim.fused", "cuda.cudnn_benchmark", "train.compile"):
        assert key in text, text
