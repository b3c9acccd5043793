"""The model card: ``README.md`` of ``best/`` and ``model/`` in the Hugging Face Hub's format.

The YAML header is built with ``huggingface_hub``'s :class:`~huggingface_hub.ModelCardData` (``library_name:
transformers``, ``pipeline_tag: object-detection``, ``base_model`` when the weights started from a Hub model,
``datasets``, ``tags``, ``license`` when the recipe's ``hub.license`` gives one, and ``model-index`` with the
evaluation's COCO metrics as :class:`~huggingface_hub.EvalResult` entries), so the Hub reads the metrics as it
reads a transformers Trainer's card. The body: the recipe in a few rows, the metrics table, AP per class, the
training time and hardware, how to use the model with ``pipeline("object-detection")`` (with the recommended
score threshold when the saved config has ``hftrain_score_threshold``) and the run's plots, copied into the
folder's ``plots/`` so that the links work on the Hub.

Everything comes from plain data: ``hftrain_info.json``'s dict (epoch, metrics, training time and hardware),
the recipe as a dict (``recipe.yaml``'s content) and the folder's ``config.json``. Missing entries are left out
of the card, never guessed.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from hftrain.metrics.coco_eval import TABLE
from hftrain.data.schema import class_names_of_id2label

CARD_FILE = "README.md"
PLOT_FILES = (
    "pr_curves.png", "f1_curve.png", "p_curve.png", "r_curve.png", "confusion_matrix_normalized.png",
    "confusion_matrix.png", "ap_per_class.png", "metrics.png", "loss.png", "train_batch.png", "predictions.png",
)
"""The plots a card shows, in this order, when the run's ``plots/`` has them (copied into the model folder)."""
PLOT_LIMIT_BYTES = 2 * 2**20
"""A plot larger than this is not copied (the model folder stays small); the card says so."""
METRIC_ROWS = TABLE + (("VOC07 mAP@0.5 (11-point)", "voc07_map"), ("VOC mAP@0.5 (all-point)", "voc_map"))
"""(label, key) of the card's metrics: the COCO table's, and VOC AP when ``eval.voc`` computed it."""
GENERIC_FOLDERS = {"train", "val", "valid", "validation", "test", "trainval", "images", "image", "imgs", "labels",
                   "annotations", "jpegimages", "data", "dataset", "datasets", "100k", "10k", "rgb", "event"}
"""Folder names that say nothing about the dataset: the dataset's name is the nearest folder above them."""


def dataset_name(recipe: dict) -> tuple[str, str, bool]:
    """(name, type, on the Hub) of the training data: a Hub dataset id for ``format: hf`` read from the Hub,
    ``shapes`` for the generated demo data, else the nearest folder of the training images whose name is not
    generic (``/data/coco/train2017`` -> coco, ``kangaroo/images`` -> kangaroo); the type is the format."""
    data = recipe.get("data") or {}
    fmt = data.get("format") or "coco"
    if data.get("synthetic"):
        return "shapes", "synthetic", False
    images = str((data.get("train") or {}).get("images") or "")
    if fmt == "hf" and images and not _looks_local(images) and not Path(images).exists():
        return images, images, True
    for part in reversed(Path(images).parts):
        name = Path(part).stem if part.endswith((".yaml", ".yml", ".json")) else part
        if name and name != "/" and name.lower() not in GENERIC_FOLDERS and not re.fullmatch(r"(train|val|test)\d*", name.lower()):
            return name, fmt, False
    return fmt, fmt, False


def base_model(recipe: dict) -> str | None:
    """``model.pretrained`` when it is a Hub model id; None for a model trained from scratch or from a local
    folder (the Hub's ``base_model`` must name a Hub model; the body names the folder)."""
    pretrained = (recipe.get("model") or {}).get("pretrained")
    if not pretrained or _looks_local(pretrained) or Path(pretrained).exists():
        return None
    return pretrained


def _looks_local(name: str) -> bool:
    return name.startswith((".", "/", "~")) or name.count("/") > 1


def card_data(info: dict, recipe: dict, model_name: str) -> ModelCardData:
    """The card's metadata: what the Hub indexes (library, task, base model, data, tags, license, metrics)."""
    name, kind, _ = dataset_name(recipe)
    family = (recipe.get("model") or {}).get("name")
    metrics = info.get("metrics") or {}
    results = [
        EvalResult(task_type="object-detection", task_name="Object Detection", dataset_type=kind, dataset_name=name,
                   dataset_split="validation", metric_type=key, metric_name=label, metric_value=round(float(metrics[key]), 4))
        for label, key in METRIC_ROWS if _known(metrics.get(key))
    ]
    return ModelCardData(
        library_name="transformers",
        pipeline_tag="object-detection",
        base_model=base_model(recipe),
        datasets=[name],
        tags=["object-detection", "hftrain"] + ([family] if family else []),
        license=(recipe.get("hub") or {}).get("license"),
        model_name=model_name,
        eval_results=results or None,
    )


def _known(value) -> bool:
    """A metric that was measured (COCO writes -1 when there are no boxes of that kind)."""
    return isinstance(value, (int, float)) and value >= 0


def build_card(info: dict, recipe: dict, config: dict, plots: list[str], repo_id: str | None = None,
               left_out: list[str] = ()) -> ModelCard:
    """The card for a model folder: ``info`` is hftrain_info.json's dict, ``recipe`` the resolved recipe,
    ``config`` the folder's config.json, ``plots`` the file names under the folder's ``plots/``, ``repo_id``
    where it is (or will be) on the Hub, ``left_out`` plots not copied (too large)."""
    model_name = repo_id.split("/")[-1] if repo_id else Path(str(recipe.get("output_dir") or "model")).name
    data = card_data(info, recipe, model_name)
    body = "\n".join(_body(info, recipe, config, plots, repo_id, model_name, list(left_out)))
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n{body}\n")


def _body(info, recipe, config, plots, repo_id, model_name, left_out) -> list[str]:
    model, metrics = recipe.get("model") or {}, info.get("metrics") or {}
    classes = class_names_of_id2label(config.get("id2label") or {})
    name, kind, _ = dataset_name(recipe)
    pretrained = model.get("pretrained")
    lines = [f"# {model_name}", "",
             f"An object detector of the {_code(model.get('name'))} family (transformers model type "
             f"{_code(config.get('model_type'))}), {'fine-tuned from ' + _code(pretrained) if pretrained else 'trained from scratch'} "
             f"on {name} ({len(classes)} classes: {', '.join(classes)}) with hftrain (Hugging Face Accelerate "
             "training scripts for object detection).", ""]
    lines += ["## Training recipe", "", "| setting | value |", "| --- | --- |"]
    lines += [f"| {key} | {value} |" for key, value in _recipe_rows(recipe, kind)]
    lines += [""]
    if metrics:
        epoch = info.get("epoch")
        lines += ["## Evaluation", "", f"COCO metrics on the validation split ({name})"
                  + (f" after epoch {epoch}" if epoch is not None else "") + ":", "",
                  "| metric | value |", "| --- | --- |"]
        lines += [f"| {label} | {_value(metrics.get(key))} |" for label, key in METRIC_ROWS if key in metrics]
        per_class = [(key[3:], value) for key, value in metrics.items() if key.startswith("ap_")]  # CocoEvaluator's
        if per_class:
            lines += ["", "AP@[.5:.95] per class (n/a: no boxes of that class in the validation split):", "",
                      "| class | AP |", "| --- | --- |"]
            lines += [f"| {cls} | {_value(value)} |" for cls, value in per_class]
        lines += [""]
    lines += _training_lines(info.get("training") or {})
    threshold = config.get("hftrain_score_threshold")
    where = repo_id or "path/to/model"
    lines += ["## How to use", "", "```python", "from transformers import pipeline", "",
              f'detector = pipeline("object-detection", model="{where}")',
              f'detections = detector("image.jpg", threshold={_threshold(threshold)})',
              "# [{'score': 0.97, 'label': '...', 'box': {'xmin': ..., 'ymin': ..., 'xmax': ..., 'ymax': ...}}, ...]",
              "```", ""]
    if threshold is not None:
        lines += [f"The recommended score threshold, {_threshold(threshold)}, is the confidence that maximised F1 at "
                  "IoU 0.5 on the validation split (`hftrain_score_threshold` in config.json).", ""]
    else:
        lines += ["No recommended score threshold was measured for this model; 0.5 is a common start.", ""]
    if plots or left_out:
        lines += ["## Plots", ""]
        lines += [f"![{Path(plot).stem}](plots/{plot})" for plot in plots]
        lines += [f"{plot}: not copied (larger than {PLOT_LIMIT_BYTES // 2**20} MiB; see the run's plots/)"
                  for plot in left_out]
        lines += [""]
    return lines


def _recipe_rows(recipe: dict, kind: str) -> list[tuple[str, str]]:
    model, data, train = recipe.get("model") or {}, recipe.get("data") or {}, recipe.get("train") or {}
    optim, schedule, ema = recipe.get("optim") or {}, recipe.get("schedule") or {}, recipe.get("ema") or {}
    rows = [("family", _code(model.get("name"))),
            ("weights", f"from {_code(model['pretrained'])}" if model.get("pretrained") else "from scratch"),
            ("data format", kind)]
    if data:
        rows.append(("image size", f"{data.get('min_size')} x {data.get('min_size')} (square)"
                     if data.get("resize") == "square" else
                     f"shortest edge {data.get('min_size')}, longest at most {data.get('max_size')}"))
        rows.append(("augmentation", _augmentation(data)))
    if train:
        rows += [("epochs", str(train.get("epochs"))),
                 ("batch", f"{train.get('batch_size')} per device x {train.get('gradient_accumulation_steps', 1)} "
                           "accumulation" + (f" (effective {train['effective_batch']})" if train.get("effective_batch") else ""))]
    if optim:
        rows.append(("optimizer", f"{optim.get('name', 'adamw')}, lr {optim.get('lr')}, backbone x "
                                  f"{optim.get('backbone_lr_mult')}, weight decay {optim.get('weight_decay')}"))
    if schedule:
        rows.append(("schedule", f"{schedule.get('name')}, {schedule.get('warmup_steps', 0)} warm-up steps"))
    if ema.get("enabled"):
        rows.append(("EMA", f"decay {ema.get('decay')}"))
    if recipe.get("phases"):
        rows.append(("phases", ", ".join(f"{p.get('name') or i + 1}: {p.get('epochs')} epochs"
                                         for i, p in enumerate(recipe["phases"]))))
    return [(key, value) for key, value in rows if value]


def _augmentation(data: dict) -> str:
    augment = data.get("augment") or {}
    parts = [f"horizontal flip {data.get('hflip')}"] if data.get("hflip") else []
    if augment.get("preset", "none") != "none":  # data.augment.preset: the official pipeline, then the recipe's own values
        parts.append(f"preset {augment['preset']}")
    parts += [f"{key.replace('_', ' ')} {augment[key]}" for key in ("mosaic", "mixup", "scale_jitter") if augment.get(key)]
    if augment.get("scale_jitter"):
        parts[-1] += f" (scale {augment.get('scale_range')})"
    if augment.get("close_mosaic_epoch"):
        parts.append(f"mosaic/mixup off from epoch {augment['close_mosaic_epoch']}")
    parts += [f"{key} {augment[key]}" for key in ("photometric", "zoom_out", "iou_crop", "random_resize", "size_crop",
                                                  "hsv", "affine", "multiscale", "stop_epoch")  # the operations set
              if augment.get(key) not in (None, 0, 0.0, False, "", [])]  # (their parameters: in recipe.yaml)
    return ", ".join(parts) or "none"


def _training_lines(training: dict) -> list[str]:
    if not training:
        return []
    lines = ["## Training time and hardware", "", "| | |", "| --- | --- |"]
    if training.get("seconds") is not None:
        lines.append(f"| training time | {_duration(training['seconds'])} (wall clock"
                     + (f", {training['epochs']} epochs, {training['steps']} optimizer steps)" if training.get("steps") else ")")
                     + " |")
    if training.get("device"):
        processes = training.get("num_processes", 1)
        lines.append(f"| hardware | {processes} x {training['device']} |")
    if training.get("precision"):
        precision = {"no": "fp32"}.get(training["precision"], training["precision"])  # Accelerate's "no": no autocast
        lines.append(f"| precision | {precision} |")
    for key in ("transformers", "torch", "hftrain"):
        if training.get(f"{key}_version"):
            lines.append(f"| {key} | {training[f'{key}_version']} |")
    return lines + [""]


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours} h {minutes:02d} min" if hours else f"{minutes} min {secs:02d} s" if minutes else f"{secs} s"


def _value(value) -> str:
    return f"{value:.4f}" if _known(value) else "n/a"


def _threshold(value) -> str:
    return f"{value:.3g}" if isinstance(value, (int, float)) else "0.5"


def _code(text) -> str:
    return f"`{text}`" if text else ""


def copy_plots(plots_dir: Path | None, folder: Path) -> tuple[list[str], list[str]]:
    """Copy the card's plots that exist under ``plots_dir`` into ``folder/plots`` (each written as
    ``.partial``, then renamed); returns (copied names, names left out for their size)."""
    copied, left_out = [], []
    if plots_dir is None or not Path(plots_dir).is_dir():
        return copied, left_out
    for name in PLOT_FILES:
        source = Path(plots_dir) / name
        if not source.is_file():
            continue
        if source.stat().st_size > PLOT_LIMIT_BYTES:
            left_out.append(name)
            continue
        target = Path(folder) / "plots" / name
        target.parent.mkdir(exist_ok=True)
        shutil.copyfile(source, target.with_name(name + ".partial"))
        os.replace(target.with_name(name + ".partial"), target)
        copied.append(name)
    return copied, left_out


def write_card(folder: Path, info: dict, recipe: dict, plots_dir: Path | None = None, repo_id: str | None = None) -> Path:
    """Write ``folder/README.md`` (and ``folder/plots/``) for the model saved in ``folder`` (its config.json
    gives the classes and the recommended threshold). The card goes to ``README.md.partial`` and is renamed
    into place, so a reader never sees half a card."""
    folder = Path(folder)
    config_path = folder / "config.json"
    config = json.loads(config_path.read_text()) if config_path.is_file() else {}
    plots, left_out = copy_plots(plots_dir, folder)
    card = build_card(info, recipe, config, plots, repo_id, left_out)
    partial = folder / (CARD_FILE + ".partial")
    partial.write_text(str(card))
    os.replace(partial, folder / CARD_FILE)
    return folder / CARD_FILE
