"""Rows of the benchmark table: one measurement of ours against a baseline, run side by side.

Every bench script builds its rows with :func:`row` and hands them to :func:`emit`, which prints
them and, with ``--json PATH``, writes them for ``bench/run_all.py`` to collect. ``better``
is ours relative to the baseline, always oriented so that above 1 means ours is better
(throughput: ours / baseline; time: baseline / ours).
"""

from __future__ import annotations

import json
import os
import platform
import sys
from pathlib import Path


def row(bench: str, measure: str, ours: float | None, baseline: float | None, unit: str, *,
        higher_is_better: bool, target: str = "", target_ratio: float | None = None,
        note: str = "", extra: dict | None = None, met: bool | None = None) -> dict:
    """One table row. ``target_ratio``: ``better`` must reach it for the target to be met
    (``met`` given explicitly overrides, for targets that are not a ratio)."""
    better = None
    if ours is not None and baseline is not None and ours > 0 and baseline > 0:
        better = ours / baseline if higher_is_better else baseline / ours
    if met is None and target_ratio is not None and better is not None:
        met = better >= target_ratio
    return {"bench": bench, "measure": measure, "ours": ours, "baseline": baseline, "unit": unit,
            "better": better, "higher_is_better": higher_is_better, "target": target, "met": met,
            "note": note, **({"extra": extra} if extra else {})}


def machine() -> dict:
    """What the figures were taken on (absolute times only compare on the same hardware)."""
    import torch

    from hftrain.engine.publish import cpu_name

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"cpu": cpu_name(), "cpus": os.cpu_count(), "python": sys.version.split()[0], "torch": torch.__version__,
            "platform": platform.platform(), "gpu": gpu, "load_average": os.getloadavg()}


def fmt(value, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) < 1000 else f"{value:,.0f}"
    return str(value)


def emit(rows: list[dict], json_path: str | None, notes: list[str] | None = None) -> None:
    for r in rows:
        ratio = f"{r['better']:.2f}x" if r["better"] is not None else "-"
        print(f"[{r['bench']}] {r['measure']}: ours {fmt(r['ours'])} vs baseline {fmt(r['baseline'])} {r['unit']} "
              f"-> {ratio} (target {r['target'] or '-'}, met: {r['met']}) {r['note']}")
    for line in notes or []:
        print(line)
    if json_path:
        Path(json_path).write_text(json.dumps({"rows": rows, "notes": notes or []}, indent=1))
