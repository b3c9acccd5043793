"""Evaluation during training: COCO metrics (and VOC AP) over the validation loader, gathered from
every process, the confusion matrix and the recommended score threshold (``hftrain_score_threshold``
in the saved config), and ``best/`` kept at the epoch with the best ``checkpoint.best_metric``."""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING

from pathlib import Path

import torch
from accelerate.utils import broadcast_object_list

from hftrain.engine import publish
from hftrain.metrics.coco_eval import CocoEvaluator
from hftrain.metrics.confusion import ConfusionEvaluator
from hftrain.metrics.voc_eval import VocEvaluator
from hftrain.models.inputs import model_inputs

if TYPE_CHECKING:  # annotations only
    from hftrain.engine.state import Run


@torch.no_grad()
def predict(model, loader, accelerator, detector, normalize, max_detections: int) -> list[dict]:
    """Every image's best ``max_detections`` detections (absolute xyxy boxes clipped to the image),
    gathered from every process, one entry per image id."""
    model.eval()
    predictions = []
    for batch in loader:
        outputs = model(**model_inputs(batch, normalize, detector.uses_pixel_mask))
        results = detector.postprocess(outputs, batch["target_sizes"])
        keeps = [r["scores"].float().argsort(descending=True)[:max_detections] for r in results]
        counts = [len(keep) for keep in keeps]  # shapes: known on the host
        rows = torch.cat([torch.cat([r["boxes"][k].float(), r["scores"][k, None].float(), r["labels"][k, None].float()], 1)
                          for r, k in zip(results, keeps)])
        limits = batch["orig_sizes"].to(rows.device).flip(1).repeat(1, 2).float().repeat_interleave(
            torch.tensor(counts, device=rows.device), dim=0)
        rows[:, :4] = torch.minimum(rows[:, :4].clamp(min=0), limits)  # xyxy clipped to the image (w, h, w, h), on the device
        rows, local = rows.cpu().tolist(), []  # the batch's one device-to-host transfer
        for image_id, end, count in zip(batch["image_ids"].tolist(), itertools.accumulate(counts), counts):
            mine = rows[end - count:end]
            local.append({"image_id": image_id, "boxes": [r[:4] for r in mine], "scores": [r[4] for r in mine],
                          "labels": [int(r[5]) for r in mine]})
        predictions.extend(accelerator.gather_for_metrics(local, use_gather_object=True))
    # an image that failed to decode was replaced by another: keep each image's first prediction
    predictions = list({p["image_id"]: p for p in reversed(predictions)}.values())[::-1]
    model.train()
    return predictions


def score(predictions: list[dict], accelerator, evaluator: CocoEvaluator | None,
          voc_evaluator: VocEvaluator | None = None, confusion: ConfusionEvaluator | None = None) -> dict:
    """COCO metrics (and VOC AP with a ``voc_evaluator``; ``f1_50`` and ``f1_threshold``, the recommended
    score threshold, with ``confusion``), computed on the main process, given to all."""
    metrics = [evaluator.evaluate(predictions) if accelerator.is_main_process else None]
    if voc_evaluator is not None and accelerator.is_main_process:  # eval.voc: VOC07 11-point and all-point AP@0.5
        metrics[0].update(voc_evaluator.evaluate(predictions))
    if confusion is not None and accelerator.is_main_process:  # confusion matrix, F1 against confidence at IoU 0.5
        metrics[0].update(confusion.evaluate(predictions))
    broadcast_object_list(metrics, from_process=0)
    return metrics[0]


def set_score_threshold(detector, metrics: dict) -> None:
    """The recommended score threshold (``f1_threshold``) as ``hftrain_score_threshold`` on the config
    that ``best/`` and ``model/`` save (``pipeline(..., threshold=config.hftrain_score_threshold)``);
    removed when this evaluation recommends none, so no earlier evaluation's value is saved."""
    config, value = detector.model.config, metrics.get("f1_threshold", -1.0)
    if value >= 0:
        config.hftrain_score_threshold = float(value)
    elif hasattr(config, "hftrain_score_threshold"):
        del config.hftrain_score_threshold


def update_best(run, metrics: dict, export, epoch: int) -> None:
    """Keep ``best/`` (the weights of ``export``, with its model card) at the epoch with the best
    ``checkpoint.best_metric``; with ``hub.push_best``, upload it each time."""
    key, best = run.recipe.checkpoint.best_metric, run.state.best
    if key not in metrics:
        raise KeyError(f"checkpoint.best_metric: {key!r} is not an evaluation metric ({sorted(metrics)})")
    value = metrics[key]
    better = best is None or (value > best if run.recipe.checkpoint.best_mode == "max" else value < best)
    run_dir = Path(run.recipe.output_dir)
    if better:  # written by the main process; a failed write stops every process, the previous best/ intact
        info = publish.model_info(run, epoch, metrics, **{key: value})  # hftrain_info.json; README.md: the model card
        publish.save_model(run, export, run_dir / "best", info)
        run.log.print(f"new best {key} {value:.4f} at epoch {epoch}: {run_dir / 'best'}")
        run.state.best = value
        if run.recipe.hub.push_best:  # hub.push_best: upload each new best/ (a failure is logged; training goes on)
            publish.push_model(run, run_dir / "best")


def evaluate_epoch(run: Run, epoch: int) -> dict:
    """Evaluate (the EMA's weights with ema.enabled), log the table, draw, keep ``best/``."""
    recipe, log = run.recipe, run.log
    model = run.state.ema.module if run.state.ema else run.model  # ema: the averaged weights are evaluated
    predictions = predict(model, run.val_loader, run.accelerator, run.detector, run.normalize, recipe.eval.max_detections)
    metrics = score(predictions, run.accelerator, run.evaluator, run.voc_evaluator, run.confusion)
    log.record("eval", {"epoch": epoch, **metrics}, run.state.step)
    log.metrics_table(f"epoch {epoch} validation", metrics)
    log.print(f"epoch {epoch} {recipe.checkpoint.best_metric} (headline): "
              f"{metrics.get(recipe.checkpoint.best_metric, float('nan')):.4f}")
    run.pictures.after_eval(epoch, run.state.step, run.evaluator, run.confusion)  # results.csv, plots/ (background)
    if recipe.eval.voc:
        log.print(f"VOC AP@0.5: VOC07 11-point mAP {metrics['voc07_map']:.4f}, all-point mAP {metrics['voc_map']:.4f}")
    if run.confusion is not None:  # main process: the recommended threshold and the confusion matrix's counts
        log.print(f"epoch {epoch} {run.confusion.last.describe()}")
    set_score_threshold(run.export, metrics)  # hftrain_score_threshold: saved with best/ and model/
    update_best(run, metrics, run.export, epoch)
    return metrics
