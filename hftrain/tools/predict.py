"""``hftrain predict MODEL_OR_RUN IMAGES...``: detections on new images, through evaluation's own path.

MODEL_OR_RUN is a run directory (its ``best/``, else ``model/``; preprocessing from its ``recipe.yaml``)
or a saved model folder (``config.json``, weights and ``preprocessor_config.json``; preprocessing from
the saved image processor's size, which training sets to the recipe's ``data.min_size``/``max_size``/
``resize``). IMAGES are files, folders (searched recursively for .jpg .jpeg .png .bmp .webp .tif .tiff)
or glob patterns (``**`` recursive). Each image is decoded with EXIF orientation applied and resized as
training's validation images are (:func:`hftrain.data.decode.decode_for_size`,
:func:`hftrain.data.transforms.prepare_image`), batched by training's :class:`Collate`, normalised and
post-processed by :func:`hftrain.engine.evaluation.predict`, so its boxes and scores are the ones
``hftrain eval`` computes for the same image.

Writes into ``--out``:

- ``predictions.json``: COCO results (``image_id``, ``file_name``, ``category_id``, ``bbox`` absolute
  xywh in the displayed image, ``score``), the detections at or above the threshold. ``category_id``
  is the dataset's own id where the model was trained on data that has them (config.json's
  ``hftrain_category_ids``), else the class index;
- ``summary.json``: the model, threshold (and where it came from), categories (id, name), every image
  (id, file, width, height, detections) and every unreadable file with its error;
- ``images/``: each image with its boxes drawn, class name and score (unless ``--no-draw``).
"""

from __future__ import annotations

import argparse
import glob
import json
import sys
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import send_to_device
from torch.utils.data import DataLoader, Dataset
from transformers.utils import logging as hf_logging

from hftrain.data.collate import Collate
from hftrain.data.decode import decode_for_size, decode_image
from hftrain.data.loader import make_resize, share_by_name
from hftrain.data.transforms import Resize, prepare_image
from hftrain.engine.accelerator import resolve_precision
from hftrain.engine.evaluation import predict
from hftrain.metrics.coco_eval import predictions_to_coco
from hftrain.models.inputs import Normalize
from hftrain.models.registry import MODELS, build_model
from hftrain.recipe import DataConfig, EvalConfig, ModelConfig, PrecisionConfig, RUN_ONLY, load_recipe
from hftrain.report.draw import class_colour, draw_boxes, line_width
from hftrain.data.schema import class_names_of_id2label
from hftrain.data.decode import IMAGE_EXTENSIONS

"""What a folder given as IMAGES is searched for (case-insensitive); files named directly may be anything."""
DEFAULT_THRESHOLD = 0.5
"""The score threshold when neither --threshold nor the model's ``hftrain_score_threshold`` gives one."""
MODEL_NAMES = {"hftrain_retinanet": "retinanet"}
"""config.json ``model_type`` -> registry name, where they differ (the others are the same)."""


@dataclass
class Source:
    """A model to predict with and how its training prepared images."""

    weights: Path
    model: ModelConfig
    data: DataConfig
    eval: EvalConfig
    precision: PrecisionConfig
    class_names: list[str]
    category_ids: list[int] | None
    """The dataset's own id of each class (config.json ``hftrain_category_ids``), or None."""
    threshold: float | None
    """config.json ``hftrain_score_threshold`` (the recommended score threshold), or None."""


def resolve_source(path: str | Path) -> Source:
    """A run directory (recipe.yaml and best/ or model/) or a saved model folder, as a :class:`Source`."""
    path = Path(path)
    if (path / "recipe.yaml").is_file():
        weights = next((path / name for name in ("best", "model") if (path / name / "config.json").is_file()), None)
        if weights is None:
            raise FileNotFoundError(f"{path}: a run directory without best/ or model/ (no saved weights yet)")
        recipe = load_recipe(path / "recipe.yaml", RUN_ONLY, check_paths=False)
        model, data, eval_cfg, precision = recipe.model, recipe.data, recipe.eval, recipe.precision
    elif (path / "config.json").is_file():
        weights = path
        model_type = json.loads((path / "config.json").read_text()).get("model_type")
        name = MODEL_NAMES.get(model_type, model_type)
        if name not in MODELS:
            raise ValueError(f"{path / 'config.json'}: model_type {model_type!r} is not a family hftrain builds "
                             f"({sorted(MODELS)})")
        model, data, eval_cfg, precision = ModelConfig(name=name), data_from_processor(path), EvalConfig(), PrecisionConfig()
    else:
        raise FileNotFoundError(f"{path}: neither a run directory (recipe.yaml) nor a saved model folder (config.json)")
    config = json.loads((weights / "config.json").read_text())
    class_names = class_names_of_id2label(config["id2label"])
    category_ids = config.get("hftrain_category_ids")
    if category_ids is not None and len(category_ids) != len(class_names):
        raise ValueError(f"{weights / 'config.json'}: hftrain_category_ids has {len(category_ids)} ids for "
                         f"{len(class_names)} classes")
    return Source(weights, replace(model, pretrained=str(weights), config={}), data, eval_cfg, precision,
                  class_names, category_ids, config.get("hftrain_score_threshold"))


def data_from_processor(folder: Path) -> DataConfig:
    """The resize training used, read back from the image processor it saved (``configure_processor``)."""
    file = folder / "preprocessor_config.json"
    if not file.is_file():
        raise FileNotFoundError(f"{folder}: no preprocessor_config.json, so the training resize is unknown; "
                                "pass the run directory instead (its recipe.yaml has it)")
    size = json.loads(file.read_text()).get("size") or {}
    if "shortest_edge" in size and "longest_edge" in size:
        return DataConfig(min_size=size["shortest_edge"], max_size=size["longest_edge"], resize="shortest_edge")
    if "height" in size and size.get("height") == size.get("width"):
        return DataConfig(min_size=size["height"], max_size=size["height"], resize="square")
    raise ValueError(f"{file}: size {size} is neither shortest_edge/longest_edge nor a square height/width")


def collect_images(inputs: list[str]) -> tuple[list[Path], int]:
    """The image files named by ``inputs`` (files, folders searched recursively, glob patterns), in order,
    each once; and how many other files the folders held (not images by extension; counted, not read).
    A path that does not exist, or a pattern or folder that yields nothing, is an error naming it."""
    files, ignored = [], 0
    for item in inputs:
        if any(ch in item for ch in "*?["):
            found = [Path(p) for p in sorted(glob.glob(item, recursive=True)) if Path(p).is_file()]
            if not found:
                raise FileNotFoundError(f"IMAGES: the pattern {item!r} matches no file")
        elif Path(item).is_dir():
            inside = sorted(p for p in Path(item).rglob("*") if p.is_file())
            found = [p for p in inside if p.suffix.lower() in IMAGE_EXTENSIONS]
            ignored += len(inside) - len(found)
            if not found:
                raise FileNotFoundError(f"IMAGES: the folder {item} holds no image ({', '.join(IMAGE_EXTENSIONS)})")
        elif Path(item).is_file():
            found = [Path(item)]
        else:
            raise FileNotFoundError(f"IMAGES: {item} does not exist")
        files.extend(found)
    unique = list({p.resolve(): p for p in files}.values())
    return unique, ignored


class ImageFiles(Dataset):
    """Image files decoded and resized exactly as :class:`hftrain.data.loader.DetectionDataset` loads a
    validation image (EXIF orientation, JPEG draft, resize); an unreadable file becomes a record of its error."""

    def __init__(self, files: list[Path], resize: Resize):
        self.files = files
        self.resize = resize

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> dict:
        path = self.files[index]
        try:
            image, size = decode_for_size(path, self.resize.output_size if self.resize.draft else None)
        except (OSError, ValueError, SyntaxError) as err:  # what DetectionDataset counts as a failed image
            return {"unreadable": {"file": str(path), "error": f"{type(err).__name__}: {err}"}}
        pixels, boxes = prepare_image(image, np.zeros((0, 4), np.float32), size, self.resize, 0.0, source_size=size)
        return {"pixel_values": pixels, "boxes": boxes, "class_labels": torch.zeros(0, dtype=torch.long),
                "image_id": index, "orig_size": size}


@dataclass
class CollateReadable:
    """Training's :class:`Collate` over the readable samples; the unreadable ones listed in ``unreadable``."""

    collate: Collate

    def __call__(self, samples: list[dict]) -> dict:
        batch = self.collate([s for s in samples if "unreadable" not in s])
        batch["unreadable"] = [s["unreadable"] for s in samples if "unreadable" in s]
        return batch


def readable_batches(loader, device, unreadable: list[dict], sizes: dict[int, tuple[int, int]]):
    """The loader's batches on ``device``, collecting the unreadable files and each image's (height, width)
    as displayed (EXIF orientation applied) in ``sizes``; batches with no image are skipped."""
    for batch in loader:
        unreadable.extend(batch.pop("unreadable"))
        if batch["images"]:
            sizes.update(zip(batch["image_ids"].tolist(), batch["orig_sizes"].int().tolist()))
            yield send_to_device(batch, device, non_blocking=True)


def make_accelerator(device: str | None, precision_mode: str) -> Accelerator:
    """An accelerator on ``device`` (cpu, cuda, cuda:N, mps; default cuda when available, else cpu)."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    kind, _, index = device.partition(":")
    if kind not in ("cpu", "cuda", "mps"):
        raise ValueError(f"--device: {device!r} is not cpu, cuda, cuda:N or mps")
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {device}: no CUDA device is available")
        if index:
            torch.cuda.set_device(int(index))
    mode = "no" if kind != "cuda" and precision_mode == "auto" else resolve_precision(precision_mode)
    return Accelerator(cpu=kind == "cpu", mixed_precision=mode)


def draw_detections(image, detections: list[dict], class_names: list[str]):
    """``image`` (RGB, as displayed) with each detection outlined in its class colour, named and scored."""
    image = image.copy()
    boxes = [[x, y, x + w, y + h] for x, y, w, h in (d["bbox"] for d in detections)]
    colours = [class_colour(d["label"]) for d in detections]
    texts = [f"{class_names[d['label']]} {d['score']:.2f}" for d in detections]
    draw_boxes(image, boxes, colours, texts, 1.0, line_width(max(image.size) // 2))  # 1280 px: 5 px lines, 25 px text
    return image


def drawn_name(path: Path, image_id: int, taken: set[str]) -> str:
    """The drawn image's file name: the image's own (``.png`` added to formats PIL cannot write), made unique."""
    name = path.name if path.suffix.lower() in IMAGE_EXTENSIONS \
        else path.name + ".png"
    if name in taken:
        name = f"{path.stem}_{image_id}{Path(name).suffix}"
    taken.add(name)
    return name


def predict_images(model_or_run: str | Path, images: list[str], out: str | Path, threshold: float | None = None,
                   batch_size: int = 8, device: str | None = None, workers: int = 0, draw: bool = True) -> dict:
    """Predict on ``images`` with ``model_or_run``; writes ``out``/predictions.json, summary.json and
    images/; returns the summary (its ``predictions`` key: the written COCO results)."""
    hf_logging.disable_progress_bar()
    source = resolve_source(model_or_run)
    files, ignored = collect_images(list(images))
    if threshold is None:
        threshold, threshold_from = ((source.threshold, "the model's hftrain_score_threshold")
                                     if source.threshold is not None else (DEFAULT_THRESHOLD, "default"))
    else:
        threshold_from = "--threshold"
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    accelerator = make_accelerator(device, source.precision.mode)
    detector = build_model(source.model, source.class_names, fp32_criterion=source.precision.fp32_criterion)
    model = accelerator.prepare(detector.model)
    normalize = Normalize(detector.image_mean, detector.image_std, accelerator.device)
    collate = CollateReadable(Collate(normalize_by_canvas=not detector.uses_pixel_mask,
                                      pad_to_multiple=detector.pad_to_multiple))
    loader = DataLoader(ImageFiles(files, make_resize(source.data)), batch_size=batch_size, shuffle=False,
                        num_workers=workers, collate_fn=collate, worker_init_fn=share_by_name if workers else None)
    unreadable: list[dict] = []
    sizes: dict[int, tuple[int, int]] = {}
    batches = readable_batches(loader, accelerator.device, unreadable, sizes)
    predictions = predict(model, batches, accelerator, detector, normalize, source.eval.max_detections)
    kept = []
    for p in predictions:  # the detections at or above the threshold
        keep = [i for i, s in enumerate(p["scores"]) if s >= threshold]
        kept.append({"image_id": p["image_id"], "boxes": [p["boxes"][i] for i in keep],
                     "scores": [p["scores"][i] for i in keep], "labels": [p["labels"][i] for i in keep]})
    results = predictions_to_coco(kept, source.category_ids)
    labels = [label for p in kept for label in p["labels"]]
    per_image: dict[int, list[dict]] = {}
    for result, label in zip(results, labels):
        result["file_name"] = str(files[result["image_id"]])
        per_image.setdefault(result["image_id"], []).append({**result, "label": label})
    ids = source.category_ids or list(range(len(source.class_names)))
    summary_images, taken = [], set()
    if draw:
        (out / "images").mkdir(exist_ok=True)
    for p in kept:
        path = files[p["image_id"]]
        height, width = sizes[p["image_id"]]
        detections = per_image.get(p["image_id"], [])
        summary_images.append({"id": p["image_id"], "file_name": str(path), "width": width,
                               "height": height, "detections": len(detections)})
        if draw:  # decoded again only to draw: as displayed (EXIF orientation applied), the frame of the boxes
            draw_detections(decode_image(path), detections, source.class_names).save(
                out / "images" / drawn_name(path, p["image_id"], taken))
    summary = {
        "model": str(source.weights), "threshold": threshold, "threshold_from": threshold_from,
        "category_ids": "the dataset's own" if source.category_ids is not None else "class indices",
        "categories": [{"id": i, "name": n} for i, n in zip(ids, source.class_names)],
        "images": summary_images, "unreadable": unreadable, "not_images": ignored,
    }
    (out / "predictions.json").write_text(json.dumps(results))
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    lines = [f"predicted {len(kept)} of {len(files)} images with {source.weights} on {accelerator.device}: "
             f"{len(results)} detections with score >= {threshold} ({threshold_from}"
             + (", none saved with the model)" if threshold_from == "default" else ")"),
             f"category ids: {summary['category_ids']}; results: {out / 'predictions.json'}, {out / 'summary.json'}"
             + (f", drawn images: {out / 'images'}" if draw else "")]
    if ignored:
        lines.append(f"{ignored} files in the folders are not images by extension ({' '.join(IMAGE_EXTENSIONS)}), not read")
    if unreadable:
        lines.append(f"{len(unreadable)} unreadable image files (listed in summary.json):")
        lines.extend(f"  {u['file']}: {u['error']}" for u in unreadable)
    print("\n".join(lines), flush=True)
    return {**summary, "predictions": results}


def predict_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="hftrain predict", description="Detect objects in images with a trained "
                                     "run or a saved model; write COCO results and drawn images.")
    parser.add_argument("model", metavar="MODEL_OR_RUN", help="run directory (best/, else model/) or saved model folder")
    parser.add_argument("images", metavar="IMAGES", nargs="+",
                        help="image files, folders (searched recursively) or glob patterns (quote them)")
    parser.add_argument("--out", default="predictions", help="output folder (default: ./predictions)")
    parser.add_argument("--threshold", type=float, default=None,
                        help=f"keep detections scoring at least this (default: the model's hftrain_score_threshold, "
                             f"else {DEFAULT_THRESHOLD})")
    parser.add_argument("--batch-size", type=int, default=8, help="images per forward pass (default 8)")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:N or mps (default: cuda if available, else cpu)")
    parser.add_argument("--workers", type=int, default=0, help="image-decoding worker processes (default 0)")
    parser.add_argument("--no-draw", action="store_true", help="write no drawn images")
    args = parser.parse_args(argv)
    if args.batch_size < 1 or args.workers < 0:
        parser.error("--batch-size must be at least 1 and --workers at least 0")
    try:
        predict_images(args.model, args.images, args.out, args.threshold, args.batch_size, args.device,
                       args.workers, draw=not args.no_draw)
    except (FileNotFoundError, ValueError) as err:
        print(f"hftrain predict: {err}", file=sys.stderr)
        return 2
    return 0
