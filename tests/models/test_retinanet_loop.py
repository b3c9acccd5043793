"""RetinaNet through the real loop: every norm trains, evaluates (COCO and VOC), saves and reloads."""

from __future__ import annotations

import json
import statistics
import subprocess

import pytest
import torch
from accelerate.state import AcceleratorState

from conftest import PYTHON, REPO, write_recipe
from hftrain.engine.checkpoints import complete_checkpoints
from hftrain.recipe import load_recipe
from hftrain.train import train
from helpers.retinanet import retinanet_recipe

@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


def records(run_dir, kind):
    return [r for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if r["type"] == kind]


def run(tmp_path, shapes_dir, norm):
    run_dir = tmp_path / norm
    path = write_recipe(tmp_path / f"{norm}.yaml", retinanet_recipe(shapes_dir, run_dir, norm))
    if norm == "syncbn":  # one process: nothing to synchronise with, BatchNorm2d with a warning
        with pytest.warns(UserWarning, match="syncbn"):
            metrics = train(load_recipe(path))
    else:
        metrics = train(load_recipe(path))
    return metrics, run_dir


@pytest.mark.parametrize("norm", ["bn", "frozenbn", "gn", "cbn", "syncbn"])
def test_every_norm_trains_evaluates_and_saves(tmp_path, shapes_dir, norm):
    metrics, run_dir = run(tmp_path, shapes_dir, norm)
    losses = [r["loss"] for r in records(run_dir, "train")]
    assert len(losses) == 3 * 6  # 24 images / batch 4, every step logged
    assert all(torch.isfinite(torch.tensor(losses)))
    # medians per epoch: one spike (CBN without burn-in has them) does not decide
    first, last = statistics.median(losses[:6]), statistics.median(losses[-6:])
    assert last < 0.9 * first, (first, last)
    train_record = records(run_dir, "train")[0]
    assert {"loss_cls", "loss_box"} <= set(train_record)  # RetinaNet's loss_dict reaches the log
    # COCO and VOC metrics side by side, per class too
    for key in ("map", "map_50", "voc07_map", "voc_map", "voc07_ap_rectangle", "voc_ap_triangle"):
        assert 0.0 <= metrics[key] <= 1.0, (key, metrics[key])
    assert records(run_dir, "eval")[-1]["voc07_map"] == metrics["voc07_map"]
    # saved without an image processor; the config keeps the norm
    for weights in ("model", "best"):
        config = json.loads((run_dir / weights / "config.json").read_text())
        assert config["model_type"] == "hftrain_retinanet" and config["norm"] == norm
        assert (run_dir / weights / "model.safetensors").is_file()
        assert not (run_dir / weights / "preprocessor_config.json").exists()
    # optim.name: adam is torch's Adam (L2 weight decay), not AdamW
    groups = torch.load(complete_checkpoints(run_dir)[-1] / "optimizer.bin", weights_only=False)["param_groups"]
    assert groups and all(g["decoupled_weight_decay"] is False for g in groups)
    assert {g["weight_decay"] for g in groups} == {0.0, 1e-4}


def test_eval_command_loads_a_retinanet_run_in_a_fresh_process(tmp_path, shapes_dir):
    """``hftrain eval`` registers RetinaNet itself (a new interpreter knows nothing of it) and
    reproduces the loop's last evaluation, VOC included, from ``model/``."""
    metrics, run_dir = run(tmp_path, shapes_dir, "cbn")
    proc = subprocess.run([PYTHON, "-m", "hftrain.cli", "eval", str(run_dir), "--weights", "model"], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "mAP@[.5:.95]" in proc.stdout and "VOC07 11-point mAP" in proc.stdout
    again = json.loads((run_dir / "eval_model.json").read_text())
    for key in ("map", "map_50", "voc07_map", "voc_map"):
        assert again[key] == pytest.approx(metrics[key], abs=1e-9), key
