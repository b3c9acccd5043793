"""Shared test fixtures: tiny model configs, a small shapes dataset, recipe writers.

Nothing here downloads anything: models are built from tiny configs, data is generated.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import torch
import yaml

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# tiny models gain nothing from a second thread, and lose a lot when another process wants the core
torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
PYTHON = sys.executable

TINY_RT_DETR = {
    "d_model": 32,
    "encoder_hidden_dim": 32,
    "encoder_in_channels": [64, 128, 256],
    "decoder_in_channels": [32, 32, 32],
    "encoder_ffn_dim": 64,
    "decoder_ffn_dim": 64,
    "decoder_layers": 2,
    "num_queries": 20,
    "num_denoising": 10,
    "encoder_attention_heads": 2,
    "decoder_attention_heads": 2,
    "backbone_config": {
        "layer_type": "bottleneck",
        "embedding_size": 16,
        "hidden_sizes": [32, 64, 128, 256],
        "depths": [1, 1, 1, 1],
        "out_features": ["stage2", "stage3", "stage4"],
    },
}

TINY_DEFORMABLE_DETR = {
    "d_model": 32,
    "encoder_layers": 1,
    "decoder_layers": 2,
    "encoder_ffn_dim": 64,
    "decoder_ffn_dim": 64,
    "encoder_attention_heads": 2,
    "decoder_attention_heads": 2,
    "num_queries": 20,
    "num_feature_levels": 2,
    "encoder_n_points": 2,
    "decoder_n_points": 2,
    "use_pretrained_backbone": False,
    "backbone_config": {
        "embedding_size": 16,
        "hidden_sizes": [16, 32, 64, 128],
        "depths": [1, 1, 1, 1],
        "layer_type": "basic",
        "out_features": ["stage3", "stage4"],
    },
}


@pytest.fixture(autouse=True)
def fresh_accelerate_state(monkeypatch):
    """Accelerate's state is a process-wide singleton: each test starts (and ends) without one,
    and without the fault-injection variables of other tests."""
    from accelerate.state import AcceleratorState

    for name in [n for n in os.environ if n.startswith("HFTRAIN_TEST_")]:
        monkeypatch.delenv(name)
    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


def records(run_dir: Path, kind: str) -> list[dict]:
    """The metrics.jsonl records of one type."""
    lines = (Path(run_dir) / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["type"] == kind]


@pytest.fixture(scope="session")
def shapes_dir(tmp_path_factory) -> Path:
    """A small shapes dataset (COCO files) shared by the tests."""
    from hftrain.data.shapes import generate_shapes_coco

    out = tmp_path_factory.mktemp("shapes")
    generate_shapes_coco(out, "train", 24, image_size=64, seed=0)
    generate_shapes_coco(out, "val", 8, image_size=64, seed=1)
    return out


def tiny_recipe(shapes_dir: Path, run_dir: Path, model: str = "rt_detr", **sections) -> dict:
    """A recipe dict training a tiny model on ``shapes_dir`` in a few seconds."""
    config = TINY_RT_DETR if model == "rt_detr" else TINY_DEFORMABLE_DETR
    recipe = {
        "output_dir": str(run_dir),
        "model": {"name": model, "config": config},
        "data": {
            "train": {"images": str(shapes_dir / "train"), "labels": str(shapes_dir / "train.json")},
            "val": {"images": str(shapes_dir / "val"), "labels": str(shapes_dir / "val.json")},
            "min_size": 64,
            "max_size": 64,
            "num_workers": 0,
        },
        "optim": {"lr": 1e-3, "backbone_lr_mult": 1.0},
        "train": {"epochs": 2, "batch_size": 4, "clip_max_norm": 1.0, "cpu_threads": 1},
        "log": {"interval": 1, "tensorboard": False},
        "plots": {"enabled": False},  # tests that look at pictures turn them on
    }
    for section, values in sections.items():
        recipe.setdefault(section, {}).update(values)
    return recipe


def write_recipe(path: Path, recipe: dict) -> Path:
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path
