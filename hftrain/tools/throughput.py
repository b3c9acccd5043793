"""Inference speed of a run's saved model on its validation set, in images per second.

    python -m hftrain.tools.throughput RUN_DIR [--weights model] [--batch-size N]

What is timed: the model's forward pass plus its post-processing (score threshold, NMS) in
eval mode under ``torch.no_grad``, batch by batch over the validation split of the run's
``recipe.yaml``, after one untimed warm-up pass over the first batch (which is then timed like
the others). Not timed: reading and decoding images, resizing, and the host-to-device copy.
On CUDA the clock waits for the device (``torch.cuda.synchronize``) before each reading. One
process; the batch is the recipe's evaluation batch (``eval.batch_size`` or
``train.batch_size``) unless given, so fix ``eval.batch_size`` to compare runs.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def measure_inference(run_dir: str | Path, weights: str = "model", batch_size: int | None = None) -> dict:
    """Time inference of ``run_dir/weights`` over the run's validation set (see the module docstring)."""
    from hftrain.data.loader import load_data, make_eval_loader, materialise_synthetic
    from hftrain.models.registry import build_model
    from hftrain.recipe import load_recipe
    from hftrain.engine.accelerator import resolve_precision, use_cpu
    from hftrain.models.inputs import Normalize, model_inputs

    run_dir = Path(run_dir)
    source = run_dir / weights
    if not (source / "config.json").is_file():
        raise FileNotFoundError(f"{run_dir}: no saved model in {weights}/ (config.json missing)")
    recipe = load_recipe(run_dir / "recipe.yaml")
    recipe = replace(recipe, model=replace(recipe.model, pretrained=str(source), config={}))
    data = load_data(materialise_synthetic(recipe.data))
    detector = build_model(recipe.model, data.class_names, fp32_criterion=recipe.precision.fp32_criterion)
    batch = batch_size or recipe.eval.batch_size or recipe.train.batch_size
    loader = make_eval_loader(data.val, batch, replace(recipe.data, num_workers=0), recipe.train.seed, detector)
    device = torch.device("cpu" if use_cpu() else "cuda")
    model = detector.model.to(device).eval()
    normalize = Normalize(detector.image_mean, detector.image_std, device)
    precision = resolve_precision(recipe.precision.mode) if device.type == "cuda" else "no"
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)

    def infer(batch_data: dict) -> float:
        inputs = model_inputs({k: v.to(device) if torch.is_tensor(v) else v for k, v in batch_data.items()},
                              normalize, detector.uses_pixel_mask)
        _sync(device)
        start = time.perf_counter()
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            outputs = model(**inputs)
        detector.postprocess(outputs, batch_data["target_sizes"])
        _sync(device)
        return time.perf_counter() - start

    images, seconds, warmed_up = 0, 0.0, False
    for batch_data in loader:
        if batch_data["pixel_values"] is None:
            continue
        if not warmed_up:  # the first call pays for allocation and lazy initialisation: not timed
            infer(batch_data)
            warmed_up = True
        seconds += infer(batch_data)
        images += len(batch_data["image_ids"])
    if images == 0:
        raise ValueError(f"{run_dir}: no validation image could be read to time inference")
    return {
        "images_per_s": images / seconds,
        "inference_images": images,
        "inference_seconds": seconds,
        "inference_batch_size": batch,
        "inference_device": str(device),
        "inference_precision": precision,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hftrain.tools.throughput", description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir")
    parser.add_argument("--weights", default="model", help="weights directory inside the run (model or best)")
    parser.add_argument("--batch-size", type=int, default=None)
    args = parser.parse_args(argv)
    print(json.dumps(measure_inference(args.run_dir, args.weights, args.batch_size), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
