"""The RetinaNet study's recipe on the 64-pixel shapes set (the RetinaNet loop and sweep tests)."""

from __future__ import annotations

from hftrain.models.tiny import tiny_config

TINY_RETINANET = tiny_config("retinanet")


def retinanet_recipe(shapes_dir, run_dir, norm: str) -> dict:
    """The study's optimiser (Adam, lr 1e-3, from scratch) on the 64-pixel shapes set."""
    return {
        "output_dir": str(run_dir),
        "model": {"name": "retinanet", "norm": norm, "config": dict(TINY_RETINANET)},
        "data": {
            "train": {"images": str(shapes_dir / "train"), "labels": str(shapes_dir / "train.json")},
            "val": {"images": str(shapes_dir / "val"), "labels": str(shapes_dir / "val.json")},
            "min_size": 64, "max_size": 64, "num_workers": 0, "hflip": 0.0,
        },
        "optim": {"name": "adam", "lr": 1e-3, "backbone_lr_mult": 1.0, "weight_decay": 1e-4},
        "schedule": {"name": "constant"},
        "train": {"epochs": 3, "batch_size": 4, "clip_max_norm": None},
        "eval": {"voc": True, "interval": 3},
        "log": {"interval": 1, "tensorboard": False},
        "plots": {"enabled": False},  # pictures are tested in test_pictures.py; here they only cost time
    }
