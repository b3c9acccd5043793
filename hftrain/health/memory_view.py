"""Memory in view: GPU and host memory figures for the header, the progress bar, every
``log.interval`` line, ``metrics.jsonl``, the trackers and ``plots/memory.png``.

Per process, read only on log steps (no host-device synchronisation: the caching allocator's
counters are host-side numbers):

- GPU (CUDA): allocated, reserved and peak allocated since the last log line, and reserved minus
  allocated (what fragmentation and the caching allocator hold), in GiB; the device's total memory
  and the recipe's cap in the header; GPU utilisation (%) where NVIDIA's management library
  (``nvidia-ml-py``) is installed, said once when it is not;
- host: the training process's resident memory, and the RAM cache's size (``data.cache: ram``:
  one copy on the machine, shared by every worker and process, counted by the pages it holds).

Under several processes each figure is the maximum over the processes, and the process holding
the GPU peak is named. The memory creep warning: when the epoch's peak allocated memory grows in
each of :data:`CREEP_EPOCHS` consecutive epochs of the same batch shapes (same phase, micro-batch
and largest canvas), by at least :data:`CREEP_MIN_GROWTH` in all, the run says so once (a leak
signal); a phase change, a different micro-batch or a larger canvas starts a new comparison.
"""

from __future__ import annotations

import os

import torch

GIB = 1024 ** 3
CREEP_EPOCHS = 3
CREEP_MIN_GROWTH = 0.05  # fraction of the first epoch's peak
CREEP_MIN_BYTES = 64 * 1024 ** 2
GPU_KEYS = ("gpu_allocated_gb", "gpu_reserved_gb", "gpu_peak_gb", "gpu_cached_free_gb")
HOST_KEYS = ("host_rss_gb", "ram_cache_gb")


class CudaCounters:
    """The caching allocator's counters of one CUDA device. Tests pass a double with these methods."""

    def __init__(self, device):
        self.device = device

    def total(self) -> int:
        return torch.cuda.get_device_properties(self.device).total_memory

    def allocated(self) -> int:
        return torch.cuda.memory_allocated(self.device)

    def reserved(self) -> int:
        return torch.cuda.memory_reserved(self.device)

    def peak(self) -> int:
        return torch.cuda.max_memory_allocated(self.device)

    def reset_peak(self) -> None:
        torch.cuda.reset_peak_memory_stats(self.device)


def counters_for(device) -> CudaCounters | None:
    """The counters of ``device`` when it is a CUDA device, else None (a CPU run has no GPU figures)."""
    return CudaCounters(device) if getattr(device, "type", str(device)) == "cuda" else None


def host_rss() -> int:
    """Resident memory of this process in bytes (Linux /proc; psutil elsewhere)."""
    try:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        import psutil  # a dependency of accelerate

        return psutil.Process().memory_info().rss


def held_bytes(caches) -> int:
    """Memory the RAM caches hold: the pages of their memory files (one copy per machine)."""
    return sum(os.fstat(cache.fd).st_blocks * 512 for cache in caches)


class GpuUtilisation:
    """GPU utilisation (%) through NVIDIA's management library, when installed."""

    def __init__(self, device, log):
        self.handle = None
        if getattr(device, "type", str(device)) != "cuda":
            return
        try:
            import pynvml  # nvidia-ml-py

            pynvml.nvmlInit()
            index = device.index if device.index is not None else torch.cuda.current_device()
            self.handle, self.nvml = pynvml.nvmlDeviceGetHandleByIndex(index), pynvml
        except Exception as err:  # noqa: BLE001 - optional: say once and go on
            log.print(f"GPU utilisation: not shown ({type(err).__name__}: {err}; pip install nvidia-ml-py)")

    def percent(self) -> float | None:
        return float(self.nvml.nvmlDeviceGetUtilizationRates(self.handle).gpu) if self.handle is not None else None


class MemoryView:
    """The run's memory figures. ``counters``: :class:`CudaCounters` on CUDA, None on a CPU (or a
    test double); ``caches``: the RAM caches (``data.cache: ram``); ``gather``: the accelerator's
    ``gather`` (every process's tensor, concatenated), for the maximum over processes."""

    def __init__(self, counters, caches, gather, log, utilisation: GpuUtilisation | None = None):
        self.counters, self.caches, self.gather, self.log = counters, list(caches), gather, log
        self.utilisation = utilisation
        self.empty_cache_calls = 0
        self.epoch_peak = 0
        self.canvas = (0, 0)  # the largest (height, width) of this epoch's batches
        self.history: list[tuple[tuple, int]] = []  # (shape key, epoch peak) of the comparable epochs
        self.warned = False

    def header(self, cap: float | None) -> str:
        """The header line: device total memory and the recipe's cap (cuda.memory_fraction)."""
        host = f"host: process {host_rss() / GIB:.2f} GiB resident"
        if self.caches:
            host += f", RAM cache {sum(c.nbytes for c in self.caches) / GIB:.2f} GiB when full"
        if self.counters is None:
            return f"no CUDA device; {host}"
        total = self.counters.total()
        capped = f", capped at {cap:.0%} = {cap * total / GIB:.1f} GiB" if cap else ", no cap"
        return f"GPU total {total / GIB:.1f} GiB{capped}; {host}"

    def after_batch(self, pixel_values: torch.Tensor) -> None:
        """Every micro-batch: the largest canvas of the epoch (for the creep warning's shape key)."""
        height, width = pixel_values.shape[-2:]
        if height * width > self.canvas[0] * self.canvas[1]:
            self.canvas = (int(height), int(width))

    def after_empty_cache(self) -> None:
        self.empty_cache_calls += 1

    def read(self) -> dict:
        """This process's figures now (GPU peak since the last read), in GiB; resets the peak."""
        values = {"host_rss_gb": host_rss() / GIB, "ram_cache_gb": held_bytes(self.caches) / GIB}
        if self.counters is not None:
            allocated, reserved, peak = self.counters.allocated(), self.counters.reserved(), self.counters.peak()
            self.counters.reset_peak()
            self.epoch_peak = max(self.epoch_peak, peak)
            values.update(gpu_allocated_gb=allocated / GIB, gpu_reserved_gb=reserved / GIB, gpu_peak_gb=peak / GIB,
                          gpu_cached_free_gb=(reserved - allocated) / GIB)
        if self.utilisation is not None and (percent := self.utilisation.percent()) is not None:
            values["gpu_util"] = percent
        return values

    def window(self, device) -> dict:
        """Every log line (a collective: every process calls it): the maximum over processes of each
        figure, the process with the GPU peak, and the ``empty_cache`` calls since the last line."""
        mine = self.read()
        keys = sorted(mine)
        everyone = self.gather(torch.tensor([[mine[k] for k in keys]], dtype=torch.float64, device=device)).cpu()
        values = dict(zip(keys, everyone.max(dim=0).values.tolist()))
        if "gpu_peak_gb" in values:
            values["gpu_peak_process"] = int(everyone[:, keys.index("gpu_peak_gb")].argmax())
        values["empty_cache_calls"], self.empty_cache_calls = self.empty_cache_calls, 0
        return values

    @staticmethod
    def bar_text(values: dict) -> str:
        """The progress bar's compact figure: GPU peak (or host resident memory on a CPU)."""
        if "gpu_peak_gb" in values:
            return f"GPU {values['gpu_peak_gb']:.2f}G peak"
        return f"RSS {values['host_rss_gb']:.2f}G"

    @staticmethod
    def line(values: dict) -> str:
        """The log line's memory part."""
        parts = []
        if "gpu_peak_gb" in values:
            parts.append(f"GPU alloc {values['gpu_allocated_gb']:.2f}G reserved {values['gpu_reserved_gb']:.2f}G "
                         f"peak {values['gpu_peak_gb']:.2f}G (process {values['gpu_peak_process']}) "
                         f"cached-free {values['gpu_cached_free_gb']:.2f}G")
        if "gpu_util" in values:
            parts.append(f"util {values['gpu_util']:.0f}%")
        parts.append(f"RSS {values['host_rss_gb']:.2f}G")
        if values.get("ram_cache_gb"):
            parts.append(f"RAM cache {values['ram_cache_gb']:.2f}G")
        return " ".join(parts)

    def end_epoch(self, epoch: int, phase: int, batch_size: int, device) -> dict | None:
        """Every process calls this at an epoch's end: the epoch's peak (maximum over processes) is
        compared with the previous epochs of the same shapes; returns the ``memory_creep`` record
        the first time the peak grew in :data:`CREEP_EPOCHS` consecutive epochs, else None."""
        if self.counters is None:
            return None
        self.epoch_peak = max(self.epoch_peak, self.counters.peak())
        peak = int(self.gather(torch.tensor([self.epoch_peak], dtype=torch.float64, device=device)).max())
        key = (phase, batch_size, self.canvas)
        self.epoch_peak, self.canvas = 0, (0, 0)
        if self.history and self.history[-1][0] != key:
            self.history = []  # other shapes: peaks are not comparable
        self.history.append((key, peak))
        peaks = [p for _, p in self.history[-CREEP_EPOCHS:]]
        grew = len(peaks) == CREEP_EPOCHS and all(b > a for a, b in zip(peaks, peaks[1:]))
        growth = peaks[-1] - peaks[0]
        if self.warned or not grew or growth < max(CREEP_MIN_BYTES, CREEP_MIN_GROWTH * peaks[0]):
            return None
        self.warned = True
        figures = ", ".join(f"{p / GIB:.2f}" for p in peaks)
        self.log.print(f"[memory] WARNING: peak GPU memory grew in each of the last {CREEP_EPOCHS} epochs at the same "
                       f"batch shapes ({figures} GiB, up to epoch {epoch}): a leak signal (tensors kept across steps, "
                       f"growing lists of outputs)")
        return {"epoch": epoch, "peaks_gb": [p / GIB for p in peaks], "growth_gb": growth / GIB}
