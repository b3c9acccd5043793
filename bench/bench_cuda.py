"""Benchmark (CUDA only): Deformable DETR training speed, ours against a plain Accelerate loop.

Run: ``.venv/bin/python bench/bench_cuda.py [--steps 30] [--images 256] [--workers 4] [--json PATH]``

Deformable DETR (ResNet-50 backbone, random init, 300 queries) at 800x1333 (generated 1280x720
JPEGs resized to 1333x750), bf16, per-device batch 8, on one CUDA device:

- ours: ``hftrain.train.train`` with a recipe (uint8 pipeline, normalisation on the device,
  pinned memory, non-blocking copies, persistent workers); images/s from the wall clock between
  its metrics.jsonl ``step`` records (after 3 warm-up steps), the t_load share from its ``train``
  windows (after the first), peak memory from ``torch.cuda.max_memory_allocated``;
- baseline: a plain Accelerate loop in the style of the Hugging Face example
  (``run_object_detection_no_trainer.py``): the image processor inside the dataset (PIL backend,
  float normalisation and padding on the CPU), a stacking collate, the same workers,
  ``accelerator.backward``, ``optimizer.step``; images/s and t_load over the steps after 3 warm-up steps.

Each side runs in a fresh process (this script with ``--side``), so that nothing one leaves behind
(threads, caches, allocations, the peak-memory reading) touches the other.

Without a CUDA device it prints ``no CUDA device: skipped`` and exits 0.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from report import emit, row  # noqa: E402

R50 = {"backbone_config": {"layer_type": "bottleneck", "depths": [3, 4, 6, 3], "hidden_sizes": [256, 512, 1024, 2048],
                           "embedding_size": 64, "out_features": ["stage2", "stage3", "stage4"]},
       "use_pretrained_backbone": False}


def baseline_loop(folder: Path, labels: Path, class_names: list[str], steps: int, batch_size: int, workers: int) -> dict:
    from accelerate import Accelerator
    from torch.utils.data import DataLoader
    from transformers import DeformableDetrConfig, DeformableDetrForObjectDetection

    from bench_pipeline import HFExampleDataset, hf_collate

    accelerator = Accelerator(mixed_precision="bf16")
    # the label file's category ids run 1..len(class_names) and the processor passes them through as
    # class indices: the head needs index len(class_names) (index 0 stays unused)
    config = DeformableDetrConfig(use_timm_backbone=False, num_labels=len(class_names) + 1,
                                  backbone_config={"model_type": "resnet", **R50["backbone_config"]},
                                  use_pretrained_backbone=False)
    model = DeformableDetrForObjectDetection(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=1e-4)
    dataset = HFExampleDataset(folder, labels)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=workers, collate_fn=hf_collate,
                        persistent_workers=workers > 0, pin_memory=True)
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    model.train()
    torch.cuda.reset_peak_memory_stats()
    done, images, t_load, t_total, start = 0, 0, 0.0, 0.0, None
    while done < steps:
        tick = time.perf_counter()
        for batch in loader:
            loaded = time.perf_counter()
            labels_ = [{k: v for k, v in t.items() if k in ("class_labels", "boxes")} for t in batch["labels"]]
            outputs = model(pixel_values=batch["pixel_values"], pixel_mask=batch["pixel_mask"], labels=labels_)
            accelerator.backward(outputs.loss)
            optimizer.step()
            optimizer.zero_grad()
            outputs.loss.item()
            now = time.perf_counter()
            done += 1
            if done > 3:  # warm-up steps not counted
                t_load += loaded - tick
                t_total += now - tick
                images += len(batch["labels"])
            tick = now
            if done >= steps:
                break
    return {"images_per_s": images / t_total, "t_load_share": t_load / t_total,
            "peak_gb": torch.cuda.max_memory_allocated() / 2**30, "device": torch.cuda.get_device_name(0)}


def our_loop(folder: Path, labels: Path, tmp: Path, steps: int, batch_size: int, workers: int, images: int) -> dict:
    import yaml
    from accelerate.state import AcceleratorState

    from hftrain.recipe import load_recipe
    from hftrain.train import train

    epochs = max(1, -(-steps * batch_size // images))
    raw = {"output_dir": str(tmp / "run"),
           "model": {"name": "deformable_detr", "config": R50},
           "data": {"train": {"images": str(folder), "labels": str(labels)},
                    "val": {"images": str(folder), "labels": str(labels), "subset": 8},
                    "min_size": 800, "max_size": 1333, "num_workers": workers},
           "train": {"epochs": epochs, "batch_size": batch_size, "max_steps": steps},
           "precision": {"mode": "bf16"},
           "log": {"interval": 5, "tensorboard": False},
           "plots": {"enabled": False}}
    (tmp / "recipe.yaml").write_text(yaml.safe_dump(raw))
    AcceleratorState._reset_state(reset_partial_state=True)
    torch.cuda.reset_peak_memory_stats()
    train(load_recipe(tmp / "recipe.yaml"))
    peak = torch.cuda.max_memory_allocated() / 2**30
    records = [json.loads(x) for x in (tmp / "run" / "metrics.jsonl").read_text().splitlines()]
    windows = [r for r in records if r["type"] == "train"][1:]
    if not windows:
        raise SystemExit(f"--steps {steps}: ours logs every 5 steps and the first window is warm-up; use --steps >= 10")
    # each window holds per-step means (seconds) of the wait for data and of the rest of the step
    t_load = sum(w["t_load"] for w in windows) / len(windows)
    t_total = sum(w["t_load"] + w["t_step"] for w in windows) / len(windows)
    # images/s as the baseline measures it: wall clock between optimizer steps (the step records), after 3 warm-up steps
    times = [r["time"] for r in records if r["type"] == "step"][3:]
    per_step = (times[-1] - times[0]) / (len(times) - 1)
    return {"images_per_s": batch_size / per_step, "t_load_share": t_load / t_total, "peak_gb": peak,
            "device": torch.cuda.get_device_name(0)}


def run(steps: int, images: int, batch_size: int, workers: int) -> tuple[list[dict], list[str]]:
    from bench_pipeline import write_jpegs

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        write_jpegs(Path(tmp) / "images", images)
        for side in ("ours", "baseline"):  # each in a fresh process: no threads, caches or peak memory shared
            out = Path(tmp) / f"{side}.json"
            subprocess.run([sys.executable, __file__, "--side", side, "--data", tmp, "--steps", str(steps),
                            "--images", str(images), "--batch-size", str(batch_size), "--workers", str(workers),
                            "--json", str(out)], check=True)
            results[side] = json.loads(out.read_text())
    ours, base = results["ours"], results["baseline"]
    what = f"Deformable DETR R50, 800x1333, bf16, batch {batch_size}, {workers} workers, {ours['device']}"
    rows = [
        row("5 CUDA training", f"{what}: images/s", ours["images_per_s"], base["images_per_s"], "img/s",
            higher_is_better=True, target="higher than baseline", target_ratio=1.0),
        row("5 CUDA training", "t_load share of each step", ours["t_load_share"], base["t_load_share"], "",
            higher_is_better=False, target="ours < 5%", met=ours["t_load_share"] < 0.05),
        row("5 CUDA training", "peak GPU memory", ours["peak_gb"], base["peak_gb"], "GiB", higher_is_better=False),
    ]
    return rows, [f"cuda: ours {ours}, baseline {base}"]


def run_side(side: str, data: Path, steps: int, images: int, batch_size: int, workers: int) -> dict:
    """One side of the comparison (in its own process, started by :func:`run`)."""
    labels = data / "images" / "labels.json"
    if side == "ours":
        return our_loop(data / "images", labels, data, steps, batch_size, workers, images)
    return baseline_loop(data / "images", labels, [f"class{c}" for c in range(1, 11)], steps, batch_size, workers)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1))
    parser.add_argument("--json", help="write the rows here (for bench/run_all.py)")
    parser.add_argument("--side", choices=["ours", "baseline"], help=argparse.SUPPRESS)  # run() starts each side
    parser.add_argument("--data", help=argparse.SUPPRESS)  # the generated images, for --side
    args = parser.parse_args()
    if args.side:
        result = run_side(args.side, Path(args.data), args.steps, args.images, args.batch_size, args.workers)
        Path(args.json).write_text(json.dumps(result))
        return
    if not torch.cuda.is_available():
        print("no CUDA device: skipped")
        emit([], args.json, ["5 CUDA training: no CUDA device: skipped"])
        return
    rows, notes = run(args.steps, args.images, args.batch_size, args.workers)
    emit(rows, args.json, notes)


if __name__ == "__main__":
    main()
