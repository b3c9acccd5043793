"""Value checks of a typed recipe across its sections, every problem collected (not the first raised)."""

from __future__ import annotations

import difflib
from pathlib import Path

from hftrain.recipe.presets import resolve_augment
from hftrain.recipe.schema import AugmentConfig, Recipe, SplitConfig


def check_values(recipe: Recipe, problems: list[str]) -> None:
    """Range checks that a type alone cannot express, section by section; every problem is appended."""
    for check in (_check_counts, _check_rates, _check_best_metric_and_saving, _check_data, _check_ema_and_cuda,
                  _check_model, _check_trackers, _check_early_stop, _check_hub):
        check(recipe, problems)


def _check_counts(recipe: Recipe, problems: list[str]) -> None:
    """Counts and sizes that must be at least 1; phases; ``batch_size: auto``."""
    positive = {
        "train.epochs": recipe.train.epochs,
        "train.batch_size": 1 if recipe.train.batch_size == "auto" else recipe.train.batch_size,
        "train.effective_batch": 1 if recipe.train.effective_batch is None else recipe.train.effective_batch,
        "guard.consecutive": recipe.guard.consecutive,
        "log.loss_window": recipe.log.loss_window,
        "debug_batches": recipe.debug_batches,
        "train.gradient_accumulation_steps": recipe.train.gradient_accumulation_steps,
        "eval.interval": recipe.eval.interval,
        "checkpoint.interval": recipe.checkpoint.interval,
        "checkpoint.keep": recipe.checkpoint.keep,
        "log.interval": recipe.log.interval,
        "data.min_size": recipe.data.min_size,
        "data.max_size": recipe.data.max_size,
    }
    for key, value in positive.items():
        if value < 1:
            problems.append(f"{key}: must be at least 1, got {value}")
    for i, phase in enumerate(recipe.phases):
        for key in ("epochs", "batch_size", "gradient_accumulation_steps"):
            value = getattr(phase, key)
            if value is not None and value < 1:
                problems.append(f"phases[{i}].{key}: must be at least 1, got {value}")
        if phase.lr is not None and phase.lr <= 0:
            problems.append(f"phases[{i}].lr: must be positive, got {phase.lr}")
    if recipe.phases and recipe.train.batch_size == "auto":
        problems.append("train.batch_size: auto cannot be combined with phases; give each phase a batch_size")
    if recipe.train.batch_size == "auto" and recipe.train.effective_batch is None:
        problems.append("train.batch_size: auto needs train.effective_batch (images per optimizer step)")


def _check_rates(recipe: Recipe, problems: list[str]) -> None:
    """Learning rates, factors and probabilities of the guard, optimizer, clipping and plots."""
    if not 0.0 < recipe.guard.lr_factor <= 1.0:
        problems.append(f"guard.lr_factor: must be in (0, 1], got {recipe.guard.lr_factor}")
    if recipe.guard.max_rollbacks < 0:
        problems.append(f"guard.max_rollbacks: must be 0 or more, got {recipe.guard.max_rollbacks}")
    if recipe.data.repeat_threshold <= 0:
        problems.append(f"data.repeat_threshold: must be positive, got {recipe.data.repeat_threshold}")
    if recipe.optim.lr <= 0:
        problems.append(f"optim.lr: must be positive, got {recipe.optim.lr}")
    if recipe.train.clip_max_norm is not None and recipe.train.clip_max_norm <= 0:
        problems.append(f"train.clip_max_norm: must be positive or null, got {recipe.train.clip_max_norm}")
    if recipe.plots.images < 0:
        problems.append(f"plots.images: must be 0 or more, got {recipe.plots.images}")
    if not 0.0 <= recipe.plots.score_threshold <= 1.0:
        problems.append(f"plots.score_threshold: must be in [0, 1], got {recipe.plots.score_threshold}")
    if recipe.eval.confusion_threshold is not None and not 0.0 <= recipe.eval.confusion_threshold <= 1.0:
        problems.append(f"eval.confusion_threshold: must be in [0, 1] or null, got {recipe.eval.confusion_threshold}")


def _check_best_metric_and_saving(recipe: Recipe, problems: list[str]) -> None:
    """``checkpoint.best_metric`` names a metric; ``every_steps`` fits the log windows."""
    from hftrain.metrics.coco_eval import STAT_NAMES

    best = recipe.checkpoint.best_metric
    voc_names = ("voc07_map", "voc_map")
    if not (best in STAT_NAMES or best.startswith("ap_") or (recipe.eval.voc and (best in voc_names or best.startswith("voc")))):
        hint = " (VOC metrics need eval.voc: true)" if best.startswith("voc") else ""
        problems.append(f"checkpoint.best_metric: {best!r} is not an evaluation metric{hint}; "
                        f"choose one of {list(STAT_NAMES)}" + (f" or {list(voc_names)}" if recipe.eval.voc else "")
                        + " or ap_<class name>")
    every = recipe.checkpoint.every_steps
    if every is not None and (every < 1 or every % recipe.log.interval):
        problems.append(f"checkpoint.every_steps: must be a positive multiple of log.interval "
                        f"({recipe.log.interval}) so a resumed run logs the same windows, got {every}")


def _check_data(recipe: Recipe, problems: list[str]) -> None:
    """Workers, flip and augmentation probabilities, RAM cache margin; a yolo split names its sets."""
    if recipe.data.num_workers < 0:
        problems.append(f"data.num_workers: must be 0 or more, got {recipe.data.num_workers}")
    if not 0.0 <= recipe.data.hflip <= 1.0:
        problems.append(f"data.hflip: must be a probability in [0, 1], got {recipe.data.hflip}")
    _check_augment(recipe.data.augment, recipe.data.min_size, problems)
    if recipe.data.cache_margin_gb < 0:
        problems.append(f"data.cache_margin_gb: must be 0 or more, got {recipe.data.cache_margin_gb}")
    if recipe.data.format == "yolo" and recipe.data.synthetic is None:
        for name in ("train",) if recipe.data.val.from_train is not None else ("train", "val"):
            split: SplitConfig = getattr(recipe.data, name)
            if not split.sets:
                problems.append(f"data.{name}.sets: format yolo reads the data.yaml sets named here, "
                                f"e.g. [{name}]; none given")
            if split.labels is not None:
                problems.append(f"data.{name}.labels: format yolo finds the label files from data.yaml "
                                f"(data.{name}.images); leave labels unset")
    _check_splits(recipe, problems)


def _check_augment(augment: AugmentConfig, min_size: int, problems: list[str]) -> None:
    """``data.augment``: probabilities, ranges, side lists and epochs (a null field comes from the preset)."""
    for key in ("mosaic", "mixup", "scale_jitter", "min_visible", "photometric", "zoom_out", "iou_crop", "size_crop",
                "hsv", "affine", "translate", "affine_scale"):
        value = getattr(augment, key)
        if value is not None and not 0.0 <= value <= 1.0:
            problems.append(f"data.augment.{key}: must be in [0, 1], got {value}")
    if augment.affine_scale is not None and augment.affine_scale >= 1.0:
        problems.append(f"data.augment.affine_scale: must be below 1 (the scale is 1 +- it), got {augment.affine_scale}")
    for key, low in (("scale_range", 0.0), ("zoom_out_range", 1.0 - 1e-9)):
        pair = getattr(augment, key)
        if len(pair) != 2 or not low < pair[0] <= pair[1]:
            bound = "0 < low" if key == "scale_range" else "1 <= low"
            problems.append(f"data.augment.{key}: must be [low, high] with {bound} <= high, got {pair}")
    if len(augment.hsv_gains) != 3 or any(not 0.0 <= g <= 1.0 for g in augment.hsv_gains):
        problems.append(f"data.augment.hsv_gains: must be [h, s, v] gains in [0, 1], got {augment.hsv_gains}")
    for key in ("random_resize", "size_crop_resize", "multiscale"):
        sides = getattr(augment, key)
        if sides is not None and any(side < 1 for side in sides):
            problems.append(f"data.augment.{key}: sides must be at least 1 pixel, got {sides}")
    crop = augment.size_crop_range
    if crop is not None and (len(crop) != 2 or not 1 <= crop[0] <= crop[1]):
        problems.append(f"data.augment.size_crop_range: must be [min, max] with 1 <= min <= max, got {crop}")
    resolved = resolve_augment(augment, max(1, min_size))
    if resolved.size_crop and not (resolved.random_resize and resolved.size_crop_resize):
        problems.append(f"data.augment.size_crop: DETR's size crop is a branch of the random resize; with preset "
                        f"{augment.preset} data.augment.random_resize and size_crop_resize must be given too")
    for key in ("close_mosaic_epoch", "stop_epoch"):
        epoch = getattr(augment, key)
        if epoch is not None and epoch < 1:
            problems.append(f"data.augment.{key}: must be an epoch number (from 1) or null, got {epoch}")
    if augment.min_box_size < 0:
        problems.append(f"data.augment.min_box_size: must be 0 or more, got {augment.min_box_size}")


def _check_splits(recipe: Recipe, problems: list[str]) -> None:
    """``data.val.from_train`` (a fraction, val otherwise unset) and ``data.class_names`` (VOC, distinct)."""
    data = recipe.data
    for name in ("train", "test"):
        if getattr(data, name).from_train is not None:
            problems.append(f"data.{name}.from_train: applies to data.val only (the fraction of train held out as val)")
    from_train = data.val.from_train
    if from_train is not None:
        if not 0.0 < from_train < 1.0:
            problems.append(f"data.val.from_train: must be a fraction in (0, 1), got {from_train}")
        given = [key for key in ("images", "labels") if getattr(data.val, key) is not None]
        if data.val.sets:
            given.append("sets")
        if given:
            problems.append(f"data.val.from_train: the validation split is held out of train, so data.val."
                            f"{'/'.join(given)} must not be set")
        if data.synthetic is not None:
            problems.append("data.val.from_train: the synthetic dataset generates its own validation split")
    names = data.class_names
    if names and data.format != "voc":
        problems.append(f"data.class_names: applies to format voc only; {data.format} names its classes in its "
                        "label files")
    if any(not str(name).strip() for name in names) or len(set(names)) != len(names):
        problems.append(f"data.class_names: names must be non-empty and distinct, got {names}")


def _check_ema_and_cuda(recipe: Recipe, problems: list[str]) -> None:
    """EMA decay and warm-up; CUDA memory settings and the allocator string."""
    if not 0.0 < recipe.ema.decay < 1.0:
        problems.append(f"ema.decay: must be in (0, 1), got {recipe.ema.decay}")
    if recipe.ema.warmup_updates < 1:
        problems.append(f"ema.warmup_updates: must be at least 1, got {recipe.ema.warmup_updates}")
    cuda = recipe.cuda
    if cuda.memory_fraction is not None and not 0.0 < cuda.memory_fraction <= 1.0:
        problems.append(f"cuda.memory_fraction: must be in (0, 1] or null, got {cuda.memory_fraction}")
    if cuda.empty_cache_every is not None and cuda.empty_cache_every < 1:
        problems.append(f"cuda.empty_cache_every: must be at least 1 or null, got {cuda.empty_cache_every}")
    if cuda.alloc_conf is not None:
        from hftrain.health.cuda_memory import check_alloc_conf

        problems.extend(check_alloc_conf(cuda.alloc_conf))


def _check_model(recipe: Recipe, problems: list[str]) -> None:
    """The model name is one of the registry's."""
    from hftrain.models.registry import MODELS  # the registry is the schema of model names

    if recipe.model.name not in MODELS:
        near = difflib.get_close_matches(recipe.model.name, list(MODELS), n=1)
        hint = f" (did you mean {near[0]!r}?)" if near else ""
        problems.append(f"model.name: unknown model {recipe.model.name!r}{hint}; known: {sorted(MODELS)}")


TRACKER_PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow", "comet_ml": "comet-ml",
                    "aim": "aim", "clearml": "clearml", "dvclive": "dvclive", "swanlab": "swanlab", "trackio": "trackio"}
"""Accelerate's trackers (``log_with`` names) and the pip package each needs."""


def _check_trackers(recipe: Recipe, problems: list[str]) -> None:
    """``log.trackers``: names Accelerate knows, whose packages import (before any data is read)."""
    from accelerate.tracking import get_available_trackers

    available = {str(name) for name in get_available_trackers()}
    for name in recipe.log.trackers:
        if name not in TRACKER_PACKAGES:
            near = difflib.get_close_matches(name, list(TRACKER_PACKAGES), n=1)
            hint = f" (did you mean {near[0]!r}?)" if near else ""
            problems.append(f"log.trackers: unknown tracker {name!r}{hint}; Accelerate's trackers: {list(TRACKER_PACKAGES)}")
        elif name not in available:
            problems.append(f"log.trackers: {name} is not installed; pip install {TRACKER_PACKAGES[name]} "
                            f"(or remove {name} from log.trackers)")
    if "tensorboard" in recipe.log.trackers and not recipe.log.tensorboard:
        problems.append("log.tensorboard: false, but log.trackers names tensorboard; keep one of the two")


def _check_early_stop(recipe: Recipe, problems: list[str]) -> None:
    """``train.early_stop``: a patience of at least one evaluation, a non-negative delta, evaluations to count."""
    early = recipe.train.early_stop
    if early.patience is None:
        return
    if early.patience < 1:
        problems.append(f"train.early_stop.patience: must be at least 1 evaluation (or null: off), got {early.patience}")
    if early.min_delta < 0:
        problems.append(f"train.early_stop.min_delta: must be 0 or more, got {early.min_delta}")
    if not recipe.eval.during_training:
        problems.append("train.early_stop: counts evaluations, but eval.during_training is false (only the last "
                        "epoch is evaluated); set eval.during_training: true or train.early_stop.patience: null")


def _check_hub(recipe: Recipe, problems: list[str]) -> None:
    """``hub.push`` / ``hub.push_best`` name a valid repository id (found now, not after training)."""
    hub = recipe.hub
    wanted = [key for key in ("push", "push_best") if getattr(hub, key)]
    if wanted and not hub.repo_id:
        problems.append(f"hub.repo_id: hub.{' and hub.'.join(wanted)} need{'s' if len(wanted) == 1 else ''} the "
                        "repository to upload to, "
                        f"e.g. hub.repo_id=your-name/{Path(recipe.output_dir).name}")
    if hub.repo_id:
        from huggingface_hub.utils import HFValidationError, validate_repo_id

        try:
            validate_repo_id(hub.repo_id)
        except HFValidationError as err:
            problems.append(f"hub.repo_id: {hub.repo_id!r} is not a Hub repository id ({err})")


def missing_paths(recipe: Recipe) -> list[str]:
    """Data paths named by the recipe that do not exist (generated data is exempt)."""
    if recipe.data.synthetic is not None:
        return []
    problems = []
    for split_name in ("train", "val", "test"):
        split: SplitConfig = getattr(recipe.data, split_name)
        if split_name == "val" and split.from_train is not None:
            continue  # held out of train
        if split_name == "test" and split.images is None and split.labels is None:
            continue  # data.test is optional (hftrain eval --split test)
        for attr in ("images", "labels"):
            value = getattr(split, attr)
            if recipe.data.format == "hf" and attr == "images" and value is not None and not _looks_local(value):
                continue  # a Hub dataset id (load_dataset says when it cannot be had)
            if value is not None and not Path(value).exists():
                problems.append(f"data.{split_name}.{attr}: path {value} does not exist")
        if split.images is None:
            problems.append(f"data.{split_name}.images: not set")
    if recipe.model.pretrained and _looks_local(recipe.model.pretrained) and not Path(recipe.model.pretrained).exists():
        problems.append(f"model.pretrained: local path {recipe.model.pretrained} does not exist")
    return problems


def _looks_local(name: str) -> bool:
    return name.startswith((".", "/", "~")) or name.count("/") > 1


# ---------------------------------------------------------------------------- saving
