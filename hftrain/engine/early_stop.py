"""``train.early_stop``: end the run after ``patience`` evaluations in a row in which
``checkpoint.best_metric`` did not improve by more than ``min_delta``.

An evaluation improves when its value beats the *reference* (the value of the last improvement; the
first evaluation sets it) by more than ``min_delta`` in the direction of ``checkpoint.best_mode``;
gains smaller than ``min_delta`` do not move the reference, so they add up until they count. The
reference and the count live in :class:`hftrain.engine.state.LoopState` and every checkpoint's
trainer_state.json, so a resumed run stops at the evaluation an uninterrupted one would. Every
process decides alike: the metrics are broadcast from the main process.
"""

from __future__ import annotations

import math


def improved(value: float, reference: float | None, mode: str, min_delta: float) -> bool:
    """``value`` is an improvement on ``reference`` (None or NaN: anything that is a number is)."""
    if math.isnan(value):
        return False
    if reference is None or math.isnan(reference):
        return True
    return value > reference + min_delta if mode == "max" else value < reference - min_delta


def count(state, value: float, mode: str, min_delta: float) -> int:
    """Count one evaluation whose metric is ``value`` into ``state`` (``early_reference``,
    ``evals_without_improvement``); returns the evaluations in a row without improvement."""
    if improved(value, state.early_reference, mode, min_delta):
        state.early_reference, state.evals_without_improvement = value, 0
    else:
        state.evals_without_improvement += 1
    return state.evals_without_improvement


def should_stop(run, metrics: dict, epoch: int) -> bool:
    """Count this evaluation; when ``patience`` is reached, say so (log line and a metrics.jsonl record)
    and return True: the run then ends as at its last epoch (checkpoint, ``model/``), ``best/`` kept."""
    cfg, checkpoint = run.recipe.train.early_stop, run.recipe.checkpoint
    key = checkpoint.best_metric
    stale = count(run.state, float(metrics[key]), checkpoint.best_mode, cfg.min_delta)
    if stale < cfg.patience:
        return False
    run.log.print(f"early stop at epoch {epoch}: {key} has not improved by more than {cfg.min_delta:g} on "
                  f"{run.state.early_reference:.4f} for {stale} evaluations (train.early_stop.patience {cfg.patience}); "
                  f"best/ is kept (best {key} {run.state.best:.4f}), model/ gets this epoch's weights")
    run.log.record("early_stop", {"epoch": epoch, "evaluations_without_improvement": stale,
                                  "reference": run.state.early_reference, "best": run.state.best,
                                  "patience": cfg.patience, "min_delta": cfg.min_delta}, run.state.step)
    return True
