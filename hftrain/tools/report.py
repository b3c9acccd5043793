"""``hftrain report RUN_DIR [RUN_DIR ...]``: plots and a markdown summary from runs' metrics.jsonl.

One run: its ``plots/`` are rebuilt from ``metrics.jsonl`` (and ``plots/pr_curves.npz``) and
``RUN_DIR/report.md`` is written. Several runs: their curves are overlaid in one set of plots,
one colour per run, under ``--out`` (default ``report/``), with ``report.md`` comparing them:
best metrics and the epoch they were reached, total time, training images per second, the
t_load share, and the recipe settings that differ between the runs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from hftrain.report import plots
from hftrain.report.history import RunHistory, read_history

HEADLINE = ["map", "map_50", "map_75", "map_small", "map_medium", "map_large", "mar_100"]
"""Metrics shown first in the summary (then any other non-per-class metric, e.g. VOC AP)."""


def run_labels(run_dirs: list[Path]) -> list[str]:
    """The runs' directory names; the parent is added where two names collide."""
    names = [p.resolve().name for p in run_dirs]
    return [f"{p.resolve().parent.name}/{n}" if names.count(n) > 1 else n for p, n in zip(run_dirs, names)]


def flatten(tree, prefix: str = "") -> dict[str, str]:
    """Nested recipe dict -> ``{"optim.lr": "0.001", ...}`` (leaves as compact JSON)."""
    if isinstance(tree, dict) and tree:
        out = {}
        for key, value in tree.items():
            out.update(flatten(value, f"{prefix}{key}."))
        return out
    return {prefix.rstrip("."): json.dumps(tree, sort_keys=True)}


def differing_settings(histories: list[RunHistory]) -> dict[str, list[str]]:
    """Recipe keys (and run facts from the config record) whose values are not the same in every run."""
    tables = []
    for history in histories:
        flat = {k: v for k, v in flatten(history.recipe).items() if k != "output_dir"}
        for key, value in (history.config[-1] if history.config else {}).items():
            if key not in ("type", "step", "time"):
                flat[f"(run) {key}"] = json.dumps(value)
        tables.append(flat)
    keys = sorted(set().union(*tables))
    return {k: [t.get(k, "(not set)") for t in tables] for k in keys if len({t.get(k) for t in tables}) > 1}


def best(history: RunHistory, metric: str) -> tuple[float, int] | None:
    """The highest value of ``metric`` over the evaluations (ignoring -1, "no such boxes") and its epoch."""
    found = [(r[metric], r["epoch"]) for r in history.eval if isinstance(r.get(metric), (int, float)) and r[metric] != -1]
    return max(found, key=lambda item: item[0]) if found else None


def mean_of(history: RunHistory, key: str) -> float | None:
    values = [r[key] for r in history.train if isinstance(r.get(key), (int, float))]
    return sum(values) / len(values) if values else None


def duration(seconds: float) -> str:
    hours, rest = divmod(int(round(seconds)), 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"


def summary_markdown(runs: list[tuple[str, RunHistory]], pictures: list[str],
                     run_pictures: list[tuple[str, str]]) -> str:
    """The report: a table per run, best metrics, differing settings, then the plots (relative links)
    and the pictures each run drew while training (``run_pictures``: label, link)."""
    histories = [h for _, h in runs]
    lines = ["# hftrain report", ""]
    lines += ["| run | directory | epochs | optimizer steps | total time | images/s | t_load share |",
              "|---|---|---:|---:|---:|---:|---:|"]
    for label, h in runs:
        epochs = max([r.get("epoch", 0) for r in h.step + h.eval] or [0])
        steps = h.step[-1]["step"] if h.step else (h.train[-1]["step"] if h.train else 0)
        speed, share = mean_of(h, "images_per_second"), mean_of(h, "t_load_share")
        lines.append(f"| {label} | `{h.run_dir}` | {epochs} | {steps} | {duration(h.wall_time)} | "
                     f"{f'{speed:.1f}' if speed is not None else 'n/a'} | "
                     f"{f'{100 * share:.1f}%' if share is not None else 'n/a'} |")
    metrics = list(dict.fromkeys(m for h in histories for m in h.eval_metrics()))
    shown = [m for m in HEADLINE if m in metrics] + [m for m in metrics if m not in HEADLINE and not m.startswith("ap_")]
    lines += ["", "## Best metrics (epoch reached)", ""]
    if shown:
        lines += ["| metric | " + " | ".join(label for label, _ in runs) + " |",
                  "|---|" + "---:|" * len(runs)]
        for metric in shown + [m for m in metrics if m.startswith("ap_")]:
            cells = []
            for h in histories:
                found = best(h, metric)
                cells.append(f"{found[0]:.4f} (epoch {found[1]})" if found else "n/a")
            lines.append(f"| {metric} | " + " | ".join(cells) + " |")
        last = ["{:.4f} (epoch {})".format(h.eval[-1].get("map", float("nan")), h.eval[-1]["epoch"]) if h.eval else "n/a"
                for h in histories]
        lines.append("| map at the last evaluation | " + " | ".join(last) + " |")
    else:
        lines.append("No evaluation yet.")
    if len(runs) > 1:
        lines += ["", "## Settings that differ", ""]
        differ = differing_settings(histories)
        if differ:
            lines += ["| setting | " + " | ".join(label for label, _ in runs) + " |", "|---|" + "---|" * len(runs)]
            lines += [f"| `{key}` | " + " | ".join(f"`{v}`" for v in values) + " |" for key, values in differ.items()]
        else:
            lines.append("None: the recipes are the same (apart from output_dir).")
    if pictures:
        lines += ["", "## Plots", ""]
        lines += [f"![{Path(p).stem}]({p})" for p in pictures]
    if run_pictures:
        lines += ["", "## Drawn during training", ""]
        lines += [f"{label}: `{Path(p).name}`\n\n![{label} {Path(p).stem}]({p})\n" for label, p in run_pictures]
    return "\n".join(lines) + "\n"


def build_report(run_dirs: list[Path], out_dir: Path | None = None, labels: list[str] | None = None,
                 say=print) -> Path:
    """Write the plots and ``report.md``; returns the markdown file's path."""
    run_dirs = [Path(p) for p in run_dirs]
    histories = [read_history(p) for p in run_dirs]
    labels = labels or run_labels(run_dirs)
    if len(labels) != len(run_dirs):
        raise ValueError(f"--labels: {len(labels)} labels for {len(run_dirs)} runs")
    runs = list(zip(labels, histories))
    out_dir = Path(out_dir) if out_dir is not None else (run_dirs[0] if len(run_dirs) == 1 else Path("report"))
    out_dir.mkdir(parents=True, exist_ok=True)
    pictures: list[Path] = []
    missing = plots.available()
    if missing is None:
        pr = [(label, plots.load_pr_curves(p / "plots" / plots.PR_FILE)) for label, p in zip(labels, run_dirs)
              if (p / "plots" / plots.PR_FILE).is_file()]
        pictures = plots.plot_run(runs, out_dir / "plots", pr)
    else:
        say(f"hftrain report: plots are off: matplotlib cannot be imported ({missing}); {plots.ENABLE_HINT}")
    drawn = [(label, os.path.relpath(run_dir / "plots" / name, out_dir))  # pictures the records cannot rebuild
             for label, run_dir in zip(labels, run_dirs) for name in ("label_stats.png", "predictions.png")
             if (run_dir / "plots" / name).is_file()]
    relative = [os.path.relpath(p, out_dir) for p in pictures]
    report = out_dir / "report.md"
    report.write_text(summary_markdown(runs, relative, drawn))
    say(f"wrote {report} and {len(pictures)} pictures" + (f" under {out_dir / 'plots'}" if pictures else ""))
    return report


def report_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="hftrain report", description=(
        "Rebuild a run's plots from metrics.jsonl and write report.md; with several runs, overlay their curves "
        "(one colour per run) and compare best metrics, time, speed and the settings that differ."))
    parser.add_argument("run_dirs", nargs="+", type=Path, help="run directories (each holds metrics.jsonl)")
    parser.add_argument("--out", type=Path, default=None,
                        help="output folder (default: the run directory for one run, ./report for several)")
    parser.add_argument("--labels", nargs="+", default=None, help="one label per run (default: directory names)")
    args = parser.parse_args(argv)
    try:
        build_report(args.run_dirs, args.out, args.labels)
    except (FileNotFoundError, ValueError) as err:
        print(f"hftrain report: {err}", file=sys.stderr)
        return 2
    return 0
