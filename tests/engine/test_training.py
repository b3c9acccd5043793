"""Tiny models really train through the one loop, and a run directory holds what it promises."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
import yaml
from accelerate.state import AcceleratorState

from conftest import PYTHON, REPO, TRAINED_PUSHES as PUSHES, records, tiny_recipe, write_recipe
from hftrain.recipe import load_recipe
from hftrain.tools.eval import evaluate_run
from hftrain.engine.loop import TooManyBadImages
from hftrain.train import main as train_main, train


def run(tmp_path, shapes_dir, name="run", overrides=(), model="rt_detr", resume=None, **sections):
    path = write_recipe(tmp_path / f"{name}.yaml", tiny_recipe(shapes_dir, tmp_path / name, model=model, **sections))
    return train(load_recipe(path, list(overrides)), resume=resume), tmp_path / name


@pytest.fixture
def trained(trained_run):
    """One tiny RT-DETR run (8 images, 40 steps) shared by the tests that only read its outputs (conftest's
    ``trained_run``); it pushed best/ and model/ through a local double that recorded them in ``PUSHES``."""
    return trained_run


def test_loss_falls_and_metrics_are_logged(trained):
    metrics, run_dir = trained
    losses = [r["loss"] for r in records(run_dir, "train")]
    assert len(losses) == 20 * 2  # 8 images / batch 4, every step logged
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.8 * first, (first, last)
    evals = records(run_dir, "eval")
    assert [e["epoch"] for e in evals] == [10, 20]
    for key in ("map", "map_50", "map_75", "map_small", "map_medium", "map_large", "mar_100"):
        assert key in metrics and 0.0 <= metrics[key] <= 1.0 or metrics[key] == -1.0
    train_record = records(run_dir, "train")[0]
    for key in ("t_load", "t_step", "t_load_share", "lr", "loss_vfl", "clipped_fraction"):
        assert key in train_record
    steps = records(run_dir, "step")
    assert [s["step"] for s in steps] == list(range(1, 41))
    assert all(s["grad_norm"] > 0 for s in steps)


def test_run_directory_contents(trained, shapes_dir, tmp_path):
    _, run_dir = trained
    # the resolved recipe alone repeats the run
    saved = load_recipe(run_dir / "recipe.yaml")
    assert saved.train.epochs == 20 and saved.model.config["d_model"] == 32 and saved.data.train.subset == 8
    # keep=2 epoch checkpoints, complete ones only
    names = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert names == ["step_00000030", "step_00000040"]  # epochs 15 and 20 (2 steps per epoch)
    state = json.loads((run_dir / "checkpoints" / "step_00000040" / "trainer_state.json").read_text())
    assert (state["epoch"], state["step"], state["epoch_complete"]) == (20, 40, True)
    manifest = json.loads((run_dir / "checkpoints" / "step_00000040" / "manifest.json").read_text())
    assert {"model.safetensors", "optimizer.bin", "scheduler.pt", "trainer_state.json"} <= set(manifest["files"])
    best_info = json.loads((run_dir / "best" / "hftrain_info.json").read_text())
    best_eval = max(records(run_dir, "eval"), key=lambda r: r["map"])
    assert best_info["map"] == best_eval["map"]
    # the recommended score threshold (best F1 at IoU 0.5) of best/'s epoch and of the last is saved in the config
    last_eval = records(run_dir, "eval")[-1]
    assert 0.0 < best_eval["f1_threshold"] < 1.0 and 0.0 < last_eval["f1_threshold"] < 1.0
    assert json.loads((run_dir / "best" / "config.json").read_text())["hftrain_score_threshold"] == best_eval["f1_threshold"]
    assert json.loads((run_dir / "model" / "config.json").read_text())["hftrain_score_threshold"] == last_eval["f1_threshold"]


def test_saved_model_loads_in_transformers_and_the_pipeline(trained, shapes_dir):
    from transformers import AutoModelForObjectDetection, pipeline

    _, run_dir = trained
    model = AutoModelForObjectDetection.from_pretrained(run_dir / "model")
    assert model.config.id2label == {0: "rectangle", 1: "ellipse", 2: "triangle"}
    detector = pipeline("object-detection", model=str(run_dir / "model"), threshold=0.0)
    found = detector(str(next((shapes_dir / "val").glob("*.jpg"))))
    assert len(found) > 0
    threshold = detector.model.config.hftrain_score_threshold  # the recommended threshold, as the README uses it
    kept = detector(str(next((shapes_dir / "val").glob("*.jpg"))), threshold=threshold)
    assert [f for f in found if f["score"] > threshold] == kept
    assert {"score", "label", "box"} <= set(found[0])
    assert found[0]["label"] in {"rectangle", "ellipse", "triangle"}


def test_best_and_model_get_a_hub_model_card_and_are_pushed(trained):
    from huggingface_hub import ModelCard

    metrics, run_dir = trained
    card = ModelCard.load(run_dir / "model" / "README.md")
    assert card.data.library_name == "transformers" and card.data.pipeline_tag == "object-detection"
    assert card.data.base_model is None and card.data.tags == ["object-detection", "hftrain", "rt_detr"]
    measured = {r.metric_type: r.metric_value for r in card.data.eval_results}
    assert measured["map"] == round(metrics["map"], 4) and measured["map_50"] == round(metrics["map_50"], 4)
    info = json.loads((run_dir / "model" / "hftrain_info.json").read_text())
    assert info["training"]["num_processes"] == 1 and info["training"]["device"].startswith("CPU")
    assert 0 < info["training"]["seconds"] and info["training"]["steps"] == 40
    assert "| hardware | 1 x CPU" in card.text and "| rectangle |" in card.text  # per-class AP
    best_card = ModelCard.load(run_dir / "best" / "README.md")
    best_info = json.loads((run_dir / "best" / "hftrain_info.json").read_text())
    assert best_card.data.eval_results[0].metric_value == round(best_info["metrics"]["map"], 4)
    # the first upload (best/ after epoch 10) failed as without network: logged, the run went on
    log = (run_dir / "train.log").read_text()
    assert "hub: push of " in log and "network error" in log and "hftrain push" in log
    uploads = [c for c in PUSHES if c["call"] == "upload_folder"]
    bests = log.count("new best map")
    assert [Path(u["folder"]).name for u in uploads] == ["best"] * (bests - 1) + ["model"]
    assert uploads[-1]["card"] == (run_dir / "model" / "README.md").read_text()
    assert {"README.md", "config.json", "model.safetensors", "hftrain_info.json"} <= set(uploads[-1]["files"])
    assert 'model="someone/tiny"' in uploads[-1]["card"]


def test_eval_command_reproduces_the_best_epochs_numbers(trained, shapes_dir):
    _, run_dir = trained
    AcceleratorState._reset_state(reset_partial_state=True)
    metrics = evaluate_run(run_dir)
    best_info = json.loads((run_dir / "best" / "hftrain_info.json").read_text())
    assert metrics["map"] == pytest.approx(best_info["metrics"]["map"], abs=1e-9)
    assert metrics["map_50"] == pytest.approx(best_info["metrics"]["map_50"], abs=1e-9)
    # predictions_best.json is a COCO results file in the dataset's own ids (categories 1..3, not
    # the labels 0..2): pycocotools scores it against the original val.json to the same mAP
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    # the confusion matrix at the saved recommended threshold, beside the metrics (which now include it)
    saved = json.loads((run_dir / "eval_best_plots" / "confusion_matrix.json").read_text())
    assert saved["recommended_threshold"] == metrics["f1_threshold"] == best_info["metrics"]["f1_threshold"]
    best_config = json.loads((run_dir / "best" / "config.json").read_text())
    assert saved["threshold"] == best_config["hftrain_score_threshold"]
    assert saved["threshold_source"] == "best/config.json hftrain_score_threshold"
    assert {p.name for p in (run_dir / "eval_best_plots").iterdir()} == {
        "confusion_matrix.json", "confusion_matrix.png", "confusion_matrix_normalized.png", "f1_curve.png",
        "p_curve.png", "r_curve.png"}
    results = json.loads((run_dir / "predictions_best.json").read_text())
    gt = COCO(str(shapes_dir / "val.json"))
    assert results and {r["category_id"] for r in results} <= set(gt.getCatIds())
    check = COCOeval(gt, gt.loadRes(results), "bbox")
    check.evaluate(), check.accumulate(), check.summarize()
    assert check.stats[0] == pytest.approx(metrics["map"], abs=1e-6)


def test_resume_continues_from_the_saved_epoch(tmp_path, shapes_dir):
    _, run_dir = run(tmp_path, shapes_dir, train={"epochs": 2}, eval={"interval": 5})
    AcceleratorState._reset_state(reset_partial_state=True)
    before = torch.load(run_dir / "checkpoints" / "step_00000012" / "optimizer.bin", weights_only=True)["state"]
    assert before  # the optimizer has state worth restoring
    run(tmp_path, shapes_dir, overrides=["train.epochs=3"], resume=True, train={"epochs": 2}, eval={"interval": 5})
    steps = [r["step"] for r in records(run_dir, "step")]
    assert steps == list(range(1, 13)) + list(range(13, 19))  # epoch 3 continues the step count
    epochs = [r["epoch"] for r in records(run_dir, "step")]
    assert epochs[-6:] == [3] * 6
    assert json.loads((run_dir / "checkpoints" / "step_00000018" / "trainer_state.json").read_text())["epoch"] == 3


def test_accumulation_counts_optimizer_steps_and_clipping_can_be_off(tmp_path, shapes_dir):
    _, run_dir = run(tmp_path, shapes_dir, train={"epochs": 1, "gradient_accumulation_steps": 2, "clip_max_norm": None},
                     log={"interval": 1})
    steps = records(run_dir, "step")
    assert len(steps) == 3  # 6 micro-batches / 2
    assert all(r["clipped_fraction"] == 0.0 for r in records(run_dir, "train"))
    config = records(run_dir, "config")[0]
    assert config["effective_batch"] == 8


def test_deformable_detr_trains(tmp_path, shapes_dir):
    metrics, run_dir = run(tmp_path, shapes_dir, model="deformable_detr", train={"epochs": 1})
    losses = [r["loss"] for r in records(run_dir, "train")]
    assert losses and all(torch.isfinite(torch.tensor(losses)))
    assert "map" in metrics
    assert (run_dir / "model" / "preprocessor_config.json").is_file()


def test_bf16_autocast_on_cpu_trains_with_an_fp32_criterion(tmp_path, shapes_dir):
    _, run_dir = run(tmp_path, shapes_dir, precision={"mode": "bf16"}, train={"epochs": 1})
    assert records(run_dir, "config")[0]["precision"] == "bf16"
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in records(run_dir, "train"))


def test_images_that_fail_to_decode_are_skipped_then_fail_loudly(tmp_path, shapes_dir):
    broken = tmp_path / "shapes"
    shutil.copytree(shapes_dir, broken)
    images = sorted((broken / "train").glob("*.jpg"))
    images[0].write_bytes(images[0].read_bytes()[:200])  # a truncated JPEG: opens, fails to decode
    recipe = tiny_recipe(broken, tmp_path / "run_skip", train={"epochs": 1})
    recipe["data"]["max_bad_fraction"] = 0.1
    metrics = train(load_recipe(write_recipe(tmp_path / "skip.yaml", recipe)))
    assert "map" in metrics
    # the broken image is replaced by the next one that decodes: batches keep their size
    assert len(records(tmp_path / "run_skip", "step")) == 6
    for image in images[1:4]:
        image.write_bytes(b"")
    AcceleratorState._reset_state(reset_partial_state=True)
    recipe["output_dir"] = str(tmp_path / "run_fail")
    with pytest.raises(TooManyBadImages, match="max_bad_fraction=0.1"):
        train(load_recipe(write_recipe(tmp_path / "fail.yaml", recipe)))


def test_the_bad_image_limit_is_per_epoch_and_a_resume_keeps_the_epochs_count(tmp_path, capsys):
    """One truncated image in 8, limit 30% of 8 = 2.4 per epoch: every epoch replaces it once (the
    count was once cumulative and the run stopped in epoch 3 of 4); checkpoints inside an epoch
    hold the epoch's count and a resume from one continues it."""
    from hftrain.data.shapes import generate_shapes_coco

    data = tmp_path / "shapes"
    generate_shapes_coco(data, "train", 8, image_size=64, seed=0)
    generate_shapes_coco(data, "val", 2, image_size=64, seed=1)
    image = sorted((data / "train").glob("*.jpg"))[3]
    image.write_bytes(image.read_bytes()[:200])
    recipe = tiny_recipe(data, tmp_path / "run", train={"epochs": 4}, eval={"during_training": False},
                         checkpoint={"every_steps": 1, "keep": 20})
    recipe["data"]["max_bad_fraction"] = 0.3
    path = write_recipe(tmp_path / "r.yaml", recipe)
    train(load_recipe(path))
    run_dir = tmp_path / "run"
    assert [(r["epoch"], r["bad_images_epoch"]) for r in records(run_dir, "epoch")] == [(e, 1) for e in (1, 2, 3, 4)]
    assert capsys.readouterr().out.count("| 1 image(s) replaced") == 4  # each epoch's summary line
    # inside an epoch, after its broken image: the checkpoint holds the count, and a resume goes on from it
    states = {p: json.loads((p / "trainer_state.json").read_text()) for p in (run_dir / "checkpoints").iterdir()}
    mid = [p for p, s in states.items() if not s["epoch_complete"] and s["bad_images"] == [1]]
    assert mid, "the broken image should fall in the first batch of some epoch"
    source = max(mid, key=lambda p: states[p]["step"])
    for later in [p for p, s in states.items() if s["step"] > states[source]["step"]]:
        shutil.rmtree(later)
    AcceleratorState._reset_state(reset_partial_state=True)
    train(load_recipe(path), resume=True)
    assert [(r["epoch"], r["bad_images_epoch"]) for r in records(run_dir, "epoch")] == [(e, 1) for e in (1, 2, 3, 4)]


def test_train_py_runs_as_a_script_with_overrides(tmp_path, shapes_dir):
    recipe = tiny_recipe(shapes_dir, tmp_path / "cli_run", train={"epochs": 1})
    path = write_recipe(tmp_path / "cli.yaml", recipe)
    proc = subprocess.run([PYTHON, "hftrain/train.py", str(path), "train.batch_size=8", "log.interval=1"], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    for field in ("output dir", "device", "batch per device", "workers", "image size", "grad accumulation",
                  "effective batch", "clipping", "precision"):
        assert field in out, field
    assert "t_load" in out and "mAP@[.5:.95]" in out
    saved = yaml.safe_load((tmp_path / "cli_run" / "recipe.yaml").read_text())
    assert saved["train"]["batch_size"] == 8


@pytest.mark.parametrize("fmt", ["coco", "voc", "bdd100k", "fred"])
def test_training_runs_from_each_formats_converted_output(tmp_path, fmt):
    from hftrain.data.convert import convert_main
    from tests.data.test_convert import _sources

    out = tmp_path / "converted"
    assert convert_main([fmt, *_sources(tmp_path)[fmt], "--out", str(out)]) == 0
    recipe = tiny_recipe(tmp_path, tmp_path / "run", model="deformable_detr", train={"epochs": 1, "max_steps": 2,
                                                                                    "batch_size": 2})
    recipe["data"].update({"format": "hf", "train": {"images": str(out)}, "val": {"images": str(out)},
                           "min_size": 64, "max_size": 96})
    metrics = train(load_recipe(write_recipe(tmp_path / "r.yaml", recipe)))
    images = json.loads((out / "report.json").read_text())["images"]
    assert len(records(tmp_path / "run", "step")) == min(2, -(-images // 2))  # BDD's sample has 1 image
    assert "map" in metrics


def test_an_earlier_run_is_neither_mixed_in_nor_deleted_unasked(tmp_path, shapes_dir):
    from hftrain.engine.checkpoints import RunDirInUse

    _, run_dir = run(tmp_path, shapes_dir, train={"epochs": 1})
    with pytest.raises(RunDirInUse, match="--resume to continue it, --overwrite"):
        run(tmp_path, shapes_dir, train={"epochs": 1})
    assert len(records(run_dir, "step")) == 6  # untouched
    path = tmp_path / "run.yaml"
    AcceleratorState._reset_state(reset_partial_state=True)
    assert train_main([str(path), "--overwrite", "train.epochs=1"]) == 0  # the command line, in this process
    assert len(records(run_dir, "step")) == 6 and len(records(run_dir, "config")) == 1  # afresh, not appended
