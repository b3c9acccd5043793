"""``hftrain eval RUN_DIR``: evaluate a finished run's weights on its recipe's validation split,
with the same data path, model builder and evaluation as training. Writes ``eval_WEIGHTS.json``
(the metrics) and ``predictions_WEIGHTS.json``, a COCO results file (``image_id``,
``category_id``, ``bbox`` xywh, ``score``) in the dataset's own image and category ids, and in
``eval_WEIGHTS_plots/`` the confusion matrix and the F1 / precision / recall against confidence
curves (``hftrain.report.confusion_plots``). The matrix is at ``eval.confusion_threshold``, else
at the weights' saved ``hftrain_score_threshold`` (what a user of the model gets), else at this
evaluation's recommendation; the saved weights are left as they are."""

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
from hftrain.data.loader import load_data, make_eval_loader, materialise_synthetic
from hftrain.models.registry import build_model
from hftrain.recipe import load_recipe
from hftrain.report import confusion_plots, plots
from hftrain.report.runlog import RunLog
from hftrain.engine.accelerator import resolve_precision, use_cpu
from hftrain.engine.evaluation import predict, score
from hftrain.models.inputs import Normalize
from hftrain.metrics.voc_eval import VocEvaluator


def evaluate_run(run_dir: str | Path, weights: str = "best") -> dict:
    """Evaluate a run's ``best/`` (or ``model/``) weights on its recipe's validation split."""
    hf_logging.disable_progress_bar()
    run_dir = Path(run_dir)
    recipe_path = run_dir / "recipe.yaml"
    if not recipe_path.is_file():
        raise FileNotFoundError(f"{run_dir}: no recipe.yaml (is this a run directory?)")
    source = run_dir / weights
    if not source.is_dir():
        raise FileNotFoundError(f"{run_dir}: no {weights}/ directory; train first or pass another weights dir")
    recipe = load_recipe(recipe_path)
    recipe = replace(recipe, model=replace(recipe.model, pretrained=str(source), config={}))
    accelerator = Accelerator(cpu=use_cpu(), mixed_precision=resolve_precision(recipe.precision.mode))
    data = load_data(materialise_synthetic(recipe.data), seed=recipe.train.seed)
    detector = build_model(recipe.model, data.class_names, fp32_criterion=recipe.precision.fp32_criterion)
    loader = make_eval_loader(data.val, recipe.eval.batch_size or recipe.train.batch_size, recipe.data,
                              recipe.train.seed, detector)
    model, loader = accelerator.prepare(detector.model, loader)
    normalize = Normalize(detector.image_mean, detector.image_std, accelerator.device)
    evaluator = CocoEvaluator(data.val.rows, data.class_names, recipe.eval.backend) if accelerator.is_main_process else None
    voc_evaluator = VocEvaluator(data.val.rows, data.class_names) if recipe.eval.voc and accelerator.is_main_process else None
    threshold, threshold_from = recipe.eval.confusion_threshold, "eval.confusion_threshold"  # the matrix's
    if threshold is None and getattr(detector.model.config, "hftrain_score_threshold", None) is not None:
        threshold, threshold_from = detector.model.config.hftrain_score_threshold, \
            f"{weights}/config.json hftrain_score_threshold"
    confusion = ConfusionEvaluator(evaluator.gt_dict, data.class_names, threshold, source=threshold_from) \
        if accelerator.is_main_process else None
    predictions = predict(model, loader, accelerator, detector, normalize, recipe.eval.max_detections)
    metrics = score(predictions, accelerator, evaluator, voc_evaluator, confusion)
    log = RunLog(run_dir, accelerator.is_main_process)
    log.print(f"evaluated {source} on {len(data.val)} validation images")
    log.metrics_table(f"{source}", metrics)
    if recipe.eval.voc:
        log.print(f"VOC AP@0.5: VOC07 11-point mAP {metrics['voc07_map']:.4f}, all-point mAP {metrics['voc_map']:.4f}")
    if accelerator.is_main_process:
        (run_dir / f"eval_{weights}.json").write_text(json.dumps(metrics, indent=1))
        # a COCO results file, in the dataset's own category ids where it has them (COCO, hf)
        results = predictions_to_coco(predictions, data.category_ids)
        (run_dir / f"predictions_{weights}.json").write_text(json.dumps(results))
        log.print(f"predictions: {run_dir / f'predictions_{weights}.json'} ({len(results)} detections, category ids "
                  + ("the dataset's own)" if data.category_ids is not None else "= class indices)"))
        plots_dir = run_dir / f"eval_{weights}_plots"  # the confusion matrix and the confidence curves
        confusion_plots.write_confusion_plots(confusion.last, plots_dir, plots.available() is None)
        log.print(confusion.last.describe(), f"confusion matrix and F1 / precision / recall curves: {plots_dir}")
    return metrics


def eval_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="hftrain eval", description="Evaluate a run's best weights.")
    parser.add_argument("run_dir", help="run directory (holds recipe.yaml and best/)")
    parser.add_argument("--weights", default="best", help="weights directory inside the run: best or model")
    args = parser.parse_args(argv)
    try:
        evaluate_run(args.run_dir, args.weights)
    except FileNotFoundError as err:
        print(f"hftrain eval: {err}", file=sys.stderr)
        return 2
    return 0
