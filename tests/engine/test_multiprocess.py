"""The same command with 2 CPU processes (gloo): it finishes, the effective batch doubles, and
exactly one process writes logs, checkpoints and the final model."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from conftest import REPO, tiny_recipe, write_recipe


def launch(recipe_path, processes: int, *overrides: str) -> subprocess.CompletedProcess:
    accelerate = Path(sys.executable).with_name("accelerate")
    command = [str(accelerate if accelerate.exists() else shutil.which("accelerate")), "launch"]
    if processes == 2:
        command += ["--config_file", str(REPO / "accelerate_configs" / "cpu_2proc.yaml")]
    else:
        command += ["--num_processes", "1"]
    command += ["hftrain/train.py", str(recipe_path), *overrides]
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)


def read(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_two_processes_double_the_effective_batch_and_one_writes(tmp_path, shapes_dir):
    runs = {}
    for processes in (1, 2):
        run_dir = tmp_path / f"run{processes}"
        recipe = tiny_recipe(shapes_dir, run_dir, train={"epochs": 2, "batch_size": 4},
                             checkpoint={"interval": 1, "keep": 5})
        proc = launch(write_recipe(tmp_path / f"r{processes}.yaml", recipe), processes)
        assert proc.returncode == 0, proc.stderr[-4000:]
        runs[processes] = (run_dir, proc)

    one, two = (read(runs[n][0]) for n in (1, 2))
    config1 = next(r for r in one if r["type"] == "config")
    config2 = next(r for r in two if r["type"] == "config")
    assert (config1["num_processes"], config1["effective_batch"]) == (1, 4)
    assert (config2["num_processes"], config2["effective_batch"]) == (2, 8)
    assert "effective batch   : 8 (= 4 x 1 x 2)" in runs[2][1].stdout
    assert runs[2][1].stdout.count("hftrain: training") == 1  # one header: only the main process prints

    # 24 images: 6 optimizer steps per epoch alone, 3 with two processes; each step logged once
    steps1 = [r["step"] for r in one if r["type"] == "step"]
    steps2 = [r["step"] for r in two if r["type"] == "step"]
    assert steps1 == list(range(1, 13))
    assert steps2 == list(range(1, 7))
    evals = [r for r in two if r["type"] == "eval"]
    assert [e["epoch"] for e in evals] == [1, 2]

    run2 = runs[2][0]
    checkpoints = sorted(p.name for p in (run2 / "checkpoints").iterdir())
    assert checkpoints == ["step_00000003", "step_00000006"]  # no leftovers from a second writer
    state = json.loads((run2 / "checkpoints" / "step_00000006" / "trainer_state.json").read_text())
    assert (state["epoch"], state["step"]) == (2, 6)
    # Accelerate keeps each process's RNG state in the checkpoint; everything else is written once
    files = sorted(p.name for p in (run2 / "checkpoints" / "step_00000006").iterdir())
    assert "random_states_0.pkl" in files and "random_states_1.pkl" in files
    assert (run2 / "model" / "model.safetensors").is_file() and (run2 / "best").is_dir()
    assert not list(run2.glob("*.partial")) and not list((run2 / "checkpoints").glob("*.partial"))


def test_rt_detr_on_two_processes_with_background_images(tmp_path):
    """Half the images have no box, batch 1: on a step where one process's micro-batch has no box,
    transformers skips denoising there, and DDP's buckets must still match (issue 15, item 2)."""
    from hftrain.data.shapes import generate_shapes_coco

    data = tmp_path / "shapes"
    generate_shapes_coco(data, "train", 4, image_size=64, seed=0)
    generate_shapes_coco(data, "val", 2, image_size=64, seed=1)
    coco = json.loads((data / "train.json").read_text())
    background = {image["id"] for image in coco["images"][1::2]}
    coco["annotations"] = [a for a in coco["annotations"] if a["image_id"] not in background]
    (data / "train.json").write_text(json.dumps(coco))
    run_dir = tmp_path / "run"
    recipe = tiny_recipe(data, run_dir, train={"epochs": 1, "batch_size": 1, "max_steps": 2},
                         eval={"during_training": False})
    proc = launch(write_recipe(tmp_path / "r.yaml", recipe), 2)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert [r["step"] for r in read(run_dir) if r["type"] == "step"] == [1, 2]


@pytest.mark.parametrize("family", ["rt_detr", "rt_detr_v2", "d_fine"])
def test_a_batch_without_boxes_still_reaches_the_denoising_embedding(family):
    from hftrain.models.registry import build_model
    from hftrain.models.tiny import tiny_config

    section = SimpleNamespace(name=family, pretrained=None, config=tiny_config(family), norm="default",
                              norm_scope=["backbone", "fpn", "head"])
    model = build_model(section, ["a", "b"]).model.train()
    labels = [{"class_labels": torch.zeros(0, dtype=torch.long), "boxes": torch.zeros(0, 4)}]
    model(pixel_values=torch.rand(1, 3, 64, 64), labels=labels).loss.backward()
    grad = model.model.denoising_class_embed.weight.grad
    assert grad is not None and not grad.any()  # takes part in the graph, with a zero gradient
