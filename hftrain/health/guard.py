"""The non-finite guard (``guard.nonfinite``): what happens to a step whose loss or gradients hold NaN/Inf.

- ``skip``: the step is dropped: no optimizer update, gradients cleared, the step counted and logged
  (its slot in the learning-rate schedule is used up, so the schedule stays aligned with the data).
- ``rollback``: bad steps are skipped as above; after ``guard.consecutive`` bad steps in a row the
  last good checkpoint is reloaded (model, optimizer, scheduler, data position), the learning rate
  is multiplied by ``guard.lr_factor`` (for the rest of the run: the factor composes with each
  phase's peak and is saved in checkpoints, so a phase change or a resume keeps it) and training
  goes on; the rollback after ``guard.max_rollbacks`` rollbacks aborts instead.
- ``abort``: the first bad step stops the run (:class:`NonFiniteAbort`).

Every event goes to the console, to ``metrics.jsonl`` (type ``nonfinite``) and to
``nonfinite_report.json`` in the run directory, naming the step, the loss terms that were not finite
(in the order the model reports them; the first is the one to look at) and, with debug hooks
(``debug: true``), the first module whose output held NaN/Inf.

The loop calls :meth:`NonFiniteGuard.observe` after every forward (device-side flags, no host
sync) and :meth:`NonFiniteGuard.verdict` once per optimizer step, before the update. That is the
step's one host transfer: the flags (summed over processes so that every process takes the same
decision, with the stop signal's flag, :mod:`hftrain.health.preemption`), the gradient norm and
the step's micro-batch losses come back together as a :class:`Reading`. With fp16 mixed precision
the grad scaler already skips steps with non-finite gradients (that is how it calibrates), so only
a non-finite loss counts there.
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch


class NonFiniteAbort(RuntimeError):
    """The run stopped on a non-finite loss or gradient (``guard.nonfinite: abort``, or too many rollbacks)."""


@dataclass
class Reading:
    """What the host learns at the end of an optimizer step, in one transfer."""

    verdict: str  # ok | skip | rollback
    grad_norm: float = math.nan  # before clipping
    losses: list[float] = field(default_factory=list)  # this process's micro-batch losses in the step
    stop: bool = False  # a stop signal reached some process: every process stops at this step


class NonFiniteGuard:
    def __init__(self, cfg, run_dir: Path, log, count_gradients: bool = True, hooks=None):
        self.cfg = cfg
        self.report_path = Path(run_dir) / "nonfinite_report.json"
        self.log = log
        self.count_gradients = count_gradients
        self.hooks = hooks  # debug.NonFiniteHooks when debug mode is on
        self.events: list[dict] = []
        self.consecutive = 0
        self.skipped = 0
        self._reset_window()

    def _reset_window(self) -> None:
        self.loss_bad = None  # device tensor: count of micro-batches with a non-finite loss
        self.predictions_bad = None  # device tensor: non-finite values the model's predictions brought to the loss
        self.term_names: list[str] = []
        self.terms_bad = None  # device tensor: per term, micro-batches where it was non-finite

    def protect_loss(self, model) -> None:
        """Wrap ``model.loss_function`` so that non-finite predictions reach it as zeros (transformers'
        matcher and GIoU raise on NaN boxes) while the loss itself becomes NaN: the step is then
        handled by the guard, and reported as "non-finite predictions" rather than a crash."""
        original = model.loss_function

        def loss_function(*args, **kwargs):
            found = []

            def clean(value):
                if torch.is_tensor(value) and value.is_floating_point():
                    found.append((~torch.isfinite(value.detach())).sum())
                    return torch.nan_to_num(value, nan=0.0, posinf=0.0, neginf=0.0)
                if isinstance(value, dict):
                    return type(value)((k, clean(v)) for k, v in value.items())
                if isinstance(value, (list, tuple)):
                    return type(value)(clean(v) for v in value)
                return value

            args, kwargs = clean(args), clean(kwargs)
            result = original(*args, **kwargs)
            if found:
                bad = torch.stack(found).sum()
                self.predictions_bad = bad if self.predictions_bad is None else self.predictions_bad + bad
                poison = torch.where(bad > 0, torch.full_like(result[0], float("nan")), torch.zeros_like(result[0]))
                result = (result[0] + poison, *result[1:])
            return result

        functools.update_wrapper(loss_function, original)
        model.loss_function = loss_function

    # -- per micro-batch, no host sync
    def observe(self, outputs) -> None:
        loss = outputs.loss.detach()
        bad = (~torch.isfinite(loss)).float()
        self.loss_bad = bad if self.loss_bad is None else self.loss_bad + bad
        terms = {k: v for k, v in (getattr(outputs, "loss_dict", None) or {}).items() if torch.is_tensor(v)}
        if terms:
            flags = torch.stack([(~torch.isfinite(v.detach().float())).any().float() for v in terms.values()])
            if self.terms_bad is None or list(terms) != self.term_names:
                self.term_names, self.terms_bad = list(terms), flags
            else:
                self.terms_bad = self.terms_bad + flags

    # -- once per optimizer step, before the update
    def verdict(self, grad_norm, state, accelerator, losses=None, stop: bool = False) -> Reading:
        """The step's :class:`Reading`, with the verdict ``ok``, ``skip`` or ``rollback``; raises
        NonFiniteAbort for ``abort``. ``losses``: the micro-batch losses (one device tensor) to read
        in the same transfer; ``stop``: this process received a stop signal."""
        device = accelerator.device
        loss_bad = self.loss_bad if self.loss_bad is not None else torch.zeros((), device=device)
        norm = torch.as_tensor(grad_norm, device=device).float().reshape(())
        grad_bad = (~torch.isfinite(norm)).float()
        if not self.count_gradients:
            grad_bad = torch.zeros_like(grad_bad)
        flags = torch.stack([loss_bad.to(device).reshape(()), grad_bad, torch.full((), float(stop), device=device)])
        if accelerator.num_processes > 1:
            flags = accelerator.reduce(flags, "sum")
        mine = [norm.reshape(1)] + ([losses.to(device).float().reshape(-1)] if losses is not None else [])
        loss_count, grad_count, stops, norm_value, *loss_values = torch.cat([flags, *mine]).tolist()  # the one sync
        reading = Reading("ok", norm_value, loss_values, stops > 0)
        if loss_count == 0 and grad_count == 0:
            self.consecutive = 0
            self._reset_window()
            if self.hooks is not None:
                self.hooks.clear()
            return reading
        event = self._event(state, loss_count, grad_count, norm_value)
        self._reset_window()
        self.consecutive += 1
        self.skipped += 1
        mode = self.cfg.nonfinite
        if mode == "abort":
            self._finish(event, "abort", state)
            raise NonFiniteAbort(self._message(event, "abort"))
        if mode == "rollback" and self.consecutive >= self.cfg.consecutive:
            if state.rollbacks >= self.cfg.max_rollbacks:
                self._finish(event, "abort after rollbacks", state)
                raise NonFiniteAbort(self._message(event, f"abort: {state.rollbacks} rollbacks did not help "
                                                          f"(guard.max_rollbacks={self.cfg.max_rollbacks})"))
            self._finish(event, "rollback", state)
            reading.verdict = "rollback"
            return reading
        self._finish(event, "skip", state)
        reading.verdict = "skip"
        return reading

    def _event(self, state, loss_count: float, grad_count: float, grad_norm: float) -> dict:
        terms = []
        if self.terms_bad is not None:
            terms = [name for name, bad in zip(self.term_names, self.terms_bad.tolist()) if bad > 0]
        predictions = int(self.predictions_bad.item()) if self.predictions_bad is not None else 0
        module = self.hooks.first_nonfinite() if self.hooks is not None else None
        if self.hooks is not None:
            self.hooks.clear()
        return {
            "step": state.step + 1, "epoch": state.epoch,
            "loss_nonfinite": loss_count > 0, "gradients_nonfinite": grad_count > 0,
            "grad_norm": grad_norm if math.isfinite(grad_norm) else str(grad_norm),
            "terms": terms, "nonfinite_prediction_values": predictions, "module": module,
            "consecutive": self.consecutive + 1,
        }

    def _message(self, event: dict, outcome: str) -> str:
        what = []
        if event["loss_nonfinite"]:
            what.append("loss")
        if event["gradients_nonfinite"]:
            what.append("gradients")
        terms = ", ".join(event["terms"]) if event["terms"] else "none of the loss terms"
        if event["nonfinite_prediction_values"]:
            terms += (f" (the model's predictions held {event['nonfinite_prediction_values']} non-finite values "
                      f"before the loss)")
        module = event["module"] or "unknown (set debug: true to hook every module)"
        return (f"non-finite {' and '.join(what)} at step {event['step']} (epoch {event['epoch']}): "
                f"non-finite loss terms: {terms}; first module with NaN/Inf output: {module}; "
                f"{event['consecutive']} bad step(s) in a row -> {outcome}")

    def _finish(self, event: dict, outcome: str, state) -> None:
        event["outcome"] = outcome
        self.events.append(event)
        self.log.print(f"[guard] {self._message(event, outcome)}")
        self.log.record("nonfinite", {k: v for k, v in event.items() if k != "step"}, event["step"])
        self.write_report(state)

    def write_report(self, state) -> None:
        if not self.log.enabled:
            return
        report = {
            "mode": self.cfg.nonfinite, "skipped_steps": self.skipped, "rollbacks": state.rollbacks,
            "lr_scale": state.lr_scale, "events": self.events,
        }
        self.report_path.parent.mkdir(parents=True, exist_ok=True)
        self.report_path.write_text(json.dumps(report, indent=2))

    # -- rollback
    def rolled_back(self, source, saved_step: int, state, optimizer, log) -> None:
        """The loop reloaded checkpoint ``source`` (at ``saved_step``): count the rollback, lower
        ``state.lr_scale`` (the loop applies it to the phase's peak), drop the partial gradients and
        say so. ``state`` (the loop's LoopState) keeps the scale and the count in checkpoints."""
        state.rollbacks += 1
        self.consecutive = 0
        state.lr_scale *= self.cfg.lr_factor
        optimizer.zero_grad(set_to_none=True)
        self.events[-1]["rolled_back_to"] = str(source)
        self.write_report(state)
        log.print(f"[guard] rollback {state.rollbacks}/{self.cfg.max_rollbacks}: reloaded {source} "
                  f"(step {saved_step}); learning rate x{state.lr_scale:g} from now on")
        log.record("rollback", {"checkpoint": str(source), "lr_scale": state.lr_scale,
                                "rollbacks": state.rollbacks}, saved_step)

    def summary(self) -> str | None:
        """One line for the end of the run, or None when nothing happened."""
        if not self.events:
            return None
        rollbacks = sum(event.get("outcome") == "rollback" for event in self.events)
        return (f"[guard] {self.skipped} non-finite step(s) dropped, {rollbacks} rollback(s); "
                f"first at step {self.events[0]['step']} (terms: {', '.join(self.events[0]['terms']) or 'none'}); "
                f"report: {self.report_path}")
