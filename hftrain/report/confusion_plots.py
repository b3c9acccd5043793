"""The confusion matrix and the precision / recall / F1 against confidence curves of an evaluation
(:class:`hftrain.metrics.confusion.ConfidenceReport`), as ultralytics draws them after validation.

Files (in ``plots/`` during training, in ``eval_WEIGHTS_plots/`` for ``hftrain eval``):
``confusion_matrix.json`` (the raw counts, class names, threshold, IoU; numpy only, written
without matplotlib too), ``confusion_matrix.png`` (counts) and ``confusion_matrix_normalized.png``
(each column divided by its sum), rows the predicted class and columns the true class, the last of
each "background"; ``f1_curve.png``, ``p_curve.png``, ``r_curve.png``: one thin line per class
with ground truth, their mean over classes bold, the recommended threshold dashed.

matplotlib's object-oriented API only (no pyplot), as :mod:`hftrain.report.plots`: safe on the
pictures' background thread.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from hftrain.metrics.confusion import ConfidenceReport
from hftrain.report import plots
from hftrain.report.draw import class_colour

JSON_FILE = "confusion_matrix.json"
MATRIX_FILES = {False: "confusion_matrix.png", True: "confusion_matrix_normalized.png"}
CURVE_FILES = {"f1": "f1_curve.png", "precision": "p_curve.png", "recall": "r_curve.png"}
ANNOTATE_UP_TO = 30
"""Classes up to which every cell carries its number (ultralytics: 30)."""
LEGEND_UP_TO = 20
"""Classes up to which the curves name each class in the legend."""


def _figure(width: float, height: float):
    """One figure laid out by matplotlib (room for class names of any length)."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def save_confusion_json(report: ConfidenceReport, path: Path, epoch: int | None = None) -> Path:
    """``confusion_matrix.json``, written under a temporary name and renamed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps({**({"epoch": epoch} if epoch is not None else {}), **report.to_json()}, indent=1))
    os.replace(partial, path)
    return path


def plot_confusion_matrix(report: ConfidenceReport, path: Path, normalized: bool = False) -> Path:
    """A heat map of the matrix: rows predicted, columns true, background last."""
    names = list(report.class_names) + ["background"]
    n = len(names)
    values = report.normalized() if normalized else report.matrix.astype(float)
    side = min(16.0, max(6.0, 0.4 * n + 3.0))
    fig = _figure(side + 1.0, side)
    ax = fig.add_subplot()
    shown = np.where(values > 0, values, np.nan)  # empty cells stay white
    image = ax.imshow(shown, cmap="Blues", aspect="auto", vmin=0.0, vmax=1.0 if normalized else max(float(values.max()), 1.0))
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    font = 8 if n <= 12 else 6 if n <= ANNOTATE_UP_TO else 5
    ax.set_xticks(np.arange(n), names, rotation=90, fontsize=font)
    ax.set_yticks(np.arange(n), names, fontsize=font)
    if n <= ANNOTATE_UP_TO:
        top = np.nanmax(shown) if np.isfinite(shown).any() else 1.0
        for (row, col), value in np.ndenumerate(values):
            if value > 0:
                ax.text(col, row, f"{value:.2f}" if normalized else f"{int(value)}", ha="center", va="center",
                        fontsize=font, color="white" if value > 0.6 * top else "black")
    ax.set_xlabel("true class")
    ax.set_ylabel("predicted class")
    how = "normalised by column (share of each true class)" if normalized else "counts"
    ax.set_title(f"confusion matrix, {how}\nIoU {report.iou:g}, confidence >= {report.threshold:.3f} "
                 f"({report.threshold_source})", fontsize=10)
    return plots._save(fig, Path(path))


def plot_confidence_curve(report: ConfidenceReport, kind: str, path: Path) -> Path:
    """``kind`` (f1, precision or recall) against the confidence threshold: a thin line per class with
    ground truth, the mean over those classes bold, the recommended threshold dashed."""
    curve = getattr(report, kind)
    label = {"f1": "F1", "precision": "precision", "recall": "recall"}[kind]
    fig, axes = plots._figure(1, 1, 9.0, 5.0)
    fig.subplots_adjust(right=0.74)  # the legend beside the axes
    ax = axes[0, 0]
    present = np.flatnonzero(report.boxes > 0)
    for k in present:
        ax.plot(report.thresholds, curve[k], linewidth=1.0, color=np.array(class_colour(int(k))) / 255,
                label=report.class_names[k] if len(present) <= LEGEND_UP_TO else None)
    mean = report.mean(curve)
    if report.recommended is not None:
        j = int(np.argmin(np.abs(report.thresholds - report.recommended)))
        bold = f"all classes {mean[j]:.3f} at {report.recommended:.3f}"
        ax.axvline(report.recommended, color="grey", linestyle="--", linewidth=1.0)
    else:
        bold = "all classes (nothing recommended: F1 0 everywhere)"
    ax.plot(report.thresholds, mean, linewidth=3.0, color="#1f77b4", label=bold)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("confidence threshold (detections with score >= it)")
    ax.set_ylabel(label)
    ax.set_title(f"{label} against confidence, IoU {report.iou:g}"
                 + ("" if len(present) <= LEGEND_UP_TO else f" ({len(present)} classes, thin)"), fontsize=10)
    ax.legend(bbox_to_anchor=(1.02, 1), loc="upper left", fontsize=7, frameon=False)
    return plots._save(fig, Path(path))


def write_confusion_plots(report: ConfidenceReport, out_dir: Path, matplotlib: bool, epoch: int | None = None) -> list[Path]:
    """The json (always) and, with matplotlib, the two matrices and the three curves."""
    out_dir = Path(out_dir)
    written = [save_confusion_json(report, out_dir / JSON_FILE, epoch)]
    if matplotlib:
        for normalized, name in MATRIX_FILES.items():
            written.append(plot_confusion_matrix(report, out_dir / name, normalized))
        for kind, name in CURVE_FILES.items():
            written.append(plot_confidence_curve(report, kind, out_dir / name))
    return written
