"""Run reports: train.log, results.csv, plots/, the prediction grid, and `hftrain report` over runs."""

from __future__ import annotations

import contextlib
import csv
import importlib.util
import io
import json
import re
import sys

import numpy as np
import pytest
import torch
from accelerate.state import AcceleratorState
from PIL import Image
from safetensors.torch import load_file

from conftest import tiny_recipe, write_recipe
from hftrain.report import draw
from hftrain.report import plots
from hftrain.report import train_batch
from hftrain.cli import main as cli_main
from hftrain.engine import loop
from hftrain.report.history import read_history
from hftrain.recipe import load_recipe
from hftrain.tools.report import duration
from hftrain.train import train

PICTURES = ["label_stats.png", "loss.png", "lr.png", "grad_norm.png", "timing.png", "metrics.png",
            "ap_per_class.png", "ap_per_class_epochs.png", "pr_curves.png", "predictions.png",
            "confusion_matrix.png", "confusion_matrix_normalized.png", "f1_curve.png", "p_curve.png", "r_curve.png",
            "train_batch.png"]


def train_quietly(tmp, shapes_dir, name, overrides=(), **sections):
    """Train a tiny run with plots on; returns the run directory and what the console showed."""
    AcceleratorState._reset_state(reset_partial_state=True)
    recipe = tiny_recipe(shapes_dir, tmp / name, **sections)
    recipe["plots"] = {"enabled": True}
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        train(load_recipe(write_recipe(tmp / f"{name}.yaml", recipe), list(overrides)))
    return tmp / name, out.getvalue()


def eval_records(run_dir):
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["type"] == "eval"]


@pytest.fixture(scope="module")
def pictured(tmp_path_factory, shapes_dir):
    """A tiny RT-DETR run with two evaluations, every picture, TensorBoard and MLflow (a file store in the run)."""
    trackers = ["mlflow"] if importlib.util.find_spec("mlflow") else []
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        return train_quietly(tmp_path_factory.mktemp("pictured"), shapes_dir, "run_a", train={"epochs": 2},
                             log={"tensorboard": True, "trackers": trackers})


@pytest.fixture(scope="module")
def without_matplotlib(tmp_path_factory, shapes_dir):
    """A second run (another learning rate) trained while matplotlib cannot be imported."""
    saved = {k: m for k, m in sys.modules.items() if k == "matplotlib" or k.startswith("matplotlib.")}
    for key in saved:
        del sys.modules[key]
    sys.modules["matplotlib"] = None  # `import matplotlib` now raises ImportError
    try:
        return train_quietly(tmp_path_factory.mktemp("nompl"), shapes_dir, "run_b", overrides=["optim.lr=5e-4"],
                             train={"epochs": 1})
    finally:
        del sys.modules["matplotlib"]
        sys.modules.update(saved)


def test_train_log_is_the_console_in_plain_text(pictured):
    run_dir, console = pictured
    log = (run_dir / "train.log").read_text()
    assert "\x1b" not in log
    progress = [line for line in log.splitlines() if line.startswith(("epoch 1 6/6 ", "epoch 2 6/6 "))]
    assert len(progress) == 2 and all("loss" in line and "it/s" in line for line in progress)
    rest = [line.rstrip() for line in log.splitlines() if line not in progress]
    shown = [line.rstrip() for line in console.splitlines() if not re.match(r"epoch \d+ ━", line)]  # not the bars
    assert rest == shown
    assert "hftrain: training" in log and "epoch 2 validation" in log and "mAP@[.5:.95]" in log
    assert sum(line.startswith("epoch ") and " step " in line for line in rest) == 12


def test_every_picture_is_written_and_not_blank(pictured):
    run_dir, _ = pictured
    for name in PICTURES:
        with Image.open(run_dir / "plots" / name) as image:
            assert image.format == "PNG" and min(image.size) >= 200, name
            colours = image.convert("RGB").getcolors(maxcolors=1 << 20)
            assert len(colours) > 20, f"{name} is (nearly) blank"


def test_the_model_card_shows_the_final_plots(pictured):
    """model/ is saved after the queued pictures are drawn: its plots/ are the run's final ones."""
    run_dir, _ = pictured
    card = (run_dir / "model" / "README.md").read_text()
    for name in ("pr_curves.png", "ap_per_class.png", "metrics.png", "loss.png", "predictions.png"):
        assert (run_dir / "model" / "plots" / name).read_bytes() == (run_dir / "plots" / name).read_bytes(), name
        assert f"![{name[:-4]}](plots/{name})" in card
    assert not (run_dir / "model" / "plots" / "timing.png").exists()  # only the card's plots are copied


def test_the_confusion_matrix_and_the_recommended_threshold_are_saved(pictured, shapes_dir):
    run_dir, _ = pictured
    saved = json.loads((run_dir / "plots" / "confusion_matrix.json").read_text())
    last = eval_records(run_dir)[-1]
    assert saved["epoch"] == last["epoch"] == 2 and saved["iou"] == 0.5
    assert saved["class_names"] == ["rectangle", "ellipse", "triangle", "background"]
    counts = np.array(saved["counts"])
    boxes = [sum(a["category_id"] == c["id"] for a in json.loads((shapes_dir / "val.json").read_text())["annotations"])
             for c in json.loads((shapes_dir / "val.json").read_text())["categories"]]
    assert counts.shape == (4, 4) and counts[:, :3].sum(axis=0).tolist() == boxes  # every box once per column
    # the matrix is at the recommended threshold; this 2-epoch model may find nothing at IoU 0.5 (test_training's
    # 20-epoch run checks a threshold that is recommended): then none is saved and the log says so
    model_config = json.loads((run_dir / "model" / "config.json").read_text())
    log = (run_dir / "train.log").read_text()
    if last["f1_threshold"] == -1.0:
        assert last["f1_50"] == 0.0 and saved["recommended_threshold"] is None and saved["threshold"] == 0.5
        assert "hftrain_score_threshold" not in model_config
        assert "epoch 2 F1@0.5 is 0 at every confidence: no recommended score threshold" in log
    else:
        assert saved["threshold"] == saved["recommended_threshold"] == last["f1_threshold"] > 0
        assert model_config["hftrain_score_threshold"] == last["f1_threshold"]
        assert f"epoch 2 recommended score threshold {last['f1_threshold']:.3f}" in log


def test_prediction_grid_draws_the_ground_truth_where_the_labels_say(pictured, shapes_dir):
    run_dir, _ = pictured
    grid = np.asarray(Image.open(run_dir / "plots" / "predictions.png").convert("RGB")).astype(int)
    coco = json.loads((shapes_dir / "val.json").read_text())
    names = {c["id"]: c["name"] for c in coco["categories"]}
    class_names = [names[k] for k in sorted(names)]  # labels are the category ids in order
    width = draw.line_width()
    checked = 0
    for index, entry in enumerate(coco["images"][:8]):
        x0, y0 = draw.panel_origin(index, 0, columns=2)
        scale = draw.panel_scale((entry["width"], entry["height"]))
        for ann in (a for a in coco["annotations"] if a["image_id"] == entry["id"]):
            x, y, w, h = ann["bbox"]
            left, top, right, bottom = draw.box_outline([x, y, x + w, y + h], scale)
            colour = np.array(draw.class_colour(class_names.index(names[ann["category_id"]])))
            edge = [(x0 + left, y0 + v) for v in range(top, bottom + 1)] + \
                   [(x0 + u, y0 + bottom) for u in range(left, right + 1)]  # left and bottom sides
            inside = [(px + width + 2, py - width - 2) for px, py in edge[: bottom - top - width - 3]]
            on = np.mean([(grid[py, px] == colour).all() for px, py in edge])
            off = np.mean([(grid[py, px] == colour).all() for px, py in inside]) if inside else 0.0
            assert on >= 0.8, (entry["id"], ann["bbox"], on)
            assert off < 0.5, (entry["id"], ann["bbox"], off)
            checked += 1
    assert checked >= 8


def test_train_batch_shows_the_batches_training_used_and_changes_nothing(pictured, tmp_path, shapes_dir, monkeypatch):
    """The same run without the picture trains on the same batches to the same weights (the picture's own
    loader takes nothing from the run's order or random streams), and the picture is exactly the first four
    batches (16 images) that run's training steps received."""
    run_dir, _ = pictured
    received = []
    step = loop.train_step

    def recording(run, batch, trainable):
        if run.state.epoch == 1 and len(received) < 4:
            received.append({k: v.clone() if hasattr(v, "clone") else v for k, v in batch.items()})
        return step(run, batch, trainable)

    monkeypatch.setattr(loop, "train_step", recording)
    other, _ = train_quietly(tmp_path, shapes_dir, "run_d", overrides=["plots.enabled=false"], train={"epochs": 2},
                             eval={"during_training": False})  # the other pictures and the first evaluation: time only
    assert not (other / "plots" / train_batch.FILE).exists()
    losses = [(r["step"], r["loss"]) for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())
              if r["type"] == "step"]
    assert losses == [(r["step"], r["loss"]) for r in map(json.loads, (other / "metrics.jsonl").read_text().splitlines())
                      if r["type"] == "step"]
    ours, theirs = load_file(run_dir / "model" / "model.safetensors"), load_file(other / "model" / "model.safetensors")
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    class_names = [c["name"] for c in sorted(json.loads((shapes_dir / "train.json").read_text())["categories"],
                                             key=lambda c: c["id"])]
    expected = train_batch.batch_grid(received, class_names, uses_pixel_mask=False, epoch=1)  # RT-DETR: by the canvas
    with Image.open(run_dir / "plots" / train_batch.FILE) as drawn:
        assert np.array_equal(np.asarray(drawn.convert("RGB")), np.asarray(expected))


def test_check_sampler_pictures_draw_what_training_drew(pictured, tmp_path, capsys):
    run_dir, _ = pictured
    out = tmp_path / "check.png"
    assert cli_main(["check-sampler", str(run_dir / "recipe.yaml"), "--batches", "4", "--pictures", str(out)]) == 0
    assert f"pictures: {out} (16 images of the first 4 batch(es) of epoch 1" in capsys.readouterr().out
    with Image.open(out) as checked, Image.open(run_dir / "plots" / train_batch.FILE) as drawn:
        assert np.array_equal(np.asarray(checked.convert("RGB")), np.asarray(drawn.convert("RGB")))


def test_results_csv_matches_metrics_jsonl(pictured):
    run_dir, _ = pictured
    with open(run_dir / "results.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    records = eval_records(run_dir)
    assert len(rows) == len(records) == 2
    for row, record in zip(rows, records):
        assert set(row) == set(record) - {"type"}
        for key, value in record.items():
            if key != "type":
                assert float(row[key]) == pytest.approx(value, rel=1e-12, abs=0), key


def test_tensorboard_gets_the_scalars_and_the_prediction_grid(pictured):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir, _ = pictured
    accumulator = EventAccumulator(str(run_dir / "tensorboard" / "hftrain"), size_guidance={"images": 0, "scalars": 0})
    accumulator.Reload()
    images = accumulator.Images("val/predictions")
    eval_steps = [r["step"] for r in eval_records(run_dir)]
    assert [i.step for i in images] == eval_steps
    with Image.open(io.BytesIO(images[-1].encoded_image_string)) as logged:
        assert logged.size == Image.open(run_dir / "plots" / "predictions.png").size
    for tag in ("eval/map", "train/loss", "train/t_load_share", "step/grad_norm", "step/lr"):
        assert tag in accumulator.Tags()["scalars"], tag
    # the plots: each redrawn one after every evaluation, the label statistics (drawn once) once
    assert [i.step for i in accumulator.Images("plots/metrics")] == eval_steps
    assert [i.step for i in accumulator.Images("plots/label_stats")] == eval_steps[:1]
    with Image.open(io.BytesIO(accumulator.Images("plots/loss")[-1].encoded_image_string)) as logged:
        assert logged.size == Image.open(run_dir / "plots" / "loss.png").size


def test_mlflow_gets_the_plots_as_artifacts(pictured):
    pytest.importorskip("mlflow")
    from mlflow import MlflowClient

    run_dir, _ = pictured
    client = MlflowClient((run_dir / "mlruns").resolve().as_uri())
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments() if e.name == "hftrain"])
    artifacts = {a.path: a.file_size for a in client.list_artifacts(run.info.run_id, "plots")}
    drawn = {f"plots/{p.name}": p.stat().st_size for p in (run_dir / "plots").glob("*.png")}
    assert {"plots/loss.png", "plots/metrics.png", "plots/predictions.png", "plots/label_stats.png"} <= set(drawn)
    assert artifacts == drawn  # the last evaluation's pictures, as drawn


def test_without_matplotlib_training_says_so_once_and_writes_the_rest(without_matplotlib):
    run_dir, console = without_matplotlib
    log = (run_dir / "train.log").read_text()
    assert log.count("plots are off") == 1 and "pip install 'hftrain[plots]'" in log
    assert console.count("plots are off") == 1
    assert (run_dir / "results.csv").is_file() and (run_dir / "plots" / "predictions.png").is_file()
    assert (run_dir / "plots" / plots.PR_FILE).is_file()  # numbers kept for `hftrain report`
    assert (run_dir / "plots" / "confusion_matrix.json").is_file()  # the counts too, without their pictures
    assert not (run_dir / "plots" / "confusion_matrix.png").exists()
    assert not (run_dir / "plots" / "loss.png").exists()


def colour_pixels(path, hex_colour: str, tolerance: int = 12) -> int:
    target = np.array([int(hex_colour[i:i + 2], 16) for i in (1, 3, 5)])
    pixels = np.asarray(Image.open(path).convert("RGB")).astype(int)
    return int((np.abs(pixels - target).max(axis=-1) <= tolerance).sum())


def test_report_overlays_two_runs(pictured, without_matplotlib, tmp_path):
    run_a, run_b = pictured[0], without_matplotlib[0]
    out = tmp_path / "compare"
    with contextlib.redirect_stdout(io.StringIO()):
        assert cli_main(["report", str(run_a), str(run_b), "--out", str(out)]) == 0
    first, second = plots.run_colour(0), plots.run_colour(1)
    for name in ("lr.png", "loss.png", "grad_norm.png"):  # curves that differ between the runs: both visible
        assert colour_pixels(out / "plots" / name, first) > 200, name
        assert colour_pixels(out / "plots" / name, second) > 200, name
    assert colour_pixels(run_a / "plots" / "lr.png", second) < 5  # a single run's plot has no second colour
    for name in ("metrics.png", "ap_per_class.png", "pr_curves.png"):
        assert (out / "plots" / name).is_file(), name
    report = (out / "report.md").read_text()
    assert "| run_a |" in report and "| run_b |" in report
    assert "`optim.lr` | `0.001` | `0.0005` |" in report  # the setting that differs
    assert "`train.epochs` | `2` | `1` |" in report
    assert "train.batch_size" not in report  # the same in both runs
    best_a = max(eval_records(run_a), key=lambda r: r["map_50"])
    assert f"| map_50 | {best_a['map_50']:.4f} (epoch " in report
    assert "![lr](plots/lr.png)" in report
    assert f"| {duration(read_history(run_a).wall_time)} |" in report


def test_report_names_a_directory_without_records(tmp_path, capsys):
    assert cli_main(["report", str(tmp_path)]) == 2
    assert f"{tmp_path}: no metrics.jsonl" in capsys.readouterr().err


def test_a_failing_plot_is_logged_and_training_goes_on(tmp_path, shapes_dir, monkeypatch):
    def broken(*args):
        raise RuntimeError("no room on the canvas")

    monkeypatch.setattr(plots, "plot_training", broken)
    monkeypatch.setattr(plots, "plot_evaluation", broken)
    run_dir, _ = train_quietly(tmp_path, shapes_dir, "run_c", overrides=["data.train.subset=4"], train={"epochs": 1})
    log = (run_dir / "train.log").read_text()
    for what in ("training plots", "evaluation plots"):
        assert f"plots: {what} failed (RuntimeError: no room on the canvas) at {__file__}:" in log
    assert (run_dir / "model" / "config.json").is_file()  # the run finished
    assert (run_dir / "results.csv").is_file() and (run_dir / "plots" / "predictions.png").is_file()
    assert not (run_dir / "plots" / "loss.png").exists()


def test_label_statistics_count_the_training_boxes_of_the_rows_in_use(shapes_dir):
    from hftrain.data.sources import load_split

    rows = load_split("coco", str(shapes_dir / "train"), str(shapes_dir / "train.json")).dataset
    chosen = [1, 4, 5, 9]
    stats = plots.label_statistics(rows.select(chosen), ["rectangle", "ellipse", "triangle"])
    coco = json.loads((shapes_dir / "train.json").read_text())
    ids = [coco["images"][i]["id"] for i in chosen]
    boxes = [a for a in coco["annotations"] if a["image_id"] in ids]
    assert stats["per_image"].tolist() == [sum(a["image_id"] == i for a in boxes) for i in ids]
    assert stats["per_class"].tolist() == [sum(a["category_id"] == c for a in boxes) for c in (1, 2, 3)]
    assert sorted(stats["widths"].tolist()) == sorted(float(a["bbox"][2]) for a in boxes)


def test_history_keeps_the_records_a_resume_repeated_last(tmp_path):
    records = [
        {"type": "config", "step": 0, "time": 0.0},
        *({"type": "step", "step": s, "time": float(s), "lr": 1.0} for s in (1, 2, 3, 4)),
        {"type": "eval", "step": 2, "time": 2.5, "epoch": 1, "map": 0.1},
        {"type": "eval", "step": 4, "time": 4.5, "epoch": 2, "map": 0.2},
        {"type": "config", "step": 2, "time": 0.0},  # resumed from the epoch-1 checkpoint
        *({"type": "step", "step": s, "time": float(s - 2), "lr": 2.0} for s in (3, 4)),
        {"type": "eval", "step": 4, "time": 2.5, "epoch": 2, "map": 0.3},
    ]
    text = "".join(json.dumps(r) + "\n" for r in records)
    (tmp_path / "metrics.jsonl").write_text(text + '{"type": "st')  # a run writing right now
    history = read_history(tmp_path)
    assert [(r["step"], r["lr"]) for r in history.step] == [(1, 1.0), (2, 1.0), (3, 2.0), (4, 2.0)]
    assert [(r["epoch"], r["map"]) for r in history.eval] == [(1, 0.1), (2, 0.3)]
    assert history.wall_time == pytest.approx(4.5 + 2.5)
    (tmp_path / "metrics.jsonl").write_text(text.replace('"lr": 2.0}', "oops", 1) + text)
    with pytest.raises(ValueError, match=r"metrics.jsonl:9: not a JSON record"):
        read_history(tmp_path)


def test_grid_draws_predictions_above_the_threshold_in_class_colours():
    image = Image.new("RGB", (200, 100), (90, 90, 90))
    sample = draw.Sample(image=image, image_id=7, gt_boxes=[[10, 10, 60, 50]], gt_labels=[1], gt_ignored=[False],
                         pred_boxes=[[20, 20, 80, 70], [100, 40, 180, 90], [120, 5, 150, 30]],
                         pred_labels=[0, 2, 1], pred_scores=[0.9, 0.6, 0.1])
    grid = np.asarray(draw.prediction_grid([sample], ["a", "b", "c"], score_threshold=0.5, cell=128)).astype(int)
    x0, y0 = draw.panel_origin(0, 1, columns=1, cell=128)
    scale = draw.panel_scale(image.size, cell=128)
    for box, label, drawn in zip(sample.pred_boxes, sample.pred_labels, (True, True, False)):
        left, top, right, bottom = draw.box_outline(box, scale)
        colour = np.array(draw.class_colour(label))
        side = [grid[y0 + v, x0 + left] for v in range(top, bottom + 1)]
        hits = np.mean([(p == colour).all() for p in side])
        assert hits >= 0.8 if drawn else hits == 0.0, (box, hits)
    assert len({draw.class_colour(k) for k in range(40)}) == 40
