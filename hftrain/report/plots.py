"""The run's plots (PNG files in ``plots/``), drawn with matplotlib's Agg renderer.

Every plot takes a list of runs ``[(label, RunHistory), ...]``: one run during training, several
when ``hftrain report`` overlays runs (one colour per run, a legend naming them). matplotlib is
imported only inside the drawing functions and only the object-oriented API is used (no pyplot,
no global figure state), so drawing from a background thread is safe and importing this module
never needs matplotlib. ``available()`` tells whether it is installed.

Files: ``loss.png`` (total and each term), ``lr.png``, ``grad_norm.png`` (norm before clipping,
clip threshold, fraction of clipped steps), ``timing.png`` (t_load / t_step shares and seconds,
images per second), ``metrics.png`` (every evaluation metric over epochs),
``ap_per_class_epochs.png``, ``ap_per_class.png`` (bars at the last evaluation),
``pr_curves.png`` (precision-recall at IoU 0.5 and averaged over 0.5:0.95, from the arrays saved
in ``pr_curves.npz``) and ``label_stats.png`` (training labels, drawn at the start).
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path

import numpy as np

from hftrain.report.draw import class_colour
from hftrain.report.history import RunHistory

RUN_COLOURS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
               "#bcbd22", "#17becf"]
"""One colour per overlaid run (matplotlib's tab10)."""
PR_FILE = "pr_curves.npz"
ENABLE_HINT = "pip install 'hftrain[plots]' (or '.[dev]' in a checkout)"

Runs = list[tuple[str, RunHistory]]


def available() -> str | None:
    """None when matplotlib can be imported, else the reason it cannot."""
    try:
        import matplotlib  # noqa: F401
    except ImportError as err:
        return str(err)
    return None


def run_colour(index: int) -> str:
    return RUN_COLOURS[index % len(RUN_COLOURS)]


def _figure(rows: int, cols: int, width: float, height: float, legend: bool = False, left: float = 0.6):
    """A figure of ``rows`` x ``cols`` axes with fixed margins in inches (room for titles, tick labels and,
    with ``legend``, a run legend along the bottom). Fixed margins cost far less than a layout engine."""
    from matplotlib.figure import Figure

    height += 0.35 if legend else 0.0
    fig = Figure(figsize=(width, height), dpi=100)
    axes = fig.subplots(rows, cols, squeeze=False)
    bottom = (0.5 + (0.35 if legend else 0.0)) / height
    top = 1 - 0.3 / height
    right = 1 - 0.15 / width
    left = left / width
    axis_height = height * (top - bottom) / rows
    axis_width = width * (right - left) / cols
    fig.subplots_adjust(left=left, right=right, bottom=bottom, top=top,
                        hspace=0.8 / max(axis_height - 0.8, 0.5), wspace=0.6 / max(axis_width - 0.6, 0.5))
    return fig, axes


def _save(fig, path: Path) -> Path:
    """Write the PNG under a temporary name, then rename: a viewer never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    fig.savefig(partial, format="png")
    os.replace(partial, path)
    return path


def _grid(count: int, cols: int = 4) -> tuple[int, int]:
    cols = max(1, min(cols, count))
    return math.ceil(count / cols), cols


def _clean(values) -> np.ndarray:
    """-1 (COCO's "no such boxes") and non-finite values become gaps."""
    array = np.asarray(values, dtype=float)
    return np.where((array == -1.0) | ~np.isfinite(array), np.nan, array)


def smooth(values, span: int | None = None) -> np.ndarray:
    """Exponential moving average, bias-corrected, span about 1/30 of the series."""
    values = np.asarray(values, dtype=float)
    if values.size == 0:
        return values
    span = span or max(1, values.size // 30)
    alpha = 2.0 / (span + 1.0)
    out, mean, weight = np.empty_like(values), 0.0, 0.0
    for i, v in enumerate(values):
        mean = (1 - alpha) * mean + alpha * v
        weight = (1 - alpha) * weight + alpha
        out[i] = mean / weight
    return out


def _curve(ax, xs, ys, colour, label, smoothed: bool = False) -> None:
    if not xs:
        return
    if smoothed and len(xs) > 10:
        ax.plot(xs, ys, color=colour, alpha=0.3, linewidth=0.8)
        ax.plot(xs, smooth(ys), color=colour, linewidth=1.6, label=label)
    else:
        ax.plot(xs, _clean(ys), color=colour, linewidth=1.6, label=label, marker="o" if len(xs) < 30 else None,
                markersize=3)


def loss_family(term: str) -> str:
    """``loss_vfl_aux_0``, ``loss_vfl_dn_1``, ``loss_vfl_enc_0`` -> ``loss_vfl``: a term and its auxiliary copies."""
    return re.match(r"^(.*?)(_(?:aux|dn|enc)(?:_.*)?)?$", term).group(1)


def _legend(fig, runs: Runs) -> None:
    if len(runs) > 1:
        from matplotlib.lines import Line2D

        handles = [Line2D([], [], color=run_colour(i), linewidth=2) for i in range(len(runs))]
        fig.legend(handles, [label for label, _ in runs], loc="lower center", ncols=min(len(runs), 4), fontsize=8,
                   frameon=False)


# ---------------------------------------------------------------------------- memory


MEMORY_CURVES = (("gpu_peak_gb", "GPU peak allocated"), ("gpu_reserved_gb", "GPU reserved"),
                 ("gpu_allocated_gb", "GPU allocated"), ("host_rss_gb", "host resident (process)"),
                 ("ram_cache_gb", "RAM cache (shared)"))


def plot_memory(runs: Runs, path: Path) -> Path | None:
    """memory.png: the memory figures of every log line over optimizer steps (maximum over processes),
    GPU on the left, host on the right; dotted lines mark log windows with ``empty_cache`` calls, red
    crosses out-of-memory recoveries. None when no record holds memory figures."""
    if not any(h.series("train", "host_rss_gb")[0] or h.series("train", "gpu_peak_gb")[0] for _, h in runs):
        return None
    fig, axes = _figure(1, 2, 12, 3.6, legend=len(runs) > 1)
    gpu_ax, host_ax = axes[0]
    for i, (label, history) in enumerate(runs):
        for n, (key, name) in enumerate(MEMORY_CURVES):
            xs, ys = history.series("train", key)
            ax = gpu_ax if key.startswith("gpu") else host_ax
            if xs:
                ax.plot(xs, ys, color=run_colour(i if len(runs) > 1 else n), linewidth=1.4,
                        linestyle=("-", "--", ":")[n % 3] if len(runs) > 1 else "-",
                        label=name if len(runs) == 1 else None)
        for x, calls in zip(*history.series("train", "empty_cache_calls")):
            if calls:
                gpu_ax.axvline(x, color="grey", linestyle=":", linewidth=0.8)
        for record in history.oom:
            gpu_ax.plot([record["step"]], [0], marker="x", color="red", markersize=8)
    if not any(h.series("train", "gpu_peak_gb")[0] for _, h in runs):
        gpu_ax.text(0.5, 0.5, "no GPU figures (no CUDA device)", ha="center", va="center", transform=gpu_ax.transAxes)
    gpu_ax.set_title("GPU memory, GiB (dotted: empty_cache; x: out of memory)", fontsize=9)
    host_ax.set_title("host memory, GiB", fontsize=9)
    for ax in (gpu_ax, host_ax):
        ax.set_xlabel("optimizer step", fontsize=8)
        ax.tick_params(labelsize=7)
        if len(runs) == 1 and ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    _legend(fig, runs)
    return _save(fig, Path(path))


# ---------------------------------------------------------------------------- training curves


def plot_training(runs: Runs, out_dir: Path) -> list[Path]:
    """loss.png, lr.png, grad_norm.png, timing.png from the step and train records."""
    out_dir = Path(out_dir)
    written = []
    families: dict[str, list[str]] = {"loss": ["loss"]}
    for term in dict.fromkeys(t for _, h in runs for t in h.loss_terms()):
        families.setdefault(loss_family(term), []).append(term)
    rows, cols = _grid(len(families), 2 if len(families) <= 4 else 3)
    fig, axes = _figure(rows, cols, 5.0 * cols, 3.0 * rows, legend=len(runs) > 1)
    for ax, (family, terms) in zip(axes.flat, families.items()):
        for i, (label, history) in enumerate(runs):
            if len(runs) == 1:  # every term of the family, the final layer's bold
                for n, term in enumerate(terms):
                    xs, ys = history.series("train", term)
                    if xs:
                        ax.plot(xs, smooth(ys), color=run_colour(n), linewidth=2.0 if term == family else 1.0,
                                label=term)
                if len(terms) > 1:
                    ax.legend(fontsize=6, ncols=2)
            else:  # the family's main term per run
                _curve(ax, *history.series("train", family), run_colour(i), label, smoothed=True)
        ax.set_title("loss (total, mean over the log interval)" if family == "loss" else
                     f"{family}" + (" (final layer bold; aux / dn / enc thin)" if len(terms) > 1 and len(runs) == 1 else ""),
                     fontsize=9)
        ax.set_xlabel("optimizer step", fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in axes.flat[len(families):]:
        ax.set_visible(False)
    _legend(fig, runs)
    written.append(_save(fig, out_dir / "loss.png"))

    fig, axes = _figure(1, 1, 7, 3.2, legend=len(runs) > 1, left=0.8)
    ax = axes[0, 0]
    for i, (label, history) in enumerate(runs):
        _curve(ax, *(history.series("step", "lr") if history.step else history.series("train", "lr")), run_colour(i), label)
    ax.set_title("learning rate (largest parameter group)")
    ax.set_xlabel("optimizer step")
    _legend(fig, runs)
    written.append(_save(fig, out_dir / "lr.png"))

    fig, axes = _figure(1, 2, 11, 3.4, legend=len(runs) > 1)
    norm_ax, clip_ax = axes[0]
    for i, (label, history) in enumerate(runs):
        colour = run_colour(i)
        _curve(norm_ax, *history.series("step", "grad_norm"), colour, label, smoothed=True)
        clip = (history.recipe.get("train") or {}).get("clip_max_norm")
        if clip:
            norm_ax.axhline(clip, color=colour, linestyle="--", linewidth=1)
        _curve(clip_ax, *history.series("train", "clipped_fraction"), colour, label, smoothed=True)
    norm_ax.set_yscale("log")
    norm_ax.set_title("gradient norm before clipping (dashed: clip_max_norm)", fontsize=10)
    clip_ax.set_title("fraction of clipped steps (per log interval)", fontsize=10)
    clip_ax.set_ylim(-0.05, 1.05)
    for ax in (norm_ax, clip_ax):
        ax.set_xlabel("optimizer step")
    _legend(fig, runs)
    written.append(_save(fig, out_dir / "grad_norm.png"))

    has_speed = any(h.series("train", "images_per_second")[0] for _, h in runs)
    fig, axes = _figure(1, 3 if has_speed else 2, 15 if has_speed else 10, 3.4, legend=len(runs) > 1)
    share_ax, seconds_ax = axes[0, 0], axes[0, 1]
    for i, (label, history) in enumerate(runs):
        colour = run_colour(i)
        xs, shares = history.series("train", "t_load_share")
        _curve(share_ax, xs, [100 * s for s in shares], colour, label, smoothed=True)
        _curve(seconds_ax, *history.series("train", "t_step"), colour, label, smoothed=True)
        xs, loads = history.series("train", "t_load")
        if xs:
            seconds_ax.plot(xs, smooth(loads), color=colour, linestyle="--", linewidth=1.2)
        if has_speed:
            _curve(axes[0, 2], *history.series("train", "images_per_second"), colour, label, smoothed=True)
    share_ax.set_title("t_load share of the step time (%)", fontsize=10)
    share_ax.set_ylim(0, 100)
    seconds_ax.set_title("seconds per micro-batch: t_step (solid), t_load (dashed)", fontsize=10)
    if has_speed:
        axes[0, 2].set_title("training images per second (all processes)", fontsize=10)
    for ax in axes.flat:
        ax.set_xlabel("optimizer step")
    _legend(fig, runs)
    written.append(_save(fig, out_dir / "timing.png"))
    return written


# ---------------------------------------------------------------------------- evaluation curves


def plot_evaluation(runs: Runs, out_dir: Path) -> list[Path]:
    """metrics.png (every metric but per-class AP), ap_per_class_epochs.png and ap_per_class.png."""
    out_dir = Path(out_dir)
    names = list(dict.fromkeys(m for _, h in runs for m in h.eval_metrics()))
    if not names:
        return []
    written = []
    per_class = [m for m in names if m.startswith("ap_")]
    groups = [(title, [k for k in keys if k in names]) for title, keys in METRIC_GROUPS]
    grouped = {k for _, keys in groups for k in keys}
    groups.append(("other metrics", [m for m in names if m not in grouped and not m.startswith("ap_")]))
    groups = [(title, keys) for title, keys in groups if keys]
    if groups:
        rows, cols = _grid(len(groups), 2 if len(groups) <= 4 else 3)
        fig, axes = _figure(rows, cols, 5.0 * cols, 3.0 * rows, legend=len(runs) > 1)
        for ax, (title, keys) in zip(axes.flat, groups):
            _metric_lines(ax, runs, keys, title)
        for ax in axes.flat[len(groups):]:
            ax.set_visible(False)
        _legend(fig, runs)
        written.append(_save(fig, out_dir / "metrics.png"))
    if per_class:
        fig, axes = _figure(1, 1, 8, 4.0, legend=len(runs) > 1)
        _metric_lines(axes[0, 0], runs, per_class, "AP@[.5:.95] per class", class_colours=True)
        _legend(fig, runs)
        written.append(_save(fig, out_dir / "ap_per_class_epochs.png"))
        written.append(plot_class_ap(runs, per_class, out_dir / "ap_per_class.png"))
    return written


METRIC_GROUPS = [
    ("AP", ["map", "map_50", "map_75"]),
    ("AP by object size", ["map_small", "map_medium", "map_large"]),
    ("AR (max detections 1, 10, 100)", ["mar_1", "mar_10", "mar_100"]),
    ("AR by object size", ["mar_small", "mar_medium", "mar_large"]),
]
"""Evaluation metrics drawn together; any other metric (VOC AP ...) goes to "other metrics"."""
LINE_STYLES = ["-", "--", ":", "-."]


def _metric_lines(ax, runs: Runs, keys: list[str], title: str, class_colours: bool = False) -> None:
    """One line per metric over epochs. One run: a colour per metric. Several: a colour per run and
    a line style per metric (so a run keeps its colour in every plot)."""
    for i, (label, history) in enumerate(runs):
        for n, key in enumerate(keys):
            xs, ys = history.series("eval", key, x="epoch")
            if not xs:
                continue
            if len(runs) == 1:
                colour = np.array(class_colour(n)) / 255 if class_colours else run_colour(n)
                style = "-"
            else:
                colour, style = run_colour(i), LINE_STYLES[n % len(LINE_STYLES)]
            name = key[3:] if class_colours else key
            ax.plot(xs, _clean(ys), color=colour, linestyle=style, linewidth=1.6,
                    marker="o" if len(xs) < 30 else None, markersize=3, label=name if i == 0 else None)
    if len(keys) <= 20:
        ax.legend(fontsize=7, ncols=2 if len(keys) > 6 else 1)
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("epoch", fontsize=8)
    ax.tick_params(labelsize=7)
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def plot_class_ap(runs: Runs, keys: list[str], path: Path) -> Path:
    """Horizontal bars of each class's AP@[.5:.95] at each run's last evaluation, best class on top."""
    last = [(label, h.eval[-1]) for label, h in runs if h.eval]
    first = last[0][1]
    class_index = {k: n for n, k in enumerate(keys)}  # the evaluator's class order: the class colours
    keys = sorted(keys, key=lambda k: first.get(k, -1.0))
    height = max(2.5, 0.28 * len(keys) * max(1, len(last)) + 1.2)
    fig, axes = _figure(1, 1, 8, height, left=0.2 + 0.075 * max(len(k) - 3 for k in keys))
    ax = axes[0, 0]
    bar = 0.8 / len(last)
    positions = np.arange(len(keys))
    for i, (label, record) in enumerate(last):
        values = np.array([record.get(k, -1.0) for k in keys], dtype=float)
        shown = np.where(values < 0, 0.0, values)
        offset = positions + (i - (len(last) - 1) / 2) * bar
        colours = run_colour(i) if len(last) > 1 else [np.array(class_colour(class_index[k])) / 255 for k in keys]
        ax.barh(offset, shown, height=bar, color=colours, edgecolor="black", linewidth=0.4,
                label=f"{label} (epoch {record.get('epoch')})")
        for y, v in zip(offset, values):
            ax.text(max(v, 0) + 0.005, y, "no boxes" if v < 0 else f"{v:.3f}", va="center", fontsize=7)
    ax.set_yticks(positions, [k[3:] for k in keys], fontsize=8)
    ax.set_xlim(0, 1.05)
    ax.set_xlabel("AP@[.5:.95]")
    ax.set_title("per-class AP at the last evaluation" + (f" (epoch {last[0][1].get('epoch')})" if len(last) == 1 else ""))
    if len(last) > 1:
        ax.legend(fontsize=8, loc="lower right")
    return _save(fig, path)


# ---------------------------------------------------------------------------- precision-recall


def pr_curves(evaluation, class_names: list[str], epoch: int) -> dict:
    """Precision at each recall threshold per class, at IoU 0.5 and averaged over IoU 0.5:0.95,
    from the COCO evaluator's ``eval["precision"]`` (T x R x K x A x M; area all, most detections).
    A class without ground truth has precision -1."""
    precision = np.asarray(evaluation.eval["precision"], dtype=float)[:, :, :, 0, -1]  # T, R, K
    ious = np.asarray(evaluation.params.iouThrs, dtype=float)
    valid = precision > -1
    counts = valid.sum(axis=0)
    mean = np.where(counts > 0, np.where(valid, precision, 0.0).sum(axis=0) / np.maximum(counts, 1), -1.0)
    return {
        "recall": np.asarray(evaluation.params.recThrs, dtype=float),
        "precision_50": precision[int(np.argmin(np.abs(ious - 0.5)))],
        "precision_50_95": mean,
        "class_names": np.asarray(class_names, dtype=str),
        "epoch": np.asarray(epoch),
    }


def save_pr_curves(curves: dict, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial.npz")
    np.savez_compressed(partial, **curves)
    os.replace(partial, path)
    return path


def load_pr_curves(path: Path) -> dict:
    with np.load(path) as data:
        return {k: data[k] for k in data.files}


def _mean_precision(precision: np.ndarray) -> np.ndarray:
    """Mean over the classes that have ground truth, per recall threshold."""
    valid = precision > -1
    counts = valid.sum(axis=1)
    return np.where(counts > 0, np.where(valid, precision, 0.0).sum(axis=1) / np.maximum(counts, 1), np.nan)


def plot_pr_curves(curves: list[tuple[str, dict]], path: Path) -> Path:
    """One run: a curve per class (class colours) and their mean (black). Several: each run's mean."""
    fig, axes = _figure(1, 2, 11, 4.4)
    for ax, key, title in zip(axes[0], ("precision_50", "precision_50_95"), ("IoU 0.5", "IoU 0.5:0.95 (mean)")):
        for i, (label, data) in enumerate(curves):
            recall, precision = data["recall"], data[key]
            if len(curves) == 1:
                names = [str(n) for n in data["class_names"]]
                for k, name in enumerate(names):
                    if (precision[:, k] > -1).any():
                        ax.plot(recall, precision[:, k], color=np.array(class_colour(k)) / 255, linewidth=1,
                                label=name if len(names) <= 20 else None)
                ax.plot(recall, _mean_precision(precision), color="black", linewidth=2.2, label="mean")
            else:
                ax.plot(recall, _mean_precision(precision), color=run_colour(i), linewidth=2,
                        label=f"{label} (epoch {int(data['epoch'])})")
        ax.set_title(f"precision-recall, {title}")
        ax.set_xlabel("recall")
        ax.set_ylabel("precision")
        ax.set_xlim(0, 1)
        ax.set_ylim(-0.02, 1.02)
        ax.legend(fontsize=7, loc="upper right")
    return _save(fig, path)


# ---------------------------------------------------------------------------- label statistics


def label_statistics(rows, class_names: list[str]) -> dict:
    """Training boxes (crowd and difficult ones excluded, as training excludes them) per class,
    their widths and heights in pixels, and boxes per image, read column-wise from Arrow."""
    import pyarrow.compute as pc

    table = rows.select_columns(["objects"]).with_format("arrow")[:]
    objects = table.column("objects").combine_chunks()  # the Hub's struct of lists
    parents = pc.list_parent_indices(objects.field("category")).to_numpy(zero_copy_only=False)
    count = len(parents)
    ignored = np.zeros(count, dtype=bool)
    for key in ("iscrowd", "difficult"):
        ignored |= pc.list_flatten(objects.field(key)).to_numpy(zero_copy_only=False).astype(bool)
    bbox = pc.list_flatten(objects.field("bbox"))
    boxes = bbox.flatten().to_numpy(zero_copy_only=False).reshape(-1, 4) if count else np.zeros((0, 4))
    category = pc.list_flatten(objects.field("category")).to_numpy(zero_copy_only=False).astype(int) if count \
        else np.zeros(0, int)
    keep = ~ignored
    return {
        "class_names": list(class_names),
        "per_class": np.bincount(category[keep], minlength=len(class_names)),
        "widths": boxes[keep, 2],
        "heights": boxes[keep, 3],
        "per_image": np.bincount(parents[keep], minlength=len(table)) if count else np.zeros(len(table), int),
        "ignored": int(ignored.sum()),
    }


def plot_label_statistics(stats: dict, path: Path) -> Path:
    names, per_class = stats["class_names"], stats["per_class"]
    fig, axes = _figure(1, 3, 15, max(3.6, 0.18 * len(names) + 1.0), left=0.3 + 0.075 * max(map(len, names)))
    ax = axes[0, 0]
    order = np.argsort(per_class)
    ax.barh(np.arange(len(names)), per_class[order], color=[np.array(class_colour(k)) / 255 for k in order],
            edgecolor="black", linewidth=0.4)
    ax.set_yticks(np.arange(len(names)), [names[k] for k in order], fontsize=7 if len(names) > 20 else 9)
    ax.set_title(f"boxes per class ({int(per_class.sum())} boxes"
                 + (f", {stats['ignored']} crowd/difficult not counted)" if stats["ignored"] else ")"), fontsize=10)
    ax = axes[0, 1]
    widths, heights = stats["widths"], stats["heights"]
    if 0 < widths.size <= 5000:
        ax.scatter(widths, heights, s=6, alpha=0.5, color="#1f77b4", linewidths=0)
    elif widths.size:
        from matplotlib.colors import LogNorm

        top = float(max(widths.max(), heights.max(), 1.0))
        _, _, _, image = ax.hist2d(widths, heights, bins=50, range=[[0, top], [0, top]], norm=LogNorm(), cmap="viridis")
        fig.colorbar(image, ax=ax, label="boxes")
    ax.set_xlabel("box width (pixels)")
    ax.set_ylabel("box height (pixels)")
    ax.set_title("box width / height" + (" (log colour scale)" if widths.size > 5000 else ""), fontsize=10)
    ax = axes[0, 2]
    per_image = stats["per_image"]
    if per_image.size:
        ax.hist(per_image, bins=np.arange(per_image.max() + 2) - 0.5, color="#1f77b4", rwidth=0.85)
    ax.set_xlabel("boxes in the image")
    ax.set_ylabel("images")
    ax.set_title(f"boxes per image ({per_image.size} images, mean {per_image.mean() if per_image.size else 0:.1f})",
                 fontsize=10)
    return _save(fig, path)


def plot_run(runs: Runs, out_dir: Path, pr: list[tuple[str, dict]] | None = None) -> list[Path]:
    """Every plot the records support, for one run or overlaid runs."""
    written = plot_training(runs, out_dir) + plot_evaluation(runs, out_dir)
    if memory := plot_memory(runs, Path(out_dir) / "memory.png"):
        written.append(memory)
    if pr:
        written.append(plot_pr_curves(pr, Path(out_dir) / "pr_curves.png"))
    return written
