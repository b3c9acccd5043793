"""Memory in view: host figures for real on a CPU run; the CUDA figures through the same code path with
the allocator's counters supplied by a test double (several processes, the creep warning)."""

from __future__ import annotations

import json

import pytest
import torch
from accelerate.state import AcceleratorState

import hftrain.health.memory_view as memory_view
from conftest import records, tiny_recipe, write_recipe
from hftrain.health.memory_view import GIB, MemoryView
from hftrain.recipe import load_recipe
from hftrain.train import train


class FakeCounters:
    """The caching allocator's counters, scripted: ``peaks`` is consumed one per read."""

    def __init__(self, allocated=1.0, reserved=1.5, peaks=(2.0,), total=80.0):
        self.allocated_gb, self.reserved_gb, self.peaks, self.total_gb = allocated, reserved, list(peaks), total
        self.resets = 0

    def total(self):
        return int(self.total_gb * GIB)

    def allocated(self):
        return int(self.allocated_gb * GIB)

    def reserved(self):
        return int(self.reserved_gb * GIB)

    def peak(self):
        return int((self.peaks[0] if self.peaks else 0.0) * GIB)

    def reset_peak(self):
        self.resets += 1
        if len(self.peaks) > 1:
            self.peaks.pop(0)


class Log:
    def __init__(self):
        self.lines = []

    def print(self, *lines):
        self.lines.extend(lines)


def two_processes(other: dict):
    """A gather as Accelerate's under 2 processes: this process's row, then the other's."""
    def gather(tensor):
        if tensor.dim() == 2:  # the window's figures, keys sorted
            keys = sorted(other)
            theirs = torch.tensor([[other[k] for k in keys]], dtype=tensor.dtype)
            return torch.cat([tensor, theirs])
        return torch.cat([tensor, torch.tensor([other["epoch_peak"]], dtype=tensor.dtype)])
    return gather


def test_window_takes_the_maximum_over_processes_and_names_the_peak_process():
    counters = FakeCounters(allocated=1.0, reserved=1.5, peaks=[2.0])
    view = MemoryView(counters, [], lambda t: t, Log())
    mine = view.read()
    other = {**mine, "gpu_peak_gb": 3.5, "gpu_reserved_gb": 1.0, "host_rss_gb": mine["host_rss_gb"] / 2}
    view = MemoryView(FakeCounters(allocated=1.0, reserved=1.5, peaks=[2.0]), [], two_processes(other), Log())
    view.after_empty_cache()
    values = view.window("cpu")
    assert values["gpu_peak_gb"] == pytest.approx(3.5) and values["gpu_peak_process"] == 1
    assert values["gpu_reserved_gb"] == pytest.approx(1.5)  # this process's, the larger
    assert values["gpu_cached_free_gb"] == pytest.approx(0.5)  # reserved - allocated
    assert values["host_rss_gb"] > 0.01  # this process's real resident memory
    assert values["empty_cache_calls"] == 1 and view.window("cpu")["empty_cache_calls"] == 0
    assert "peak 3.50G (process 1)" in MemoryView.line(values) and MemoryView.bar_text(values) == "GPU 3.50G peak"


def test_the_peak_is_since_the_last_log_line():
    counters = FakeCounters(peaks=[2.0, 1.2])
    view = MemoryView(counters, [], lambda t: t, Log())
    assert view.read()["gpu_peak_gb"] == pytest.approx(2.0)
    assert counters.resets == 1 and view.read()["gpu_peak_gb"] == pytest.approx(1.2)


def creep_view(peaks):
    counters = FakeCounters(peaks=[peaks[0]])
    log = Log()
    return MemoryView(counters, [], lambda t: t, log), counters, log


def test_creep_warns_once_when_the_peak_grows_three_epochs_at_the_same_shapes():
    view, counters, log = creep_view([1.0])
    canvas = torch.zeros(2, 3, 64, 64)
    found = []
    for epoch, peak in enumerate([1.0, 1.2, 1.4, 1.6, 1.8], 1):
        counters.peaks = [peak]
        view.after_batch(canvas)
        found.append(view.end_epoch(epoch, phase=0, batch_size=2, device="cpu"))
    assert [f is not None for f in found] == [False, False, True, False, False]  # once
    assert found[2]["peaks_gb"] == pytest.approx([1.0, 1.2, 1.4])
    assert any("peak GPU memory grew in each of the last 3 epochs" in line for line in log.lines)


@pytest.mark.parametrize("change", ["phase", "batch", "canvas", "flat"])
def test_no_creep_warning_across_a_phase_batch_or_canvas_change_or_a_flat_peak(change):
    view, counters, log = creep_view([1.0])
    for epoch, peak in enumerate([1.0, 1.2, 1.4], 1):
        counters.peaks = [1.0 if change == "flat" else peak]
        second = epoch >= 2
        view.after_batch(torch.zeros(2, 3, 96 if change == "canvas" and second else 64, 64))
        assert view.end_epoch(epoch, phase=1 if change == "phase" and second else 0,
                              batch_size=4 if change == "batch" and second else 2, device="cpu") is None
    assert log.lines == []


def test_a_cpu_run_shows_host_memory_in_console_metrics_and_plots(tmp_path, shapes_dir):
    AcceleratorState._reset_state(reset_partial_state=True)
    recipe = tiny_recipe(shapes_dir, tmp_path / "run", train={"epochs": 1}, plots={"enabled": True, "images": 0})
    recipe["data"]["cache"] = "ram"  # what the shared RAM cache holds is shown too
    train(load_recipe(write_recipe(tmp_path / "r.yaml", recipe)))
    AcceleratorState._reset_state(reset_partial_state=True)
    run_dir = tmp_path / "run"
    windows = records(run_dir, "train")
    assert windows and all(r["host_rss_gb"] > 0.05 for r in windows)  # a Python process with torch: > 50 MB
    assert all("gpu_peak_gb" not in r for r in windows)  # no CUDA here, no GPU figures made up
    cached = [r["ram_cache_gb"] for r in windows]
    assert cached == sorted(cached) and 0 < cached[-1] < 0.01  # fills during the first epoch: 24 images of 64 px
    log = (run_dir / "train.log").read_text()
    assert "memory            : no CUDA device; host: process" in log and "RAM cache" in log
    assert " RSS " in log  # every log line
    assert (run_dir / "plots" / "memory.png").is_file()


def test_the_cuda_figures_reach_metrics_and_the_creep_warning_through_the_loop(tmp_path, shapes_dir, monkeypatch):
    """The same run with the allocator's counters of a (pretend) GPU whose peak grows every epoch."""
    counters = FakeCounters(allocated=0.5, reserved=0.75, peaks=[1.0], total=80.0)
    grow = {"peak": 1.0}

    def reset_peak():  # each log line's peak a little higher than the last: a leak
        counters.resets += 1
        grow["peak"] += 0.1
        counters.peaks = [grow["peak"]]

    counters.reset_peak = reset_peak
    monkeypatch.setattr(memory_view, "counters_for", lambda device: counters)
    AcceleratorState._reset_state(reset_partial_state=True)
    recipe = tiny_recipe(shapes_dir, tmp_path / "run", train={"epochs": 4}, log={"interval": 2},
                         eval={"interval": 4})
    train(load_recipe(write_recipe(tmp_path / "r.yaml", recipe)))
    AcceleratorState._reset_state(reset_partial_state=True)
    run_dir = tmp_path / "run"
    windows = records(run_dir, "train")
    assert windows[0]["gpu_reserved_gb"] == pytest.approx(0.75) and windows[0]["gpu_peak_process"] == 0
    assert [r["gpu_peak_gb"] for r in windows] == sorted(r["gpu_peak_gb"] for r in windows)
    (creep,) = records(run_dir, "memory_creep")
    assert creep["epoch"] == 3 and creep["growth_gb"] > 0
    log = (run_dir / "train.log").read_text()
    assert "GPU total 80.0 GiB, no cap" in log and "[memory] WARNING: peak GPU memory grew" in log
    assert json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])  # still valid JSON lines
