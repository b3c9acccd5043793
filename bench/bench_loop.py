"""Benchmark: overhead of our training loop against a minimal hand-written loop.

Run: ``.venv/bin/python bench/bench_loop.py [--steps 40] [--image-size 128] [--batch-size 4] [--json PATH]``

The same tiny Deformable DETR (built with the same seed) on the same generated shapes images
(no flip), on the CPU, one thread:

- ours: ``hftrain.train.train(recipe)``, the whole loop as a run uses it: our DataLoader (one
  worker, prefetching), Accelerate ``accumulate``, gradient clipping, the scheduler, the
  non-finite guard and loss statistics, a metrics.jsonl record per step, the progress bar and
  the log window every 10 steps. Its per-step time is read from the metrics.jsonl ``step``
  records (wall clock between consecutive optimizer steps, so loading is included); model
  building, evaluation and checkpoints fall outside it;
- minimal: ``for batch in batches: forward, backward, optimizer.step, zero_grad`` over the same
  images' batches made beforehand (normalisation included, as the model needs it).

The first ``--warmup`` steps of each side are not counted. The minimal loop runs before and
after ours and the faster of its two runs is kept (the machine may be shared).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from report import emit, row  # noqa: E402

TINY_DEFORMABLE_DETR = {
    "d_model": 32, "encoder_layers": 1, "decoder_layers": 2, "encoder_ffn_dim": 64, "decoder_ffn_dim": 64,
    "encoder_attention_heads": 2, "decoder_attention_heads": 2, "num_queries": 20, "num_feature_levels": 2,
    "encoder_n_points": 2, "decoder_n_points": 2, "use_pretrained_backbone": False,
    "backbone_config": {"embedding_size": 16, "hidden_sizes": [16, 32, 64, 128], "depths": [1, 1, 1, 1],
                        "layer_type": "basic", "out_features": ["stage3", "stage4"]},
}


def make_recipe(tmp: Path, steps: int, image_size: int, batch_size: int):
    from hftrain.data.shapes import generate_shapes_coco
    from hftrain.recipe import load_recipe

    generate_shapes_coco(tmp, "train", steps * batch_size, image_size=image_size, seed=0)
    generate_shapes_coco(tmp, "val", 4, image_size=image_size, seed=1)
    raw = {
        "output_dir": str(tmp / "run"),
        "model": {"name": "deformable_detr", "config": TINY_DEFORMABLE_DETR},
        "data": {"train": {"images": str(tmp / "train"), "labels": str(tmp / "train.json")},
                 "val": {"images": str(tmp / "val"), "labels": str(tmp / "val.json")},
                 "min_size": image_size, "max_size": image_size, "num_workers": 1, "hflip": 0.0},
        "optim": {"lr": 1e-4},
        "train": {"epochs": 1, "batch_size": batch_size, "clip_max_norm": 0.1},
        "log": {"interval": 10, "tensorboard": False},
        "plots": {"enabled": False},
    }
    (tmp / "recipe.yaml").write_text(yaml.safe_dump(raw))
    return load_recipe(tmp / "recipe.yaml")


def minimal_loop(recipe, warmup: int) -> list[float]:
    """Seconds per step of the hand-written loop (after ``warmup`` steps)."""
    from dataclasses import replace

    from accelerate.utils import set_seed

    from hftrain.data.loader import load_data, make_loader
    from hftrain.models.registry import build_model
    from hftrain.train import Normalize

    data = load_data(recipe.data)
    set_seed(recipe.train.seed)
    detector = build_model(recipe.model, data.class_names, fp32_criterion=recipe.precision.fp32_criterion)
    batches = list(make_loader(data.train, recipe.train.batch_size, replace(recipe.data, num_workers=0),
                               shuffle=False, normalize_by_canvas=False, seed=0))
    normalize = Normalize(detector.image_mean, detector.image_std, "cpu")
    model = detector.model
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.optim.lr, weight_decay=recipe.optim.weight_decay)
    model.train()
    ticks = [time.perf_counter()]
    for batch in batches:
        outputs = model(pixel_values=normalize(batch["pixel_values"]), pixel_mask=batch["pixel_mask"],
                        labels=batch["labels"])
        outputs.loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        ticks.append(time.perf_counter())
    steps = [b - a for a, b in zip(ticks, ticks[1:])]
    return steps[warmup:]


def our_loop(recipe, warmup: int) -> tuple[list[float], dict]:
    """Seconds per step of ``train(recipe)``, from its metrics.jsonl step records."""
    from accelerate.state import AcceleratorState

    from hftrain.train import train

    AcceleratorState._reset_state(reset_partial_state=True)
    train(recipe)
    records = [json.loads(line) for line in (Path(recipe.output_dir) / "metrics.jsonl").read_text().splitlines()]
    times = [r["time"] for r in records if r["type"] == "step"]
    steps = [b - a for a, b in zip(times, times[1:])]  # the first step's record is the reference point
    windows = [r for r in records if r["type"] == "train"][1:]  # log windows after the first (warm-up)
    split = {"t_load": sum(w["t_load"] for w in windows) / max(len(windows), 1),
             "t_step": sum(w["t_step"] for w in windows) / max(len(windows), 1)}
    return steps[max(warmup - 1, 0):], split


def run(steps: int, image_size: int, batch_size: int, warmup: int) -> tuple[list[dict], list[str]]:
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        recipe = make_recipe(Path(tmp), steps, image_size, batch_size)
        minimal_a = minimal_loop(recipe, warmup)
        ours, split = our_loop(recipe, warmup)
        minimal_b = minimal_loop(recipe, warmup)
    minimal = min(sum(minimal_a) / len(minimal_a), sum(minimal_b) / len(minimal_b)) * 1000
    ours_ms = sum(ours) / len(ours) * 1000
    overhead = ours_ms / minimal - 1
    rows = [row("2 loop overhead", f"full loop (train(): DataLoader 1 worker, accumulate, clipping, logging, metrics) "
                f"vs minimal loop on pre-made batches: ms per step, tiny Deformable DETR, {image_size}px, "
                f"batch {batch_size}, {len(ours)} steps timed", ours_ms, minimal, "ms/step", higher_is_better=False,
                target="< 5% overhead", met=overhead < 0.05, note=f"overhead {100 * overhead:+.1f}%",
                extra={"minimal_runs_ms": [sum(m) / len(m) * 1000 for m in (minimal_a, minimal_b)],
                       "ours_median_ms": sorted(ours)[len(ours) // 2] * 1000}),
            row("2 loop overhead", "bookkeeping only: ours without the wait for data (t_step of the log windows after "
                "the first) vs minimal loop", split["t_step"] * 1000, minimal, "ms/step", higher_is_better=False,
                target="< 5% overhead", met=split["t_step"] * 1000 / minimal - 1 < 0.05,
                note=f"overhead {100 * (split['t_step'] * 1000 / minimal - 1):+.1f}%; wait for data t_load "
                     f"{split['t_load'] * 1000:.1f} ms/step")]
    notes = [f"loop: minimal {', '.join(f'{sum(m) / len(m) * 1000:.1f}' for m in (minimal_a, minimal_b))} ms/step "
             f"(before, after); ours {ours_ms:.1f} ms/step (median {sorted(ours)[len(ours) // 2] * 1000:.1f})"]
    return rows, notes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--json", help="write the rows here (for bench/run_all.py)")
    args = parser.parse_args()
    rows, notes = run(args.steps, args.image_size, args.batch_size, args.warmup)
    emit(rows, args.json, notes)


if __name__ == "__main__":
    main()
