"""RAM cache of decoded, resized uint8 images (``data.cache: ram``): one copy per machine.

The first dataloader worker that needs image ``i`` decodes and resizes it and writes it into
the cache; every worker and every training process on the machine reads it from there on.

Where the bytes live: one memory-backed file (``memfd_create``) per cached split, made before
any worker starts by the first training process of the machine (local rank 0; the others
attach to it). Its size is known before anything is decoded: the resized size of every image
follows from the rows' height/width and the resize rule, so the file is laid out once::

    magic | n | offsets[n + 1] | shapes[n, 2] (int32 h, w) | states[n] (uint8) | pad | pixels

Every process reads and writes it with ``pread``/``pwrite``. A forked worker inherits the
descriptor; a spawned worker, and the other training processes, open it through
``/proc/<pid>/fd/<fd>`` of a process that holds it (pickling a cache sends only that pair).
The memory goes back to the system when the last process holding the file exits: nothing to
clean up after a crash, and no ``/dev/shm`` size limit applies (Docker's default is 64 MB).

Filling: the pixels are written, then the shape, then the state byte FILLED. A file
guarantees that a read issued after a write returned sees that write, so a process that reads
FILLED then reads the pixels written before it, on any CPU. Two workers filling the same slot
write the same bytes. An image that fails to decode leaves its slot empty (it is tried again
the next time, as without the cache, and counted as failed each time), and so does an image
whose decoded size is not its annotated height/width (``DetectionDataset`` skips it, counted,
before it reaches the cache). A slot holds any image of at most its size in bytes; pixels
larger than their slot (a guard: the loader never puts them) are refused, the slot marked
TOO_LARGE and reported once.

What is cached: the training split, and the validation split with ``data.cache_val`` (it is
read only every ``eval.interval`` epochs, so it gains less per byte). Boxes and labels are not
cached: they come from the Arrow rows, which are memory-mapped already.

Memory: before the file is made, its size (the estimate is exact: it is the file size) is
compared with the memory the machine can still give (``MemAvailable``, or less under a cgroup
limit) minus ``data.cache_margin_gb``; the cache is refused with a
:class:`RamCacheRefused` naming ``data.cache`` when it does not fit. Under several training
processes launched together (``torch.distributed`` initialised) there is one copy per machine;
a process on its own counts ``LOCAL_WORLD_SIZE`` copies.
``HFTRAIN_TEST_AVAILABLE_MEMORY`` (bytes) replaces the reading, for the tests only.
"""

from __future__ import annotations

import os
import socket
import weakref
from pathlib import Path

import numpy as np
import torch

from hftrain.recipe import RecipeError

MAGIC = b"HFTRAMC1"
EMPTY, FILLED, TOO_LARGE = 0, 1, 2
PAGE = 4096
GiB = 1024 ** 3


class RamCacheRefused(RecipeError):
    """``data.cache: ram`` does not fit in the memory this machine has available."""

    def __init__(self, problems: list[str]):
        super().__init__(problems, "data.cache")


def output_sizes(rows, resize) -> np.ndarray:
    """(N, 2) resized (height, width) of every row, from its annotated size and ``resize``."""
    table = rows.select_columns(["height", "width"]).with_format("arrow")[:]
    heights, widths = table.column("height").to_numpy(), table.column("width").to_numpy()
    return np.array([resize.output_size(int(h), int(w)) for h, w in zip(heights, widths)],
                    dtype=np.int64).reshape(-1, 2)


def layout(sizes: np.ndarray) -> dict:
    """Byte positions of the cache file for images of these resized (height, width)."""
    count = len(sizes)
    offsets = np.zeros(count + 1, dtype=np.int64)
    np.cumsum(sizes[:, 0] * sizes[:, 1] * 3, out=offsets[1:])
    pixels_at = _positions(count)[2]
    return {"count": count, "offsets": offsets, "nbytes": pixels_at + int(offsets[-1])}


def _positions(count: int) -> tuple[int, int, int]:
    """Where the shapes, the states and the pixels start in a cache of ``count`` images."""
    shapes_at = len(MAGIC) + 8 + 8 * (count + 1)
    states_at = shapes_at + 8 * count
    return shapes_at, states_at, -(-(states_at + count) // PAGE) * PAGE


def cache_bytes(sizes: np.ndarray) -> int:
    """The estimate: the exact size of the cache file for these resized sizes."""
    return layout(sizes)["nbytes"]


class RamCache:
    """Resized uint8 (3, H, W) images by dataset index, in a file in RAM shared by processes."""

    def __init__(self, fd: int):
        self.fd = fd
        self._closer = weakref.finalize(self, os.close, fd)
        head = os.pread(fd, len(MAGIC) + 8, 0)
        if head[:len(MAGIC)] != MAGIC:
            raise ValueError(f"data.cache: descriptor {fd} does not hold an hftrain RAM cache")
        count = int(np.frombuffer(head[len(MAGIC):], dtype=np.int64)[0])
        offsets = np.frombuffer(os.pread(fd, 8 * (count + 1), len(MAGIC) + 8), dtype=np.int64)
        self.count = count
        self.offsets = offsets
        self.shapes_at, self.states_at, self.pixels_at = _positions(count)
        self.nbytes = self.pixels_at + int(offsets[-1])

    @classmethod
    def allocate(cls, sizes: np.ndarray, name: str = "images") -> RamCache:
        """A new, empty cache with one slot per (height, width) in ``sizes``. The file is sparse:
        memory is taken as slots fill."""
        plan = layout(np.asarray(sizes, dtype=np.int64).reshape(-1, 2))
        fd = os.memfd_create(f"hftrain-ram-cache-{name}", os.MFD_CLOEXEC)
        try:
            os.ftruncate(fd, plan["nbytes"])  # zero-filled: every state EMPTY
            header = MAGIC + np.int64(plan["count"]).tobytes() + plan["offsets"].tobytes()
            _write(fd, header, 0)
        except BaseException:
            os.close(fd)
            raise
        return cls(fd)

    @classmethod
    def attach(cls, pid: int, fd: int) -> RamCache:
        """The cache that process ``pid`` holds as descriptor ``fd`` (same machine)."""
        return cls(_open_held(pid, fd))

    def __getstate__(self) -> dict:
        return {"pid": os.getpid(), "fd": self.fd}  # a spawned worker opens it through /proc

    def __setstate__(self, state: dict) -> None:
        self.__init__(_open_held(state["pid"], state["fd"]))

    def __len__(self) -> int:
        return self.count

    @property
    def pixel_bytes(self) -> int:
        return int(self.offsets[-1])

    def capacity(self, index: int) -> int:
        return int(self.offsets[index + 1] - self.offsets[index])

    def state(self, index: int) -> int:
        return os.pread(self.fd, 1, self.states_at + index)[0]

    def states(self) -> np.ndarray:
        """EMPTY, FILLED or TOO_LARGE for every slot."""
        return np.frombuffer(os.pread(self.fd, self.count, self.states_at), dtype=np.uint8)

    def get(self, index: int) -> torch.Tensor | None:
        """A copy of image ``index`` as uint8 (3, H, W), or None if it is not cached."""
        if self.state(index) != FILLED:
            return None
        height, width = np.frombuffer(os.pread(self.fd, 8, self.shapes_at + 8 * index), dtype=np.int32)
        pixels = torch.empty((3, int(height), int(width)), dtype=torch.uint8)
        _read_into(self.fd, memoryview(pixels.numpy()).cast("B"), self.pixels_at + int(self.offsets[index]))
        return pixels

    def put(self, index: int, pixels: torch.Tensor) -> bool:
        """Store image ``index`` (uint8 (3, H, W)); False when it does not fit its slot."""
        _, height, width = pixels.shape
        if 3 * height * width > self.capacity(index):
            if self.state(index) != TOO_LARGE:
                _write(self.fd, bytes([TOO_LARGE]), self.states_at + index)
                print(f"[hftrain] data.cache: image {index} resized to {height}x{width} is larger than its slot "
                      f"(its annotated height/width are not its real size): it is decoded every time", flush=True)
            return False
        data = pixels.contiguous().numpy()
        _write(self.fd, memoryview(data).cast("B"), self.pixels_at + int(self.offsets[index]))
        _write(self.fd, np.array([height, width], dtype=np.int32).tobytes(), self.shapes_at + 8 * index)
        _write(self.fd, bytes([FILLED]), self.states_at + index)  # last: readers trust the pixels from here on
        return True


def _open_held(pid: int, fd: int) -> int:
    path = f"/proc/{pid}/fd/{fd}"
    try:
        return os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except OSError as err:
        raise RuntimeError(f"data.cache: cannot open the RAM cache of process {pid} ({path}): {err}; "
                           "the processes must run on one machine and see each other's /proc "
                           "(or set data.cache: none)") from None


def _write(fd: int, data, position: int) -> None:
    view = memoryview(data).cast("B")
    while view.nbytes:
        done = os.pwrite(fd, view, position)
        view, position = view[done:], position + done


def _read_into(fd: int, buffer: memoryview, position: int) -> None:
    while buffer.nbytes:
        done = os.preadv(fd, [buffer], position)
        if done == 0:
            raise OSError(f"data.cache: RAM cache ended at byte {position}")
        buffer, position = buffer[done:], position + done


# ---------------------------------------------------------------------------- memory check


def available_memory() -> tuple[int, str]:
    """Bytes this machine can still give, and where the figure comes from: MemAvailable from
    /proc/meminfo (else the free pages from ``os.sysconf``), or less under a cgroup memory limit."""
    injected = os.environ.get("HFTRAIN_TEST_AVAILABLE_MEMORY")
    if injected:
        return int(injected), "HFTRAIN_TEST_AVAILABLE_MEMORY"
    available, source = None, "MemAvailable"
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                available = int(line.split()[1]) * 1024
    except OSError:
        pass
    if available is None:
        available, source = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"), "free pages (sysconf)"
    room = _cgroup_room()
    if room is not None and room < available:
        return room, "cgroup memory limit"
    return available, source


def _cgroup_room() -> int | None:
    """Limit minus usage (not counting inactive file cache) of this process's memory cgroup."""
    for limit_file, usage_file, inactive_key in (
        ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current", "inactive_file"),  # cgroup v2
        ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes",
         "total_inactive_file"),  # cgroup v1
    ):
        try:
            limit_text = Path(limit_file).read_text().strip()
            usage = int(Path(usage_file).read_text())
        except (OSError, ValueError):
            continue
        if limit_text == "max" or int(limit_text) >= 1 << 60:
            return None
        inactive = 0
        try:
            for line in (Path(limit_file).parent / "memory.stat").read_text().splitlines():
                key, _, value = line.partition(" ")
                if key == inactive_key:
                    inactive = int(value)
        except (OSError, ValueError):
            pass
        return int(limit_text) - (usage - inactive)
    return None


def check_memory(need: int, copies: int, margin_gb: float, what: str) -> str:
    """Raise :class:`RamCacheRefused` unless ``copies`` x ``need`` bytes plus the margin fit in
    the available memory; returns the line that reports the estimate."""
    available, source = available_memory()
    total = need * copies
    margin = int(margin_gb * GiB)
    times = f" x {copies} processes on this machine, one copy each" if copies > 1 else ""
    if total + margin > available:
        raise RamCacheRefused([
            f"data.cache: ram needs {_size(total)} ({what}{times}) plus data.cache_margin_gb "
            f"{margin_gb:g} GiB, but only {_size(available)} is available ({source}). "
            "Set data.cache: none, cache fewer images (data.train.subset; data.cache_val: false), "
            "or make them smaller (data.min_size / data.max_size)"])
    return (f"data.cache: ram: {_size(total)} in RAM ({what}{times}), "
            f"{_size(available)} available ({source}), margin {margin_gb:g} GiB")


def _size(nbytes: int) -> str:
    return f"{nbytes / GiB:.2f} GiB" if nbytes >= GiB / 10 else f"{nbytes / 2 ** 20:.2f} MiB"


# ---------------------------------------------------------------------------- building


def make_ram_caches(data_cfg, rows_by_split: dict, resize) -> tuple[dict[str, RamCache], list[str]]:
    """The caches ``data.cache`` asks for (train; val too with ``data.cache_val``), by split name,
    and the note reporting their size. Call on every training process (see :func:`ram_caches`)."""
    if data_cfg.cache == "none":
        return {}, []
    names = ["train"] + (["val"] if data_cfg.cache_val else [])
    size = f"{resize.min_size} x {resize.min_size}" if resize.square else \
        f"min_size {resize.min_size} / max_size {resize.max_size}"
    what = " + ".join(f"{len(rows_by_split[name])} {name} images" for name in names) + f" resized to {size}"
    caches, note = ram_caches({name: output_sizes(rows_by_split[name], resize) for name in names},
                              data_cfg.cache_margin_gb, what)
    return caches, [note]


def ram_caches(sizes: dict[str, np.ndarray], margin_gb: float, what: str) -> tuple[dict[str, RamCache], str]:
    """One cache per entry of ``sizes`` (resized (height, width) per image) and the note reporting
    them, after the memory check. With ``torch.distributed`` initialised, local rank 0 checks the
    memory and makes the caches and the other processes of its machine attach to them."""
    need = sum(cache_bytes(s) for s in sizes.values())

    def make() -> tuple[dict[str, RamCache], str]:
        if not hasattr(os, "memfd_create"):
            raise RamCacheRefused(["data.cache: ram needs Linux (memfd_create and /proc); set data.cache: none"])
        copies = 1 if _distributed() else max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
        note = check_memory(need, copies, margin_gb, what)
        return {name: RamCache.allocate(split_sizes, name) for name, split_sizes in sizes.items()}, note

    return _share_on_machine(make) if _distributed() else make()


def _distributed() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _machine_id() -> str:
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        boot = ""
    return f"{socket.gethostname()}/{boot}"


def _share_on_machine(make) -> tuple[dict[str, RamCache], str]:
    """Local rank 0 runs ``make``; every process learns its outcome (caches to attach to, or the
    refusal, raised everywhere so that no process waits for the others)."""
    import torch.distributed as dist

    local_rank = int(os.environ.get("LOCAL_RANK", dist.get_rank()))
    machine = _machine_id()
    caches, offer = {}, None
    if local_rank == 0:
        try:
            caches, note = make()
            offer = ("made", os.getpid(), {name: cache.fd for name, cache in caches.items()}, note)
        except RamCacheRefused as err:
            offer = ("refused", err.problems)
        except Exception as err:  # every process must hear of it, not wait in the gather below
            offer = ("failed", f"{type(err).__name__}: {err}")
    everyone: list = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, (machine, local_rank, offer))
    processes = sum(1 for m, _, _ in everyone if m == machine)
    maker = next((o for m, r, o in everyone if m == machine and r == 0), None)
    if maker is None:
        raise RuntimeError(f"data.cache: no process with LOCAL_RANK 0 on this machine ({machine}) "
                           "to make the RAM cache")
    if maker[0] == "refused":
        raise RamCacheRefused(maker[1])
    if maker[0] == "failed":
        raise RuntimeError(f"data.cache: making the RAM cache failed on local rank 0: {maker[1]}")
    _, pid, fds, note = maker
    if local_rank != 0:
        caches = {name: RamCache.attach(pid, fd) for name, fd in fds.items()}
    return caches, f"{note}; one copy shared by the {processes} processes on this machine"
