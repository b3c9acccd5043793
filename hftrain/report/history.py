"""A run's recorded history read back from ``metrics.jsonl``, and ``results.csv`` written from it.

``metrics.jsonl`` holds one JSON object per line with a ``type``: ``config`` (once per start),
``step`` (each optimizer step), ``train`` (every ``log.interval`` steps) and ``eval`` (each
evaluation). A resumed run appends to the same file; when it resumed from an earlier checkpoint
than the last records, the records it repeats (same or earlier steps, same epochs) supersede
the older ones, so every reader sees one consistent history.
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import yaml

METRICS_FILE = "metrics.jsonl"
RESULTS_FILE = "results.csv"
BOOKKEEPING = ("type", "step", "time", "epoch")
"""Fields of every record that are not measurements."""
STATISTIC_SUFFIXES = ("_window", "_epoch")
"""Suffixes of summary statistics in train records (``loss_var_window``), as opposed to loss terms."""


@dataclass
class RunHistory:
    run_dir: Path
    config: list[dict] = field(default_factory=list)
    step: list[dict] = field(default_factory=list)
    train: list[dict] = field(default_factory=list)
    eval: list[dict] = field(default_factory=list)
    oom: list[dict] = field(default_factory=list)
    """Out-of-memory recoveries (the memory plot marks them)."""
    recipe: dict = field(default_factory=dict)
    """The run's ``recipe.yaml`` as a plain dict (empty when the file is missing)."""
    wall_time: float = 0.0
    """Seconds the run took: each start (``config`` record) restarts the records' clock, so the
    last ``time`` of each start is summed (time spent on steps a resume repeated included)."""

    @property
    def name(self) -> str:
        return self.run_dir.name

    def series(self, kind: str, key: str, x: str = "step") -> tuple[list[float], list[float]]:
        """``(xs, ys)`` of the records of ``kind`` that have ``key``."""
        rows = [r for r in getattr(self, kind) if _number(r.get(key)) and _number(r.get(x))]
        return [r[x] for r in rows], [r[key] for r in rows]

    def eval_metrics(self) -> list[str]:
        """The evaluation's metric names in first-seen order (COCO statistics, then ``ap_<class>``)."""
        names: dict[str, None] = {}
        for record in self.eval:
            for key, value in record.items():
                if key not in BOOKKEEPING and _number(value):
                    names[key] = None
        return list(names)

    def loss_terms(self) -> list[str]:
        """The per-term losses of the train records (``loss_*``), first-seen order; statistics of the
        loss over a window or epoch (``loss_var_window`` ...) are not terms."""
        names: dict[str, None] = {}
        for record in self.train:
            for key in record:
                if key.startswith("loss_") and not key.endswith(STATISTIC_SUFFIXES):
                    names[key] = None
        return list(names)


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def read_history(run_dir: str | Path) -> RunHistory:
    """Read ``RUN_DIR/metrics.jsonl``. A torn last line (a run writing right now) is ignored; any
    other line that is not JSON is an error naming the file and line."""
    run_dir = Path(run_dir)
    path = run_dir / METRICS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir}: no {METRICS_FILE} (is this a run directory?)")
    lines = path.read_text().splitlines()
    history = RunHistory(run_dir)
    segment_end = 0.0
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError as err:
            if number == len(lines):
                break
            raise ValueError(f"{path}:{number}: not a JSON record ({err})") from None
        kind = record.get("type")
        if kind == "config":
            history.wall_time += segment_end
            segment_end = 0.0
        segment_end = max(segment_end, float(record.get("time", 0.0)))
        if kind not in ("config", "step", "train", "eval", "oom"):
            continue  # a record type this reader does not plot (other features may add some)
        records = getattr(history, kind)
        if kind in ("step", "train"):
            while records and records[-1]["step"] >= record["step"]:
                records.pop()  # a resume from an earlier checkpoint repeats these steps
        elif kind == "eval":
            while records and records[-1]["epoch"] >= record["epoch"]:
                records.pop()
        records.append(record)
    history.wall_time += segment_end
    recipe_path = run_dir / "recipe.yaml"
    if recipe_path.is_file():
        history.recipe = yaml.safe_load(recipe_path.read_text()) or {}
    return history


def write_results_csv(history: RunHistory, path: str | Path | None = None) -> Path:
    """One row per evaluation: epoch, step, time, then every metric (written atomically)."""
    path = Path(path) if path is not None else history.run_dir / RESULTS_FILE
    columns = ["epoch", "step", "time"] + history.eval_metrics()
    partial = path.with_name(path.name + ".partial")
    with open(partial, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for record in history.eval:
            writer.writerow({key: record.get(key, "") for key in columns})
    os.replace(partial, path)
    return path
