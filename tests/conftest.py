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

from hftrain.models.tiny import TINY_CONFIGS, tiny_config

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# tiny models gain nothing from a second thread, and lose a lot when another process wants the core
torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
PYTHON = sys.executable

# the names other tests import; the values live in hftrain/models/tiny.py (also used by --dry-run)
TINY_RT_DETR = TINY_CONFIGS["rt_detr"]
TINY_DEFORMABLE_DETR = TINY_CONFIGS["deformable_detr"]


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist reads the marks (--dist loadgroup)
def pytest_collection_modifyitems(config, items):
    """``make test`` runs the suite in pytest-xdist workers with ``--dist loadgroup``: each test
    goes to whichever worker is free, except that the tests of a module with a module-scoped
    fixture (a training run several tests read, a built dataset) stay together on one worker, so
    the fixture is built once. Without xdist the marks do nothing."""
    for item in items:
        info = getattr(item, "_fixtureinfo", None)
        defs = info.name2fixturedefs.values() if info else ()
        if any(d[-1].scope == "module" for d in defs if d):
            item.add_marker(pytest.mark.xdist_group(item.module.__name__))


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
    config = tiny_config(model)
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


TRAINED_PUSHES: list[dict] = []
"""What ``trained_run``'s uploads would have sent to the Hub (its local double records them)."""


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, shapes_dir) -> tuple[dict, Path]:
    """One tiny RT-DETR run (8 training images, 40 steps): its last metrics and run directory, shared by
    the tests that only read its outputs (tests/engine/test_training.py, tests/tools/test_predict.py ...).
    It pushes best/ and model/ to the Hub through a local double (``TRAINED_PUSHES`` records them), the
    first upload failing as without network."""
    from accelerate.state import AcceleratorState

    from helpers.hub_double import RecordingHub
    from hftrain.recipe import load_recipe
    from hftrain.report import hub_push
    from hftrain.train import train

    AcceleratorState._reset_state(reset_partial_state=True)
    tmp = tmp_path_factory.mktemp("trained")
    recipe = tiny_recipe(shapes_dir, tmp / "run", train={"epochs": 20}, eval={"interval": 10}, optim={"lr": 2e-3},
                         schedule={"name": "constant"}, checkpoint={"interval": 5, "keep": 2},
                         hub={"push": True, "push_best": True, "repo_id": "someone/tiny"})
    path = write_recipe(tmp / "run.yaml", recipe)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_TOKEN", "hf_test_token")
        patch.setattr(hub_push, "HfApi", RecordingHub.factory(TRAINED_PUSHES,
                                                              failures=[ConnectionError("Network is unreachable")]))
        metrics = train(load_recipe(path, ["data.train.subset=8", "data.hflip=0.0"]))
    AcceleratorState._reset_state(reset_partial_state=True)
    return metrics, tmp / "run"
