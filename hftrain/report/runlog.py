"""What a run tells the user: the console (header, progress bar, log lines, metric tables),
``metrics.jsonl`` in the run directory, and the trackers of ``log.trackers`` (TensorBoard, MLflow, W&B...)
through Accelerate (``accelerator.log``: the same scalars to every tracker).

``train.log`` in the run directory gets what the console shows as plain text (no colour codes),
appended line by line as it happens (``tail -f RUN/train.log`` follows a run); each epoch's
progress bar is written once, in its final state.

Only the main process writes or prints; the other processes' RunLog does nothing.
"""

from __future__ import annotations

import functools
import io
import json
import re
import sys
import threading
import time
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

from hftrain.metrics.coco_eval import TABLE


class RunLog:
    def __init__(self, run_dir: Path, enabled: bool, accelerator=None):
        self.run_dir = Path(run_dir)
        self.enabled = enabled
        self.accelerator = accelerator
        # not a terminal (CI logs, redirected output): wide enough that progress lines never wrap
        self.console = Console(highlight=False, width=None if sys.stdout.isatty() else 160)
        self.start = time.time()
        self.progress: Progress | None = None
        self.memory = ""  # the progress bar's memory figure (set_memory)
        self.log_lock = threading.Lock()  # pictures are drawn (and report failures) on another thread
        if enabled:
            self.run_dir.mkdir(parents=True, exist_ok=True)

    def print(self, *lines: str) -> None:
        if self.enabled:
            for line in lines:
                self.console.print(line, markup=False, soft_wrap=True)
            self.append_log("".join(f"{line}\n" for line in lines))

    def append_log(self, text: str) -> None:
        """Append plain text to ``train.log`` (opened per write, so every line is on disk at once)."""
        if self.enabled and text:
            with self.log_lock, open(self.run_dir / "train.log", "a") as handle:
                handle.write(text)

    def record(self, kind: str, values: dict, step: int) -> None:
        """Append one JSON object to metrics.jsonl and send the scalars to the trackers."""
        if not self.enabled:
            return
        entry = {"type": kind, "step": step, "time": round(time.time() - self.start, 3), **values}
        with open(self.run_dir / "metrics.jsonl", "a") as handle:
            handle.write(json.dumps(entry) + "\n")
        if self.accelerator is not None and self.accelerator.trackers:
            scalars = {tracker_key(f"{kind}/{k}"): v for k, v in values.items() if isinstance(v, (int, float))}
            self.accelerator.log(scalars, step=step)

    def truncate_after(self, step: int) -> None:
        """Drop metrics.jsonl records after ``step`` (and a torn last line): on resume, what the
        interrupted run logged after its last checkpoint is logged again by the resumed run."""
        path = self.run_dir / "metrics.jsonl"
        if not path.is_file():
            return
        kept = []
        for line in path.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if record.get("step", 0) <= step:
                kept.append(line)
        path.write_text("".join(line + "\n" for line in kept))

    def header(self, rows: list[tuple[str, str]]) -> None:
        if not self.enabled:
            return
        width = max(len(k) for k, _ in rows)
        self.print("=" * 72, "hftrain: training", "=" * 72)
        self.print(*(f"{k.ljust(width)} : {v}" for k, v in rows))
        self.print("=" * 72)

    def metrics_table(self, title: str, metrics: dict[str, float]) -> None:
        if not self.enabled:
            return
        table = Table(title=title)
        for label, _ in TABLE:
            table.add_column(label, justify="right")
        table.add_row(*(f"{metrics.get(key, float('nan')):.4f}" for _, key in TABLE))
        self.console.print(table)
        plain = Console(file=io.StringIO(), width=200, color_system=None, force_terminal=False, highlight=False)
        plain.print(table)
        self.append_log(plain.file.getvalue())

    # -- progress bar, one per epoch
    def start_epoch(self, epoch: int, total: int) -> None:
        if not self.enabled:
            return
        self.epoch = epoch
        self.progress = Progress(
            TextColumn(f"epoch {epoch}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]:.4f} (mean {task.fields[mean]:.4f}) lr {task.fields[lr]:.2e}"),
            TextColumn("{task.fields[memory]}"), SpeedColumn(), TimeRemainingColumn(),
            console=self.console, transient=False,
        )
        self.progress.start()
        self.task = self.progress.add_task("train", total=total, loss=0.0, mean=0.0, lr=0.0, memory=self.memory)

    def set_memory(self, text: str) -> None:
        """The progress bar's memory figure (GPU peak, or host resident memory), set on log lines."""
        self.memory = text
        if self.progress is not None:
            self.progress.update(self.task, memory=text)

    def advance(self, loss: float, mean: float, lr: float) -> None:
        if self.progress is not None:
            self.progress.update(self.task, advance=1, loss=loss, mean=mean, lr=lr)

    def end_epoch(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            task = self.progress.tasks[0]
            fields, speed = task.fields, task.finished_speed or task.speed
            self.append_log(
                f"epoch {self.epoch} {task.completed:.0f}/{task.total:.0f} "
                f"loss {fields['loss']:.4f} (mean {fields['mean']:.4f}) lr {fields['lr']:.2e} "
                + (f"{fields['memory']} " if fields.get("memory") else "") +
                f"{f'{speed:.2f}' if speed else '--'} it/s, {task.elapsed or 0.0:.1f}s\n"
            )
            self.progress = None


@functools.lru_cache(maxsize=1024)  # the same few dozen keys every step
def tracker_key(key: str) -> str:
    """A metrics.jsonl key as every tracker accepts it: characters other than letters, digits, ``_ - . /``
    and space (MLflow refuses them, e.g. in a class name of ``eval/ap_<class>``) become ``_``."""
    return re.sub(r"/{2,}", "/", re.sub(r"[^\w.\- /]", "_", key))


class SpeedColumn(ProgressColumn):
    """Iterations per second of the bar's task."""

    def render(self, task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed:.2f} it/s" if speed else "-- it/s")
