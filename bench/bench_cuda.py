"""Benchmark: training speed per family, ours against a plain Accelerate loop (made for CUDA).

Run (on a CUDA machine): ``.venv/bin/python bench/bench_cuda.py [--steps 30] [--images 256]
[--workers 4] [--families deformable_detr,rt_detr] [--json PATH]``.
Smoke test anywhere: ``.venv/bin/python bench/bench_cuda.py --device cpu --tiny`` (tiny models of
both families on small generated images, a few steps: proves the script runs, measures nothing useful).

Families (random init, generated JPEGs with about 20 boxes each, 10 classes), bf16 on CUDA:

- ``deformable_detr``: Deformable DETR, ResNet-50, 300 queries, 800x1333 (1280x720 JPEGs -> 1333x750,
  shortest edge), per-device batch ``--batch-size`` (8);
- ``rt_detr``: RT-DETR with its default ResNet-50-vd backbone at 640x640 (square resize).

Each family is run on two sides, each in a fresh process (this script with ``--side``), so that
nothing one leaves behind (threads, caches, allocations, the peak-memory reading) touches the other:

- ours: ``hftrain.train.train`` with a recipe (uint8 pipeline, normalisation on the device, pinned
  memory, non-blocking copies, persistent workers, and the GPU switches at their defaults: TF32,
  fused AdamW, cuDNN benchmark for the square resize); images/s from the wall clock between its
  metrics.jsonl ``step`` records (after 3 warm-up steps), the t_load share from its ``train`` windows
  (after the first);
- baseline: a plain Accelerate loop in the style of the Hugging Face example
  (``run_object_detection_no_trainer.py``): the family's image processor inside the dataset (PIL
  backend, float normalisation and padding on the CPU), a stacking collate, the same workers, the
  same model (built by hftrain's registry from the same config), ``accelerator.backward``,
  ``optimizer.step``, ``loss.item()`` every step; images/s and t_load over the steps after 3 warm-up steps.

Measured on both sides: images/s, peak memory (``torch.cuda.max_memory_allocated``; on a CPU the
process's peak resident memory), the t_load share of a step, and host-device synchronisations per
optimizer step (``torch.cuda.set_sync_debug_mode("warn")`` counts every synchronising CUDA call
during the training steps, logging and checkpoint-free; CUDA only, "n/a" on a CPU).

Without a CUDA device and without ``--device cpu`` it prints ``no CUDA device: skipped`` and exits 0.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from report import emit, row  # noqa: E402

R50 = {"layer_type": "bottleneck", "depths": [3, 4, 6, 3], "hidden_sizes": [256, 512, 1024, 2048],
       "embedding_size": 64, "out_features": ["stage2", "stage3", "stage4"]}

FAMILIES = {
    # name: model config, image size written, resize (data.resize, min_size, max_size), description
    "deformable_detr": {"config": {"backbone_config": R50, "use_pretrained_backbone": False},
                        "image": (1280, 720), "resize": ("shortest_edge", 800, 1333),
                        "what": "Deformable DETR R50, 800x1333"},
    "rt_detr": {"config": {}, "image": (1280, 720), "resize": ("square", 640, 640),
                "what": "RT-DETR R50-vd, 640x640"},
}
TINY_IMAGE = (160, 90)
TINY_RESIZE = {"deformable_detr": ("shortest_edge", 64, 107), "rt_detr": ("square", 64, 64)}
CLASS_NAMES = ["unused"] + [f"class{c}" for c in range(1, 11)]  # label ids 1..10 are class indices as-is


class SyncCounter:
    """Counts synchronising CUDA calls while active (nothing on a CPU: ``count`` stays None)."""

    def __init__(self):
        self.on = torch.cuda.is_available()
        self.count = 0 if self.on else None
        self._catch = None

    def __enter__(self):
        if self.on:
            self._catch = warnings.catch_warnings(record=True)
            self._records = self._catch.__enter__()
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
        return self

    def __exit__(self, *exc):
        if self.on:
            torch.cuda.set_sync_debug_mode("default")
            self.count += sum("synchroniz" in str(r.message) for r in self._records)
            self._catch.__exit__(*exc)
        return False


def peak_memory_gb(device: str) -> float:
    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def device_name(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name(0)
    return f"CPU ({os.cpu_count()} cores)"


def model_config(family: str, tiny: bool) -> dict:
    if tiny:
        from hftrain.models.tiny import tiny_config

        return tiny_config(family)
    return FAMILIES[family]["config"]


def processor_for(family: str, resize: tuple[str, int, int]):
    """The family's transformers image processor (PIL backend), as the Hugging Face example uses it."""
    kind, low, high = resize
    if family == "rt_detr":
        from transformers.models.rt_detr.image_processing_pil_rt_detr import RTDetrImageProcessorPil

        return RTDetrImageProcessorPil(size={"height": low, "width": low})
    from transformers.models.deformable_detr.image_processing_pil_deformable_detr import DeformableDetrImageProcessorPil

    return DeformableDetrImageProcessorPil(size={"shortest_edge": low, "longest_edge": high})


def baseline_loop(family: str, folder: Path, labels: Path, steps: int, batch_size: int, workers: int,
                  device: str, tiny: bool, resize) -> dict:
    from accelerate import Accelerator
    from torch.utils.data import DataLoader

    from bench_pipeline import HFExampleDataset, hf_collate
    from hftrain.models.registry import build_model
    from hftrain.recipe.schema import ModelConfig

    accelerator = Accelerator(mixed_precision="bf16" if device == "cuda" else "no", cpu=device == "cpu")
    model = build_model(ModelConfig(name=family, config=model_config(family, tiny)), CLASS_NAMES).model
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=1e-4)
    dataset = HFExampleDataset(folder, labels, processor_for(family, resize))
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=workers, collate_fn=hf_collate,
                        persistent_workers=workers > 0, pin_memory=device == "cuda")
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    model.train()
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    done, images, t_load, t_total = 0, 0, 0.0, 0.0
    with SyncCounter() as syncs:  # every step, loading included, as for ours
        while done < steps:
            tick = time.perf_counter()
            for batch in loader:
                loaded = time.perf_counter()
                labels_ = [{k: v for k, v in t.items() if k in ("class_labels", "boxes")} for t in batch["labels"]]
                inputs = {k: batch[k] for k in ("pixel_values", "pixel_mask") if k in batch}
                outputs = model(**inputs, labels=labels_)
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
    return {"images_per_s": images / t_total, "t_load_share": t_load / t_total, "peak_gb": peak_memory_gb(device),
            "syncs_per_step": syncs.count / steps if syncs.count is not None else None, "device": device_name(device)}


def our_loop(family: str, folder: Path, labels: Path, tmp: Path, steps: int, batch_size: int, workers: int,
             images: int, device: str, tiny: bool, resize) -> dict:
    import yaml
    from accelerate.state import AcceleratorState

    import hftrain.train as train_module
    from hftrain.recipe import load_recipe

    kind, low, high = resize
    epochs = max(1, -(-steps * batch_size // images))
    interval = 2 if tiny else 5
    raw = {"output_dir": str(tmp / f"run-{family}"),
           "model": {"name": family, "config": model_config(family, tiny)},
           "data": {"train": {"images": str(folder), "labels": str(labels)},
                    "val": {"images": str(folder), "labels": str(labels), "subset": 8},
                    "resize": kind, "min_size": low, "max_size": high, "num_workers": workers},
           "train": {"epochs": epochs, "batch_size": batch_size, "max_steps": steps},
           "precision": {"mode": "bf16" if device == "cuda" else "no"},
           "log": {"interval": interval, "tensorboard": False},
           "plots": {"enabled": False}}
    recipe_path = tmp / f"recipe-{family}.yaml"
    recipe_path.write_text(yaml.safe_dump(raw))
    AcceleratorState._reset_state(reset_partial_state=True)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    syncs, counted = SyncCounter(), [0]
    real_epoch = train_module.train_one_epoch

    def counted_epoch(run, loader):  # syncs during the training steps (data, forward, backward, update, logging)
        before = run.state.step
        with syncs:
            outcome = real_epoch(run, loader)
        counted[0] += run.state.step - before
        return outcome

    train_module.train_one_epoch = counted_epoch
    try:
        train_module.train(load_recipe(recipe_path))
    finally:
        train_module.train_one_epoch = real_epoch
    records = [json.loads(x) for x in (tmp / f"run-{family}" / "metrics.jsonl").read_text().splitlines()]
    windows = [r for r in records if r["type"] == "train"][1:]
    if not windows:
        raise SystemExit(f"--steps {steps}: ours logs every {interval} steps and the first window is warm-up; "
                         f"use --steps >= {2 * interval}")
    # each window holds per-step means (seconds) of the wait for data and of the rest of the step
    t_load = sum(w["t_load"] for w in windows) / len(windows)
    t_total = sum(w["t_load"] + w["t_step"] for w in windows) / len(windows)
    # images/s as the baseline measures it: wall clock between optimizer steps (the step records), after 3 warm-up steps
    times = [r["time"] for r in records if r["type"] == "step"][3:]
    per_step = (times[-1] - times[0]) / (len(times) - 1)
    return {"images_per_s": batch_size / per_step, "t_load_share": t_load / t_total, "peak_gb": peak_memory_gb(device),
            "syncs_per_step": syncs.count / max(1, counted[0]) if syncs.count is not None else None,
            "device": device_name(device)}


def run(families: list[str], steps: int, images: int, batch_size: int, workers: int, device: str,
        tiny: bool) -> tuple[list[dict], list[str]]:
    from bench_pipeline import write_jpegs

    rows, notes = [], []
    with tempfile.TemporaryDirectory() as tmp:
        size = TINY_IMAGE if tiny else FAMILIES["deformable_detr"]["image"]
        write_jpegs(Path(tmp) / "images", images, width=size[0], height=size[1])
        for family in families:
            results = {}
            for side in ("ours", "baseline"):  # each in a fresh process: no threads, caches or peak memory shared
                out = Path(tmp) / f"{family}-{side}.json"
                env = {**os.environ, **({"ACCELERATE_USE_CPU": "1"} if device == "cpu" else {})}
                subprocess.run([sys.executable, __file__, "--side", side, "--family", family, "--data", tmp,
                                "--steps", str(steps), "--images", str(images), "--batch-size", str(batch_size),
                                "--workers", str(workers), "--device", device, *(["--tiny"] if tiny else []),
                                "--json", str(out)], check=True, env=env)
                results[side] = json.loads(out.read_text())
            ours, base = results["ours"], results["baseline"]
            what = (f"{FAMILIES[family]['what'] if not tiny else family + ' tiny, ' + 'x'.join(map(str, TINY_RESIZE[family][1:]))}"
                    f", {'bf16' if device == 'cuda' else 'fp32'}, batch {batch_size}, {workers} workers, {ours['device']}")
            bench = f"5 {device.upper()} training{' (tiny smoke test)' if tiny else ''}"
            memory = "peak GPU memory" if device == "cuda" else "peak process memory (RSS)"
            rows += [
                row(bench, f"{what}: images/s", ours["images_per_s"], base["images_per_s"], "img/s",
                    higher_is_better=True, target="higher than baseline", target_ratio=1.0),
                row(bench, f"{family}: t_load share of each step", ours["t_load_share"], base["t_load_share"], "",
                    higher_is_better=False, target="ours < 5%", met=ours["t_load_share"] < 0.05),
                row(bench, f"{family}: {memory}", ours["peak_gb"], base["peak_gb"], "GiB", higher_is_better=False),
                row(bench, f"{family}: host syncs per optimizer step", ours["syncs_per_step"], base["syncs_per_step"], "",
                    higher_is_better=False, note="" if device == "cuda" else "n/a: counted on CUDA only"),
            ]
            notes.append(f"{device} {family}: ours {ours}, baseline {base}")
    return rows, notes


def run_side(side: str, family: str, data: Path, steps: int, images: int, batch_size: int, workers: int,
             device: str, tiny: bool) -> dict:
    """One side of the comparison (in its own process, started by :func:`run`)."""
    labels = data / "images" / "labels.json"
    resize = TINY_RESIZE[family] if tiny else FAMILIES[family]["resize"]
    if side == "ours":
        return our_loop(family, data / "images", labels, data, steps, batch_size, workers, images, device, tiny, resize)
    return baseline_loop(family, data / "images", labels, steps, batch_size, workers, device, tiny, resize)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps per side (default 30; --tiny 8)")
    parser.add_argument("--images", type=int, default=None, help="generated images (default 256; --tiny 32)")
    parser.add_argument("--batch-size", type=int, default=None, help="per-device batch (default 8; --tiny 2)")
    parser.add_argument("--workers", type=int, default=None, help="dataloader workers (default min(8, cores); --tiny 0)")
    parser.add_argument("--families", default="deformable_detr,rt_detr", help="comma-separated: " + ", ".join(FAMILIES))
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--tiny", action="store_true", help="tiny models on small images: a smoke test of the script")
    parser.add_argument("--json", help="write the rows here (for bench/run_all.py)")
    parser.add_argument("--side", choices=["ours", "baseline"], help=argparse.SUPPRESS)  # run() starts each side
    parser.add_argument("--family", help=argparse.SUPPRESS)  # with --side
    parser.add_argument("--data", help=argparse.SUPPRESS)  # the generated images, for --side
    args = parser.parse_args()
    steps = args.steps or (8 if args.tiny else 30)
    images = args.images or (32 if args.tiny else 256)
    batch_size = args.batch_size or (2 if args.tiny else 8)
    workers = args.workers if args.workers is not None else (0 if args.tiny else min(8, os.cpu_count() or 1))
    if args.side:
        result = run_side(args.side, args.family, Path(args.data), steps, images, batch_size, workers,
                          args.device, args.tiny)
        Path(args.json).write_text(json.dumps(result))
        return
    families = [f.strip() for f in args.families.split(",") if f.strip()]
    unknown = [f for f in families if f not in FAMILIES]
    if unknown:
        parser.error(f"--families: unknown {unknown}; known: {sorted(FAMILIES)}")
    if args.device == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: skipped (--device cpu --tiny runs the script's smoke test)")
        emit([], args.json, ["5 CUDA training: no CUDA device: skipped"])
        return
    rows, notes = run(families, steps, images, batch_size, workers, args.device, args.tiny)
    emit(rows, args.json, notes)


if __name__ == "__main__":
    main()
