"""``hftrain eval RUN_DIR``: evaluate a finished run's weights on its recipe's validation split, or on any
split the data section can describe (``--split train|val|test``, ``--data data.KEY=VALUE ...`` overrides),
with the same data path, model builder and evaluation as training. Writes ``eval_WEIGHTS[_NAME].json``
(the metrics, per-class AP included) and ``predictions_WEIGHTS[_NAME].json``, a COCO results file
(``image_id``, ``category_id``, ``bbox`` xywh, ``score``) in the evaluated dataset's own image and category
ids, and in ``eval_WEIGHTS[_NAME]_plots/`` the confusion matrix and the F1 / precision / recall against
confidence curves (``hftrain.report.confusion_plots``). NAME: the split (none for val), ``data`` with --data
overrides, or ``--name``. The matrix is at ``eval.confusion_threshold``, else at the weights' saved
``hftrain_score_threshold`` (what a user of the model gets), else at this evaluation's recommendation; the
saved weights are left as they are."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

from accelerate import Accelerator
from transformers.utils import logging as hf_logging

from hftrain.metrics.coco_eval import CocoEvaluator, predictions_to_coco
from hftrain.metrics.confusion import ConfusionEvaluator
from hftrain.data.loader import (DetectionDataset, load_data, make_eval_loader, make_resize, materialise_synthetic,
                                 read_split, source_category_ids)
from hftrain.data.schema import class_names_of
from hftrain.models.registry import build_model
from hftrain.recipe import RecipeError, RUN_ONLY, load_recipe, missing_paths
from hftrain.report import confusion_plots, plots
from hftrain.report.runlog import RunLog
from hftrain.engine import process_exit
from hftrain.engine.accelerator import resolve_precision, use_cpu
from hftrain.engine.evaluation import predict, score
from hftrain.models.inputs import Normalize
from hftrain.metrics.voc_eval import VocEvaluator
from hftrain.data.schema import class_names_of_id2label

SPLITS = ("train", "val", "test")


def model_class_names(weights: Path) -> list[str]:
    """The class names of a saved model, in label order (its config.json's ``id2label``)."""
    config = json.loads((weights / "config.json").read_text())
    return class_names_of_id2label(config["id2label"])


def check_classes(model_names: list[str], data_names: list[str], model_where, data_where: str) -> None:
    """The evaluated data must name the model's classes, in the model's order."""
    if model_names == data_names:
        return
    missing = [n for n in model_names if n not in data_names]
    extra = [n for n in data_names if n not in model_names]
    detail = (f"only in the model: {missing}; only in the data: {extra}" if missing or extra
              else "the same names in another order")
    raise ValueError(f"{data_where}: classes {data_names} do not match the model's ({model_where}) {model_names}: {detail}")


def evaluate_run(run_dir: str | Path, weights: str = "best", split: str = "val", data_overrides=(),
                 name: str | None = None) -> dict:
    """Evaluate a run's ``best/`` (or ``model/``) weights on its recipe's ``split`` (train, val or test),
    after ``data_overrides`` (``data.KEY=VALUE``, as training's overrides) are applied to the recipe."""
    hf_logging.disable_progress_bar()
    run_dir = Path(run_dir)
    recipe_path = run_dir / "recipe.yaml"
    if not recipe_path.is_file():
        raise FileNotFoundError(f"{run_dir}: no recipe.yaml (is this a run directory?)")
    source = run_dir / weights
    if not source.is_dir():
        raise FileNotFoundError(f"{run_dir}: no {weights}/ directory; train first or pass another weights dir")
    if split not in SPLITS:
        raise ValueError(f"--split: {split!r} is not one of {list(SPLITS)}")
    data_overrides = list(data_overrides)
    if bad := [o for o in data_overrides if not o.startswith("data.")]:
        raise ValueError(f"--data: {bad}: only keys of the recipe's data section (data.KEY=VALUE)")
    recipe = load_recipe(recipe_path, data_overrides + list(RUN_ONLY), check_paths=False)  # only the evaluated split must exist
    generated = recipe.data.synthetic is not None and split in ("train", "val")  # the shapes demo writes these
    if not generated and split != "val" and getattr(recipe.data, split).images is None:
        raise ValueError(f"data.{split}: not set in {recipe_path}; describe it with --data data.{split}.images=... "
                         f"data.{split}.labels=...")
    reading = ("train", "val") if split == "val" else (split,)  # val: read with train (data.val.from_train)
    if problems := [p for p in missing_paths(recipe) if p.startswith(tuple(f"data.{s}." for s in reading))]:
        raise RecipeError(problems, str(recipe_path))
    suffix = name or (split if split != "val" else "data" if data_overrides else None)
    tag = f"{weights}_{suffix}" if suffix else weights
    recipe = replace(recipe, model=replace(recipe.model, pretrained=str(source), config={}))
    accelerator = Accelerator(cpu=use_cpu(), mixed_precision=resolve_precision(recipe.precision.mode))
    data_cfg = materialise_synthetic(recipe.data)
    if split == "val":
        data = load_data(data_cfg, seed=recipe.train.seed)
        dataset, class_names, category_ids = data.val, data.class_names, data.category_ids
    else:  # one split, read as training reads val
        # train: without the images data.val.from_train holds out, as training read it
        loaded = read_split(data_cfg, split, hold_out=data_cfg.val.from_train if split == "train" else None)
        class_names = class_names_of(loaded.dataset)
        dataset = DetectionDataset(loaded, make_resize(data_cfg), hflip=0.0)
        category_ids = source_category_ids(loaded.report.category_ids, class_names)
    check_classes(model_class_names(source), class_names, source, f"data.{split}")
    detector = build_model(recipe.model, class_names, fp32_criterion=recipe.precision.fp32_criterion)
    loader = make_eval_loader(dataset, recipe.eval.batch_size or recipe.train.batch_size, recipe.data,
                              recipe.train.seed, detector)
    model, loader = accelerator.prepare(detector.model, loader)
    if accelerator.num_processes > 1:  # holds the process group: never freed (hftrain.engine.process_exit)
        process_exit.keep_until_exit(model, accelerator)
    normalize = Normalize(detector.image_mean, detector.image_std, accelerator.device)
    evaluator = CocoEvaluator(dataset.rows, class_names, recipe.eval.backend) if accelerator.is_main_process else None
    voc_evaluator = VocEvaluator(dataset.rows, class_names) if recipe.eval.voc and accelerator.is_main_process else None
    threshold, threshold_from = recipe.eval.confusion_threshold, "eval.confusion_threshold"  # the matrix's
    if threshold is None and getattr(detector.model.config, "hftrain_score_threshold", None) is not None:
        threshold, threshold_from = detector.model.config.hftrain_score_threshold, \
            f"{weights}/config.json hftrain_score_threshold"
    confusion = ConfusionEvaluator(evaluator.gt_dict, class_names, threshold, source=threshold_from) \
        if accelerator.is_main_process else None
    predictions = predict(model, loader, accelerator, detector, normalize, recipe.eval.max_detections)
    metrics = score(predictions, accelerator, evaluator, voc_evaluator, confusion)
    log = RunLog(run_dir, accelerator.is_main_process)
    log.print(f"evaluated {source} on {len(dataset)} images of data.{split} ({dataset.image_root})"
              + (f" with {' '.join(data_overrides)}" if data_overrides else ""))
    log.metrics_table(f"{source} on data.{split}", metrics)
    log.print("AP per class: " + ", ".join(f"{n} {metrics.get(f'ap_{n}', float('nan')):.4f}" for n in class_names))
    if recipe.eval.voc:
        log.print(f"VOC AP@0.5: VOC07 11-point mAP {metrics['voc07_map']:.4f}, all-point mAP {metrics['voc_map']:.4f}")
    if accelerator.is_main_process:
        (run_dir / f"eval_{tag}.json").write_text(json.dumps(metrics, indent=1))
        # a COCO results file, in the dataset's own category ids where it has them (COCO, hf)
        results = predictions_to_coco(predictions, category_ids)
        (run_dir / f"predictions_{tag}.json").write_text(json.dumps(results))
        log.print(f"metrics: {run_dir / f'eval_{tag}.json'}; predictions: {run_dir / f'predictions_{tag}.json'} "
                  f"({len(results)} detections, category ids "
                  + ("the dataset's own)" if category_ids is not None else "= class indices)"))
        plots_dir = run_dir / f"eval_{tag}_plots"  # the confusion matrix and the confidence curves
        confusion_plots.write_confusion_plots(confusion.last, plots_dir, plots.available() is None)
        log.print(confusion.last.describe(), f"confusion matrix and F1 / precision / recall curves: {plots_dir}")
    return metrics


def eval_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="hftrain eval", description="Evaluate a run's weights on a split of its "
                                     "recipe's data section, or on another dataset described with --data.")
    parser.add_argument("run_dir", help="run directory (holds recipe.yaml and best/)")
    parser.add_argument("--weights", default="best", help="weights directory inside the run: best or model")
    parser.add_argument("--split", default="val", choices=SPLITS,
                        help="which split of the recipe's data section: train, val (default) or test (data.test)")
    parser.add_argument("--data", nargs="+", default=[], metavar="data.KEY=VALUE",
                        help="overrides of the recipe's data section, e.g. data.test.images=DIR data.test.labels=FILE")
    parser.add_argument("--name", default=None,
                        help="suffix of the output files (default: the split; 'data' for val with --data)")
    args = parser.parse_args(argv)
    try:
        evaluate_run(args.run_dir, args.weights, args.split, args.data, args.name)
    except (FileNotFoundError, ValueError, RecipeError) as err:
        print(f"hftrain eval: {err}", file=sys.stderr)
        return process_exit.exit_process(2)
    return process_exit.exit_process(0)
