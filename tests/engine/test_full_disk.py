"""A full disk, for real: the operating system refuses to grow files past a limit (``RLIMIT_FSIZE``,
SIGXFSZ ignored, so writes fail with EFBIG as on a full filesystem). A checkpoint, ``best/`` or
``model/`` write that fails part-way leaves the previous one intact and resumable, says in one line
what failed and where, and stops the run with a non-zero exit code."""

from __future__ import annotations

import multiprocessing
import os
import resource
import signal
import subprocess
import sys

import torch
from safetensors.torch import save_file

from conftest import REPO, tiny_recipe, write_recipe
from hftrain.engine import checkpoints


def test_a_checkpoint_that_hits_a_full_disk_stops_the_run_and_keeps_the_previous_one(tmp_path, shapes_dir):
    run_dir = tmp_path / "run"
    recipe = tiny_recipe(shapes_dir, run_dir, train={"epochs": 1, "batch_size": 4},
                         checkpoint={"interval": 1, "keep": 3, "every_steps": 2})
    recipe["eval"] = {"interval": 5}
    path = write_recipe(tmp_path / "r.yaml", recipe)
    # from the checkpoint of step 4 on, no file of the process may grow past 200 kB (the weights are ~1 MB)
    proc = subprocess.run([sys.executable, "hftrain/train.py", str(path)], cwd=REPO, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "HFTRAIN_TEST_FILE_SIZE_LIMIT": "4:200000"})
    assert proc.returncode == 3, proc.stderr[-3000:]
    for row in ("tf32", "cudnn benchmark", "optimizer kernel", "channels last", "compile"):  # the GPU switches' header rows
        assert f"\n{row}" in proc.stdout, proc.stdout[:3000]
    failed = [line for line in proc.stderr.splitlines() if "failed" in line]
    assert len(failed) == 1, proc.stderr[-3000:]  # one line: what, where, why, what was kept
    line = failed[0]
    assert line.startswith("hftrain train: stopped: writing checkpoint step 4 failed at ")
    assert "step_00000004.partial" in line and "step_00000002 is intact" in line
    names = sorted(p.name for p in checkpoints.checkpoint_dir(run_dir).iterdir())
    assert names == ["step_00000002"]  # nothing half-written left behind
    assert checkpoints.resolve_resume(run_dir, True).name == "step_00000002"  # verifies

    from hftrain.train import main  # with room again, the run resumes from the kept checkpoint and finishes

    assert main([str(path), "--resume"]) == 0
    assert (run_dir / "model" / "model.safetensors").is_file()
    assert sorted(p.name for p in checkpoints.checkpoint_dir(run_dir).iterdir())[-1] == "step_00000006"


class BigWriter:
    """Stands in for a detector: ``save`` writes 1 MB of weights (a real file, through safetensors)."""

    def __init__(self, value: float):
        self.value = value

    def save(self, directory):
        os.makedirs(directory, exist_ok=True)
        save_file({"w": torch.full((256, 1024), self.value)}, os.path.join(directory, "model.safetensors"))


def _save_with_limit(target, result):
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
    try:
        checkpoints.save_pretrained_dir(BigWriter(2.0), target, {"epoch": 2})
    except checkpoints.CheckpointWriteError as err:
        resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
        result.write_text(str(err))
        os._exit(3)
    os._exit(0)


def test_a_failed_best_write_leaves_the_good_folder(tmp_path):
    from safetensors.torch import load_file

    best = tmp_path / "best"
    checkpoints.save_pretrained_dir(BigWriter(1.0), best, {"epoch": 1})
    child = multiprocessing.get_context("fork").Process(target=_save_with_limit, args=(best, tmp_path / "error.txt"))
    child.start()
    child.join(60)
    assert child.exitcode == 3
    message = (tmp_path / "error.txt").read_text()
    assert "\n" not in message and message.startswith("writing best/ failed at ") and "best.partial" in message
    assert "File too large" in message and "left as it was" in message  # why, and what was kept
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best", "error.txt"]  # no .partial, no .old
    assert float(load_file(best / "model.safetensors")["w"][0, 0]) == 1.0
    assert (best / "hftrain_info.json").read_text().count('"epoch": 1') == 1
