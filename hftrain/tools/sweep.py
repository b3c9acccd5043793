"""``hftrain sweep SWEEP.yaml [key=value ...]``: train a grid of batch sizes x norms, one result per cell.

A sweep file names a base training recipe and a grid::

    recipe: retinanet_voc.yaml          # relative to the sweep file
    output_root: runs/retinanet_voc_norm_study
    label: RetinaNet                    # first folder level under output_root
    num_processes: 2                    # processes per cell (syncbn needs several)
    accelerate_config: ../accelerate_configs/cpu_2proc.yaml   # used when num_processes > 1
    grid:
      batch_sizes: [4, 8, 16]           # total images per optimizer step, split over the processes
      norms: [bn, syncbn, cbn]
    overrides: {train.epochs: 50}       # every cell
    cell_overrides:                     # one norm ("cbn") or one cell ("cbn/batch_16")
      cbn: {model.config.cbn_options: {buffer_num: 3}}

Each cell is its own subprocess (Accelerate's state is process-wide, and a crash stays in its
cell): ``python -m hftrain.tools.sweep_cell`` with one process, ``accelerate launch`` with several.
It trains in ``<output_root>/<label>/<norm>/batch_<B>/`` (an ordinary run directory) with
``model.norm=<norm>``, ``train.batch_size=<B / num_processes>``, ``eval.voc=true``, and logs to
``<norm>/batch_<B>.log``. Then the sweep writes ``<norm>/results_batch_<B>.json`` and ``.txt``:
VOC07 11-point mAP and all-point mAP at IoU 0.5, COCO mAP@[.5:.95] and AP50 (the last
evaluation), inference images/s on the validation set (``hftrain.tools.throughput``), the variance
of the logged training losses (``train`` records of metrics.jsonl) and the training time.

A failed cell gets ``status: failed`` with the error line and the log's tail, and the sweep goes
on. Re-running skips every cell whose results JSON says ``done`` (delete that file to train the
cell again; a note says when the cell's overrides have changed since); other cells start afresh
(their run directory is removed first). Last, ``summary.md`` and ``summary.csv`` in
``<output_root>/<label>/`` tabulate the whole grid. Exit status: 0 when every cell is done, 1 when
some failed, 2 when the sweep file (or the base recipe with the shared overrides) is invalid.
"""

from __future__ import annotations

import argparse
import csv
import difflib
import io
import json
import math
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from hftrain.tools.sweep_cell import CELL_FILE

REPO = Path(__file__).resolve().parents[2]
CELL_MODULE = "hftrain.tools.sweep_cell"  # run as a module: a script would put tools/ first on sys.path
SWEEP_KEYS = ("recipe", "output_root", "label", "num_processes", "accelerate_config", "grid", "overrides",
              "cell_overrides")
GRID_KEYS = ("batch_sizes", "norms")
DEFAULT_BATCH_SIZES = [4, 8, 16]
DEFAULT_NORMS = ["bn", "syncbn", "cbn"]
TAIL_LINES = 40


class SweepError(Exception):
    """A problem with the sweep file itself (the sweep does not start)."""


@dataclass
class Sweep:
    path: Path
    recipe: Path
    output_root: Path
    label: str = "RetinaNet"
    num_processes: int = 1
    accelerate_config: Path | None = None
    batch_sizes: list[int] = field(default_factory=lambda: list(DEFAULT_BATCH_SIZES))
    norms: list[str] = field(default_factory=lambda: list(DEFAULT_NORMS))
    overrides: dict = field(default_factory=dict)
    cell_overrides: dict = field(default_factory=dict)

    @property
    def root(self) -> Path:
        return self.output_root / self.label


@dataclass
class Cell:
    norm: str
    batch_size: int
    sweep: Sweep

    @property
    def name(self) -> str:
        return f"{self.norm}/batch_{self.batch_size}"

    @property
    def run_dir(self) -> Path:
        return self.sweep.root / self.norm / f"batch_{self.batch_size}"

    @property
    def results_json(self) -> Path:
        return self.sweep.root / self.norm / f"results_batch_{self.batch_size}.json"

    @property
    def results_txt(self) -> Path:
        return self.results_json.with_suffix(".txt")

    @property
    def log(self) -> Path:
        return self.sweep.root / self.norm / f"batch_{self.batch_size}.log"

    @property
    def per_device_batch(self) -> int:
        return self.batch_size // self.sweep.num_processes

    def overrides(self, cli: list[str]) -> list[str]:
        """Every cell's overrides, then this cell's grid values, then its own overrides, then the CLI's."""
        values = dict(self.sweep.overrides)
        values.update({"output_dir": str(self.run_dir), "model.norm": self.norm,
                       "train.batch_size": self.per_device_batch, "eval.voc": True})
        values.update(self.sweep.cell_overrides.get(self.norm, {}))
        values.update(self.sweep.cell_overrides.get(self.name, {}))
        return as_overrides(values) + list(cli)


def as_overrides(values: dict) -> list[str]:
    """``{"train.epochs": 2}`` -> ``["train.epochs=2"]`` (values written as YAML, as on a command line)."""
    return [f"{key}={_yaml_value(value)}" for key, value in values.items()]


def _yaml_value(value) -> str:
    if isinstance(value, str):
        return value
    return yaml.safe_dump(value, default_flow_style=True, width=10**6).strip().removesuffix("\n...").strip()


# ---------------------------------------------------------------------------------------------- the sweep file


def load_sweep(path: str | Path) -> Sweep:
    """Read and check a sweep file; every problem is reported at once (``SweepError``)."""
    from hftrain.models.norms import NORM_KINDS

    path = Path(path)
    if not path.is_file():
        raise SweepError(f"sweep file {path} not found")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise SweepError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(raw, dict):
        raise SweepError(f"{path}: the top level must be a mapping")
    problems = []
    for key in raw:
        if key not in SWEEP_KEYS:
            near = difflib.get_close_matches(str(key), SWEEP_KEYS, n=1)
            problems.append(f"unknown key {key!r}" + (f" (did you mean {near[0]!r}?)" if near else ""))
    for key in ("recipe", "output_root"):
        if not isinstance(raw.get(key), str):
            problems.append(f"{key}: required, a path (got {raw.get(key)!r})")
    grid = raw.get("grid") or {}
    if not isinstance(grid, dict):
        problems.append(f"grid: expected a mapping with {list(GRID_KEYS)}, got {grid!r}")
        grid = {}
    for key in grid:
        if key not in GRID_KEYS:
            problems.append(f"unknown key 'grid.{key}' (expected {list(GRID_KEYS)})")
    batch_sizes = grid.get("batch_sizes", DEFAULT_BATCH_SIZES)
    norms = grid.get("norms", DEFAULT_NORMS)
    processes = raw.get("num_processes", 1)
    if not isinstance(processes, int) or isinstance(processes, bool) or processes < 1:
        problems.append(f"num_processes: expected a positive integer, got {processes!r}")
        processes = 1
    if not (isinstance(batch_sizes, list) and batch_sizes
            and all(isinstance(b, int) and not isinstance(b, bool) and b > 0 for b in batch_sizes)):
        problems.append(f"grid.batch_sizes: expected a list of positive integers, got {batch_sizes!r}")
        batch_sizes = []
    for b in batch_sizes:
        if b % processes:
            problems.append(f"grid.batch_sizes: {b} is not divisible by num_processes={processes} "
                            "(a batch size is the total over the processes)")
    if not (isinstance(norms, list) and norms and all(isinstance(n, str) for n in norms)):
        problems.append(f"grid.norms: expected a list of norm names, got {norms!r}")
        norms = []
    for n in norms:
        if n not in NORM_KINDS:
            problems.append(f"grid.norms: unknown norm {n!r}; expected one of {list(NORM_KINDS)}")
    overrides = raw.get("overrides") or {}
    if not isinstance(overrides, dict):
        problems.append(f"overrides: expected a mapping of dotted keys to values, got {overrides!r}")
        overrides = {}
    cell_overrides = raw.get("cell_overrides") or {}
    if not isinstance(cell_overrides, dict):
        problems.append(f"cell_overrides: expected a mapping, got {cell_overrides!r}")
        cell_overrides = {}
    names = set(norms) | {f"{n}/batch_{b}" for n in norms for b in batch_sizes}
    for key, value in cell_overrides.items():
        if key not in names:
            near = difflib.get_close_matches(str(key), sorted(names), n=1)
            problems.append(f"cell_overrides: {key!r} names no norm or cell of the grid"
                            + (f" (did you mean {near[0]!r}?)" if near else "") + "; use 'NORM' or 'NORM/batch_B'")
        if not isinstance(value, dict):
            problems.append(f"cell_overrides.{key}: expected a mapping of dotted keys to values, got {value!r}")
    label = raw.get("label", "RetinaNet")
    if not isinstance(label, str) or not label or "/" in label:
        problems.append(f"label: expected a folder name, got {label!r}")
    recipe = path.parent / str(raw.get("recipe", ""))
    if isinstance(raw.get("recipe"), str) and not recipe.is_file():
        problems.append(f"recipe: {recipe} not found (paths in a sweep file are relative to it)")
    config = raw.get("accelerate_config")
    accelerate_config = None
    if processes > 1:
        accelerate_config = path.parent / config if isinstance(config, str) else REPO / "accelerate_configs" / "cpu_2proc.yaml"
        if not accelerate_config.is_file():
            problems.append(f"accelerate_config: {accelerate_config} not found (needed with num_processes > 1)")
    if problems:
        raise SweepError(f"{path}: {len(problems)} problem(s)\n" + "\n".join(f"  - {p}" for p in problems))
    return Sweep(path=path, recipe=recipe, output_root=Path(raw["output_root"]), label=label,
                 num_processes=processes, accelerate_config=accelerate_config, batch_sizes=list(batch_sizes),
                 norms=list(norms), overrides=dict(overrides), cell_overrides={k: dict(v) for k, v in cell_overrides.items()})


def cells(sweep: Sweep) -> list[Cell]:
    """The grid, norm-major (all batch sizes of the first norm, then the next)."""
    return [Cell(norm, batch, sweep) for norm in sweep.norms for batch in sweep.batch_sizes]


# ---------------------------------------------------------------------------------------------- one cell


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def cell_command(cell: Cell, cli_overrides: list[str]) -> list[str]:
    """The subprocess command line that trains one cell."""
    args = [CELL_MODULE, str(cell.sweep.recipe), *cell.overrides(cli_overrides)]
    sweep = cell.sweep
    if sweep.num_processes == 1:
        return [sys.executable, "-m", *args]
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(sweep.accelerate_config),
            "--num_processes", str(sweep.num_processes), "--main_process_port", str(_free_port()), "--module", *args]


def read_records(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


ERROR_LINE = re.compile(r"^(?:[A-Za-z_][\w.]*)?(?:Error|Exception|Interrupt)\b.*")
RANK_PREFIX = re.compile(r"^\[rank\d+\]:\s*")


def error_line(log_text: str) -> str:
    """The first exception line of the log (the root cause; ``[rankN]:`` prefixes removed), else its last line."""
    lines = [RANK_PREFIX.sub("", line).strip() for line in log_text.splitlines()]
    lines = [line for line in lines if line]
    for line in lines:
        if ERROR_LINE.match(line):
            return line
    return lines[-1] if lines else "(empty log)"


def collect(cell: Cell, returncode: int, log_text: str, command: list[str], wall: float,
            overrides: list[str] | None = None) -> dict:
    """The results of a finished subprocess: figures when it succeeded, the error when not."""
    result = {
        "status": "failed", "label": cell.sweep.label, "norm": cell.norm, "batch_size": cell.batch_size,
        "num_processes": cell.sweep.num_processes, "per_device_batch": cell.per_device_batch,
        "recipe": str(cell.sweep.recipe), "overrides": overrides, "run_dir": str(cell.run_dir), "log": str(cell.log),
        "command": " ".join(command), "returncode": returncode, "wall_time_s": wall,
    }
    records = read_records(cell.run_dir)
    evals = [r for r in records if r["type"] == "eval"]
    figures_file = cell.run_dir / CELL_FILE
    if returncode != 0 or not evals or not figures_file.is_file():
        reason = error_line(log_text) if returncode != 0 else f"no evaluation or {CELL_FILE} in {cell.run_dir}"
        result.update(error=reason, error_tail="\n".join(log_text.splitlines()[-TAIL_LINES:]))
        return result
    last = evals[-1]
    steps = [r for r in records if r["type"] == "step" and "loss" in r]  # one per optimizer step
    if not steps:  # a loop without per-step losses: the log.interval windows
        steps = [r for r in records if r["type"] == "train"]
    losses = [r["loss"] for r in steps if math.isfinite(r["loss"])]
    final_epoch = [r["loss"] for r in steps if r.get("epoch") == last["epoch"] and math.isfinite(r["loss"])]
    figures = json.loads(figures_file.read_text())
    result.update(
        status="done",
        epoch=last["epoch"],
        voc07_map=last.get("voc07_map"),
        voc_map=last.get("voc_map"),
        coco_map=last.get("map"),
        coco_map_50=last.get("map_50"),
        per_class_voc07_ap={k.removeprefix("voc07_ap_"): v for k, v in last.items() if k.startswith("voc07_ap_")},
        loss_var=statistics.pvariance(losses) if len(losses) > 1 else float("nan"),
        loss_var_last_epoch=statistics.pvariance(final_epoch) if len(final_epoch) > 1 else float("nan"),
        loss_records=len(losses),
        nonfinite_losses=len(steps) - len(losses),
        final_loss=losses[-1] if losses else float("nan"),
        **figures,
    )
    return result


def run_cell(cell: Cell, cli_overrides: list[str], echo) -> dict:
    """Train one cell in a subprocess (its output goes to the cell's log) and collect its results."""
    if cell.run_dir.exists():
        shutil.rmtree(cell.run_dir)  # an unfinished earlier attempt: start afresh
    cell.log.parent.mkdir(parents=True, exist_ok=True)
    command = cell_command(cell, cli_overrides)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    start = time.perf_counter()
    with open(cell.log, "w") as log:
        log.write("$ " + " ".join(command) + "\n")
        log.flush()
        proc = subprocess.Popen(command, cwd=os.getcwd(), env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            returncode = proc.wait()
        except BaseException:  # Ctrl-C or SIGTERM of the sweep: stop the cell too (it stays unfinished)
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
            raise
    wall = time.perf_counter() - start
    return collect(cell, returncode, cell.log.read_text(errors="replace"), command, wall, cell.overrides(cli_overrides))


# ---------------------------------------------------------------------------------------------- results


def _fmt(value, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


TXT_FIELDS = (
    ("status", "status"), ("norm", "norm"), ("batch size (total)", "batch_size"),
    ("processes", "num_processes"), ("batch per process", "per_device_batch"), ("epoch", "epoch"),
    ("VOC07 mAP@0.5 (11-point)", "voc07_map"), ("VOC mAP@0.5 (all-point)", "voc_map"),
    ("COCO mAP@[.5:.95]", "coco_map"), ("COCO AP50", "coco_map_50"),
    ("inference images/s", "images_per_s"), ("inference device", "inference_device"),
    ("loss variance (all steps)", "loss_var"), ("loss variance (last epoch)", "loss_var_last_epoch"),
    ("loss records", "loss_records"), ("non-finite losses", "nonfinite_losses"), ("final loss", "final_loss"),
    ("training time (s)", "train_time_s"), ("run directory", "run_dir"), ("log", "log"), ("error", "error"),
)


def write_results(cell: Cell, result: dict) -> None:
    cell.results_json.parent.mkdir(parents=True, exist_ok=True)
    cell.results_json.write_text(json.dumps(result, indent=2))
    lines = [f"{label}: {_fmt(result[key])}" for label, key in TXT_FIELDS if key in result]
    if result.get("per_class_voc07_ap"):
        lines.append("VOC07 AP per class:")
        lines.extend(f"  {name}: {_fmt(ap)}" for name, ap in result["per_class_voc07_ap"].items())
    if result.get("error_tail"):
        lines += ["", "log tail:", result["error_tail"]]
    cell.results_txt.write_text("\n".join(lines) + "\n")


def read_result(cell: Cell) -> dict | None:
    if not cell.results_json.is_file():
        return None
    try:
        return json.loads(cell.results_json.read_text())
    except json.JSONDecodeError:
        return None


SUMMARY_COLUMNS = (
    ("norm", "norm"), ("batch", "batch_size"), ("procs", "num_processes"), ("status", "status"),
    ("VOC07 mAP", "voc07_map"), ("VOC mAP", "voc_map"), ("COCO mAP", "coco_map"), ("COCO AP50", "coco_map_50"),
    ("images/s", "images_per_s"), ("loss var", "loss_var"), ("loss var (last epoch)", "loss_var_last_epoch"),
    ("train time (s)", "train_time_s"),
)


def write_summary(sweep: Sweep) -> tuple[Path, Path]:
    """``summary.md`` (the grid as rows, then VOC07 mAP as norm x batch) and ``summary.csv``."""
    rows = []
    for cell in cells(sweep):
        result = read_result(cell) or {"norm": cell.norm, "batch_size": cell.batch_size,
                                       "num_processes": sweep.num_processes, "status": "not run"}
        rows.append(result)
    sweep.root.mkdir(parents=True, exist_ok=True)
    csv_path, md_path = sweep.root / "summary.csv", sweep.root / "summary.md"
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow([key for _, key in SUMMARY_COLUMNS] + ["error"])
    for row in rows:
        writer.writerow([row.get(key, "") for _, key in SUMMARY_COLUMNS] + [row.get("error", "")])
    csv_path.write_text(buffer.getvalue())

    digits = {"images_per_s": 1, "train_time_s": 1, "loss_var": 4, "loss_var_last_epoch": 5}
    md = [f"# {sweep.label} normalization sweep", "",
          f"Recipe `{sweep.recipe}`, {sweep.num_processes} process(es) per cell; batch = images per optimizer "
          "step over all processes. mAPs are from the last evaluation; loss variance is over the training "
          "loss of every optimizer step (main process), and over the last epoch's steps.", "",
          "| " + " | ".join(label for label, _ in SUMMARY_COLUMNS) + " | note |",
          "|" + "---|" * (len(SUMMARY_COLUMNS) + 1)]
    for row in rows:
        cells_text = [_fmt(row.get(key), digits.get(key, 4)) for _, key in SUMMARY_COLUMNS]
        note = (row.get("error") or "").replace("|", "\\|")[:160]
        md.append("| " + " | ".join(cells_text) + f" | {note} |")
    md += ["", "VOC07 mAP@0.5 (11-point):", "",
           "| norm | " + " | ".join(f"batch {b}" for b in sweep.batch_sizes) + " |",
           "|---|" + "---|" * len(sweep.batch_sizes)]
    by_cell = {(r["norm"], r["batch_size"]): r for r in rows}
    for norm in sweep.norms:
        values = []
        for b in sweep.batch_sizes:
            r = by_cell[(norm, b)]
            values.append(_fmt(r.get("voc07_map")) if r.get("status") == "done" else r.get("status", "-"))
        md.append(f"| {norm} | " + " | ".join(values) + " |")
    md_path.write_text("\n".join(md) + "\n")
    return md_path, csv_path


# ---------------------------------------------------------------------------------------------- command


def run_sweep(sweep: Sweep, cli_overrides: list[str], echo=print) -> list[dict]:
    """Run every cell not yet done, write its results, then the summary; returns all results."""
    from hftrain.recipe import RecipeError, load_recipe

    try:  # problems shared by every cell stop the sweep before anything runs
        load_recipe(sweep.recipe, as_overrides(sweep.overrides) + list(cli_overrides))
    except RecipeError as err:
        raise SweepError(f"{sweep.path}: the base recipe with the sweep's overrides is invalid:\n{err}") from None
    results = []
    grid = cells(sweep)
    for index, cell in enumerate(grid, 1):
        previous = read_result(cell)
        if previous is not None and previous.get("status") == "done":
            echo(f"[sweep {index}/{len(grid)}] {cell.name}: skipped ({cell.results_json.name} says done)")
            if previous.get("overrides") != cell.overrides(cli_overrides):
                echo(f"    note: it was trained with other overrides ({previous.get('overrides')}); "
                     f"delete {cell.results_json} to train it again with the current ones")
            results.append(previous)
            continue
        echo(f"[sweep {index}/{len(grid)}] {cell.name}: training ({sweep.num_processes} process(es), "
             f"batch {cell.per_device_batch} per process), log {cell.log}")
        try:
            load_recipe(sweep.recipe, cell.overrides(cli_overrides))
        except RecipeError as err:  # this cell's own overrides are wrong: record it, go on
            result = collect(cell, 2, str(err), ["(not started)"], 0.0, cell.overrides(cli_overrides))
        else:
            result = run_cell(cell, cli_overrides, echo)
        write_results(cell, result)
        results.append(result)
        if result["status"] == "done":
            echo(f"    done in {result['wall_time_s']:.1f}s: VOC07 mAP {_fmt(result['voc07_map'])}, "
                 f"COCO mAP {_fmt(result['coco_map'])}, {_fmt(result['images_per_s'], 1)} images/s")
        else:
            echo(f"    FAILED: {result['error']} (see {cell.results_txt})")
    md_path, csv_path = write_summary(sweep)
    echo(f"[sweep] summary: {md_path} and {csv_path}")
    echo(md_path.read_text())
    return results


def sweep_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="hftrain sweep", description="Train a grid of batch sizes x norms.")
    parser.add_argument("sweep", help="sweep YAML file (see hftrain/tools/sweep.py)")
    parser.add_argument("overrides", nargs="*", help="dotted key=value recipe overrides for every cell")
    args = parser.parse_args(argv)
    previous = signal.signal(signal.SIGTERM, _exit_on_sigterm)  # so that the running cell is stopped too
    try:
        sweep = load_sweep(args.sweep)
        results = run_sweep(sweep, args.overrides)
    except SweepError as err:
        print(f"hftrain sweep: {err}", file=sys.stderr)
        return 2
    finally:
        signal.signal(signal.SIGTERM, previous)
    return 0 if all(r["status"] == "done" for r in results) else 1


def _exit_on_sigterm(signum, frame):
    raise SystemExit(128 + signum)
