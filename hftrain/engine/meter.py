"""Every number the training loop counts, in one owner: the :class:`Meter`.

Per micro-batch: the time waiting for data (``t_load``) and computing (``t_step``), images and
augmentation-dropped boxes, and the loss as a device tensor (:meth:`Meter.add_loss`: the host does
not wait for it); per optimizer step: the micro-batches' losses read as numbers in the step's one
host transfer (:meth:`hftrain.health.guard.NonFiniteGuard.verdict`), the gradient norm before
clipping and whether clipping cut it, or that fp16's grad scaler skipped the step (overflow: neither
clipped nor a gradient norm). It sums them per optimizer step, per ``log.interval`` window
and per epoch, and keeps the statistics the seed documents judge a run by: is the loss falling,
flat or oscillating?

Per optimizer step the loop adds the step's mean loss (over its micro-batches, this process),
the total gradient norm before clipping and whether clipping cut it. Over the last
``log.loss_window`` steps and over the epoch: loss mean and variance, the trend (least-squares
slope of the loss per optimizer step: negative is falling, about 0 is flat), the fraction of
steps clipped and the mean and largest gradient norm before clipping. Non-finite losses (see
:mod:`hftrain.health.guard`) are counted, not averaged in.
"""

from __future__ import annotations

import math
from collections import deque

import numpy as np
import torch


def slope(values) -> float:
    """Least-squares slope of ``values`` against their index (0 for fewer than two values)."""
    y = np.asarray(values, dtype=np.float64)
    if len(y) < 2:
        return 0.0
    x = np.arange(len(y), dtype=np.float64)
    x -= x.mean()
    return float((x * (y - y.mean())).sum() / (x * x).sum())


def summarise(losses, norms, clipped, prefix: str) -> dict:
    losses = list(losses)
    out = {
        f"loss_mean_{prefix}": float(np.mean(losses)) if losses else float("nan"),
        f"loss_var_{prefix}": float(np.var(losses)) if losses else float("nan"),
        f"loss_slope_{prefix}": slope(losses),
        f"clipped_fraction_{prefix}": float(np.mean(clipped)) if len(clipped) else 0.0,
        f"grad_norm_mean_{prefix}": float(np.mean(norms)) if len(norms) else float("nan"),
        f"grad_norm_max_{prefix}": float(np.max(norms)) if len(norms) else float("nan"),
    }
    return out


WINDOW_SUMS = ("loss", "t_load", "t_step", "micro", "clipped", "syncs", "images", "boxes_dropped", "overflow")


class Meter:
    def __init__(self, window: int):
        self.window = window
        self.recent = deque(maxlen=window)
        self.recent_norms = deque(maxlen=window)
        self.recent_clipped = deque(maxlen=window)
        self.start_epoch()
        self.pending: list = []  # this optimizer step's micro-batch losses, device tensors not read yet
        self.last_loss = math.nan  # the last optimizer step's mean loss (the progress bar's figure)

    def start_epoch(self) -> None:
        self.epoch_losses: list[float] = []
        self.epoch_norms: list[float] = []
        self.epoch_clipped: list[bool] = []
        self.nonfinite = 0
        self.overflows = 0
        self.epoch_loss, self.epoch_micro = 0.0, 0
        self.sums = dict.fromkeys(WINDOW_SUMS, 0)  # since the last log.interval line (or the epoch's start)

    @property
    def epoch_mean(self) -> float:
        """Mean micro-batch loss of the epoch so far (the progress bar's figure)."""
        return self.epoch_loss / max(1, self.epoch_micro)

    def add_micro(self, t_load: float = 0.0, t_step: float = 0.0, images: int = 0, boxes_dropped: int = 0) -> None:
        for key, value in (("t_load", t_load), ("t_step", t_step), ("micro", 1), ("images", images),
                           ("boxes_dropped", boxes_dropped)):
            self.sums[key] += value

    def add_loss(self, loss) -> None:
        """A micro-batch's loss (a detached device tensor), read with the optimizer step's other figures."""
        self.pending.append(loss)

    def drop_losses(self) -> None:
        """Forget this optimizer step's losses (an out-of-memory error: the step is redone)."""
        self.pending = []

    def take_losses(self):
        """This optimizer step's micro-batch losses as one device tensor (then forgotten here)."""
        losses, self.pending = self.pending, []
        return torch.stack([loss.float().reshape(()) for loss in losses])

    def end_step(self, losses: list[float], grad_norm: float, clipped: bool, overflow: bool = False) -> None:
        """Close an optimizer step with its micro-batches' ``losses``; ``last_loss`` is their mean (a
        non-finite one included: the step record shows it). ``overflow``: fp16's grad scaler skipped
        the step (its gradient norm is infinite by definition: neither averaged nor counted as clipped)."""
        finite = [loss for loss in losses if math.isfinite(loss)]
        self.sums["loss"] += sum(losses)
        self.epoch_loss, self.epoch_micro = self.epoch_loss + sum(losses), self.epoch_micro + len(losses)
        self.nonfinite += len(losses) - len(finite)
        self.sums["syncs"] += 1
        self.last_loss = sum(losses) / max(1, len(losses))
        if finite:
            self.recent.append(sum(finite) / len(finite))
            self.epoch_losses.append(sum(finite) / len(finite))
        if overflow:
            self.sums["overflow"] += 1
            self.overflows += 1
            return
        self.sums["clipped"] += int(clipped)
        if math.isfinite(grad_norm):
            self.recent_norms.append(grad_norm)
            self.epoch_norms.append(grad_norm)
        self.recent_clipped.append(bool(clipped))
        self.epoch_clipped.append(bool(clipped))

    def take_window(self) -> dict:
        """The sums since the last call (the ``log.interval`` window), then start a new window."""
        sums, self.sums = self.sums, dict.fromkeys(WINDOW_SUMS, 0)
        return sums

    def window_summary(self) -> dict:
        return summarise(self.recent, self.recent_norms, self.recent_clipped, "window")

    def epoch_summary(self) -> dict:
        return {**summarise(self.epoch_losses, self.epoch_norms, self.epoch_clipped, "epoch"),
                "nonfinite_losses_epoch": self.nonfinite, "overflow_steps_epoch": self.overflows}

    @staticmethod
    def line(summary: dict, scope: str) -> str:
        return (f"loss var {summary[f'loss_var_{scope}']:.3g} slope {summary[f'loss_slope_{scope}']:+.3g}/step | "
                f"clipped {100 * summary[f'clipped_fraction_{scope}']:.0f}% | "
                f"grad norm (pre-clip) mean {summary[f'grad_norm_mean_{scope}']:.3g} "
                f"max {summary[f'grad_norm_max_{scope}']:.3g}")
