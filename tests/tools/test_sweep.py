"""``hftrain sweep``: a tiny grid end to end, skipping finished cells, failed cells, several processes."""

from __future__ import annotations

import csv
import json

import pytest
import torch
import yaml

from conftest import write_recipe
from hftrain.cli import main as cli_main
from hftrain.tools.sweep import SweepError, load_sweep
from helpers.retinanet import retinanet_recipe


@pytest.fixture(autouse=True)
def one_thread_per_cell(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # each cell is its own process; keep them off each other's core


def write_sweep(tmp_path, shapes_dir, **fields) -> tuple:
    recipe = retinanet_recipe(shapes_dir, tmp_path / "unused", "bn")
    recipe["train"]["epochs"] = 1
    recipe["eval"] = {"batch_size": 4}
    write_recipe(tmp_path / "base.yaml", recipe)
    sweep = {"recipe": "base.yaml", "output_root": str(tmp_path / "out"), **fields}
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(sweep, sort_keys=False))
    return path, tmp_path / "out" / "RetinaNet"


def test_tiny_sweep_end_to_end_then_skips_finished_cells(tmp_path, shapes_dir, capsys):
    path, root = write_sweep(
        tmp_path, shapes_dir,
        grid={"batch_sizes": [4, 8], "norms": ["bn", "gn"]},
        overrides={"log.interval": 1},
        cell_overrides={"bn/batch_8": {"train.epochs": 0}},  # an invalid value for one cell only
    )
    assert cli_main(["sweep", str(path)]) == 1  # 1: not every cell is done
    out = capsys.readouterr().out
    assert "bn/batch_8: training" in out and "gn/batch_8: training" in out  # it went on after the failure

    done = {}
    for norm, batch in (("bn", 4), ("gn", 4), ("gn", 8)):
        result = json.loads((root / norm / f"results_batch_{batch}.json").read_text())
        assert result["status"] == "done", result.get("error_tail")
        assert result["norm"] == norm and result["batch_size"] == batch and result["per_device_batch"] == batch
        for key in ("voc07_map", "voc_map", "coco_map"):
            assert 0.0 <= result[key] <= 1.0
        assert result["images_per_s"] > 0 and result["inference_images"] == 8  # the whole validation set
        assert result["train_time_s"] > 0
        records = [json.loads(x) for x in (root / norm / f"batch_{batch}" / "metrics.jsonl").read_text().splitlines()]
        losses = [r["loss"] for r in records if r["type"] == "step"]  # one per optimizer step
        assert result["loss_records"] == len(losses) == 24 // batch
        assert result["loss_var"] == pytest.approx(torch.tensor(losses, dtype=torch.float64).var(unbiased=False).item())
        saved = yaml.safe_load((root / norm / f"batch_{batch}" / "recipe.yaml").read_text())
        assert saved["model"]["norm"] == norm and saved["train"]["batch_size"] == batch and saved["eval"]["voc"]
        txt = (root / norm / f"results_batch_{batch}.txt").read_text()
        assert "status: done" in txt and f"VOC07 mAP@0.5 (11-point): {result['voc07_map']:.4f}" in txt
        done[(norm, batch)] = result

    failed = json.loads((root / "bn" / "results_batch_8.json").read_text())
    assert failed["status"] == "failed" and "train.epochs: must be at least 1" in failed["error"]
    assert "status: failed" in (root / "bn" / "results_batch_8.txt").read_text()

    rows = list(csv.DictReader((root / "summary.csv").open()))
    assert [(r["norm"], r["batch_size"], r["status"]) for r in rows] == [
        ("bn", "4", "done"), ("bn", "8", "failed"), ("gn", "4", "done"), ("gn", "8", "done")]
    for row in rows:
        if row["status"] == "done":
            assert float(row["voc07_map"]) == done[(row["norm"], int(row["batch_size"]))]["voc07_map"]
    md = (root / "summary.md").read_text()
    assert md.count("| bn |") == 3 and md.count("| gn |") == 3  # two grid rows and one pivot row each
    assert "train.epochs: must be at least 1" in md

    # re-run: finished cells are skipped (files untouched), the failed one is tried again
    stamps = {key: (root / key[0] / f"results_batch_{key[1]}.json").stat().st_mtime_ns for key in done}
    assert cli_main(["sweep", str(path)]) == 1
    out = capsys.readouterr().out
    for norm, batch in done:
        assert f"{norm}/batch_{batch}: skipped" in out
        assert (root / norm / f"results_batch_{batch}.json").stat().st_mtime_ns == stamps[(norm, batch)]
    assert "bn/batch_8: training" in out


def test_two_processes_per_cell_and_syncbn(tmp_path, shapes_dir):
    """With two processes a batch of 4 is 2 per process. BatchNorm trains; SyncBatchNorm
    synchronises on CUDA, and on CPU PyTorch refuses it: the cell is recorded as failed."""
    path, root = write_sweep(tmp_path, shapes_dir, num_processes=2, grid={"batch_sizes": [4], "norms": ["bn", "syncbn"]})
    cli_main(["sweep", str(path)])
    bn = json.loads((root / "bn" / "results_batch_4.json").read_text())
    assert bn["status"] == "done", bn.get("error_tail")
    assert bn["num_processes"] == 2 and bn["per_device_batch"] == 2
    records = [json.loads(x) for x in (root / "bn" / "batch_4" / "metrics.jsonl").read_text().splitlines()]
    config = next(r for r in records if r["type"] == "config")
    assert config["num_processes"] == 2 and config["effective_batch"] == 4
    syncbn = json.loads((root / "syncbn" / "results_batch_4.json").read_text())
    if torch.cuda.is_available():
        assert syncbn["status"] == "done", syncbn.get("error_tail")
    else:
        assert syncbn["status"] == "failed"
        assert "SyncBatchNorm" in syncbn["error"] and "GPU" in syncbn["error"]  # PyTorch's own refusal
    assert "syncbn" in (root / "summary.md").read_text()


def test_sweep_file_problems_are_reported_together(tmp_path, shapes_dir):
    path, _ = write_sweep(tmp_path, shapes_dir, num_processes=2, grid={"batch_sizes": [4, 5], "norms": ["bn", "sbn"]},
                          cell_overrides={"bn/batch_6": {"train.epochs": 1}}, output_rot="x")
    with pytest.raises(SweepError) as err:
        load_sweep(path)
    message = str(err.value)
    for expected in ("unknown key 'output_rot' (did you mean 'output_root'?)", "5 is not divisible by num_processes=2",
                     "unknown norm 'sbn'", "'bn/batch_6' names no norm or cell"):
        assert expected in message
    assert cli_main(["sweep", str(path)]) == 2
    missing = tmp_path / "missing.yaml"
    missing.write_text(yaml.safe_dump({"recipe": "nope.yaml", "output_root": "x"}))
    with pytest.raises(SweepError, match="nope.yaml not found"):
        load_sweep(missing)
