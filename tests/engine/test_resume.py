"""Exact resume after a real SIGKILL, atomic and verified checkpoints, signals, and several processes.

Every run here is a separate process, killed for real; the final weights of an interrupted and
resumed run must be bitwise equal to those of the same run done in one go.
"""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import REPO, tiny_recipe, write_recipe
from hftrain.engine import checkpoints
from hftrain.tools.eval import eval_main

STEPS = 12  # 24 images, batch 4, 2 epochs


def recipe_for(shapes_dir, run_dir, **checkpoint):
    recipe = tiny_recipe(shapes_dir, run_dir, train={"epochs": 2, "batch_size": 4},
                         checkpoint={"interval": 1, "keep": 3, "every_steps": 2, **checkpoint})
    recipe["data"]["num_workers"] = 1  # augmentation (hflip 0.5) in a worker process
    recipe["eval"] = {"interval": 5}
    return recipe


def command(recipe_path, processes, *extra):
    accelerate = Path(sys.executable).with_name("accelerate")
    if processes == 1:
        return [sys.executable, "hftrain/train.py", str(recipe_path), *extra]
    return [str(accelerate), "launch", "--config_file", str(REPO / "accelerate_configs" / "cpu_2proc.yaml"),
            "hftrain/train.py", str(recipe_path), *extra]


def run(recipe_path, processes=1, *extra, env=None, timeout=600):
    proc = subprocess.run(command(recipe_path, processes, *extra), cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})
    return proc


def step_records(run_dir):
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["type"] == "step"]


def wait_for_first_step(run_dir, timeout=300):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if step_records(run_dir):
                return
        except (FileNotFoundError, json.JSONDecodeError):
            pass
        time.sleep(0.02)
    raise TimeoutError(f"no optimizer step logged in {run_dir} within {timeout} s")


def start_and_kill_at(recipe_path, run_dir, processes, at_step) -> int:
    """Start a run in its own process group and SIGKILL the whole group once step ``at_step`` is logged."""
    proc = subprocess.Popen(command(recipe_path, processes), cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 300
    seen = 0
    while time.time() < deadline and proc.poll() is None:
        try:
            seen = max([r["step"] for r in step_records(run_dir)] or [0])
        except (FileNotFoundError, json.JSONDecodeError):
            pass
        if seen >= at_step:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the run finished before it could be killed"
    tree = descendants(proc.pid)  # torchrun starts its workers in their own sessions: the group alone misses them
    os.killpg(proc.pid, signal.SIGKILL)
    for pid in tree:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait()
    deadline = time.time() + 30
    while any(Path(f"/proc/{pid}").exists() for pid in tree) and time.time() < deadline:
        time.sleep(0.02)  # killed grandchildren are reaped by init, not by us
    return seen


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (Linux /proc), a machine crash's worth of processes."""
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        children = parents.get(todo.pop(), [])
        found += children
        todo += children
    return found


def assert_same_weights(a: Path, b: Path):
    wa, wb = load_file(a / "model" / "model.safetensors"), load_file(b / "model" / "model.safetensors")
    assert wa.keys() == wb.keys()
    different = [k for k in wa if not torch.equal(wa[k], wb[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


@pytest.fixture(scope="module")
def references(tmp_path_factory, shapes_dir):
    """Uninterrupted runs with 1 and 2 processes."""
    out = {}
    for processes in (1, 2):
        tmp = tmp_path_factory.mktemp(f"reference{processes}")
        path = write_recipe(tmp / "r.yaml", recipe_for(shapes_dir, tmp / "run"))
        proc = run(path, processes)
        assert proc.returncode == 0, proc.stderr[-3000:]
        out[processes] = tmp / "run"
    return out


@pytest.mark.parametrize("processes", [2])  # one process: test_kill_during_save_keeps_the_previous_checkpoint
def test_sigkill_then_resume_is_bitwise_identical(tmp_path, shapes_dir, references, processes):
    run_dir = tmp_path / "run"
    path = write_recipe(tmp_path / "r.yaml", recipe_for(shapes_dir, run_dir))
    steps = STEPS // processes
    killed_at = start_and_kill_at(path, run_dir, processes, at_step=steps // 2 + 1)
    assert 0 < killed_at < steps
    proc = run(path, processes, "--resume")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resumed from" in proc.stdout
    assert_same_weights(references[processes], run_dir)
    ours = {r["step"]: r["loss"] for r in step_records(run_dir)}
    reference = {r["step"]: r["loss"] for r in step_records(references[processes])}
    assert sorted(ours) == list(range(1, steps + 1))  # nothing logged twice, nothing missing
    assert ours == reference


def test_kill_during_save_keeps_the_previous_checkpoint(tmp_path, shapes_dir, references):
    run_dir = tmp_path / "run"
    path = write_recipe(tmp_path / "r.yaml", recipe_for(shapes_dir, run_dir))
    proc = run(path, 1, env={"HFTRAIN_TEST_KILL_DURING_SAVE": "4"})
    assert proc.returncode == -signal.SIGKILL
    names = sorted(p.name for p in checkpoints.checkpoint_dir(run_dir).iterdir())
    assert names == ["step_00000002", "step_00000004.partial"]
    assert checkpoints.resolve_resume(run_dir, True).name == "step_00000002"
    proc = run(path, 1, "--resume")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_same_weights(references[1], run_dir)


def test_corrupted_or_unsafe_checkpoints_are_skipped_or_refused(tmp_path, references):
    import shutil

    run_dir = tmp_path / "run"
    shutil.copytree(references[1], run_dir)
    newest, previous = checkpoints.complete_checkpoints(run_dir)[-1], checkpoints.complete_checkpoints(run_dir)[-2]
    weights = newest / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-10] ^= 0xFF
    weights.write_bytes(bytes(data))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        chosen = checkpoints.resolve_resume(run_dir, True)
    assert chosen == previous
    assert any(newest.name in str(w.message) and "checksum" in str(w.message) for w in caught)

    class Exploit:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    optimizer_file = previous / "optimizer.bin"
    optimizer_file.write_bytes(pickle.dumps(Exploit()))
    manifest = json.loads((previous / "manifest.json").read_text())
    manifest["files"]["optimizer.bin"] = {"size": optimizer_file.stat().st_size,
                                          "sha256": checkpoints._sha256(optimizer_file)}
    (previous / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(checkpoints.CheckpointError, match="refusing to load.*arbitrary unpickling"):
        checkpoints.resolve_resume(run_dir, str(previous))


def test_retention_keeps_the_newest_complete_checkpoints(references):
    names = [p.name for p in checkpoints.complete_checkpoints(references[1])]
    assert names == ["step_00000008", "step_00000010", "step_00000012"]  # keep=3, every 2 steps
    assert (references[1] / "best").is_dir()


def test_sigterm_checkpoints_at_the_next_step_and_resume_finishes(tmp_path, shapes_dir, references):
    run_dir = tmp_path / "run"
    path = write_recipe(tmp_path / "r.yaml", recipe_for(shapes_dir, run_dir, every_steps=None))
    proc = subprocess.Popen(command(path, 1), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_first_step(run_dir)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 143, err[-2000:]
    assert "resume with: hftrain train" in out and "--resume" in out
    saved = checkpoints.read_state(checkpoints.complete_checkpoints(run_dir)[-1])
    assert 1 <= saved["step"] < STEPS
    proc = run(path, 1, "--resume")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_same_weights(references[1], run_dir)


def test_a_second_signal_exits_at_once(tmp_path, shapes_dir):
    run_dir = tmp_path / "run"
    path = write_recipe(tmp_path / "r.yaml", recipe_for(shapes_dir, run_dir, every_steps=None))
    proc = subprocess.Popen(command(path, 1), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_first_step(run_dir)
    proc.send_signal(signal.SIGINT)
    # two signals sent back to back reach Python's handler once: wait until the first was handled
    for line in proc.stderr:
        if "SIGINT received" in line:
            break
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130
    assert "checkpoint saved" not in out


def test_failure_on_one_process_ends_all_of_them(tmp_path, shapes_dir):
    path = write_recipe(tmp_path / "r.yaml", recipe_for(shapes_dir, tmp_path / "run"))
    started = time.time()
    proc = run(path, 2, env={"HFTRAIN_TEST_FAIL_AT_STEP": "2", "HFTRAIN_TEST_FAIL_RANK": "1"}, timeout=300)
    assert proc.returncode != 0
    assert "injected failure on process 1 at step 2" in proc.stderr
    assert time.time() - started < 240  # ended, not hung


def test_evaluation_on_two_processes_equals_one(tmp_path, references):
    import shutil

    run_dir = tmp_path / "run"
    shutil.copytree(references[1], run_dir)  # 8 validation images: batch 4 x 2 processes
    recipe = json.loads(json.dumps(__import__("yaml").safe_load((run_dir / "recipe.yaml").read_text())))
    recipe["eval"]["batch_size"] = 3  # 8 images over 2 processes x 3 leaves a padded last batch
    write_recipe(run_dir / "recipe.yaml", recipe)
    results = {}
    assert eval_main([str(run_dir)]) == 0  # one process: in this one (the two-process run is the subprocess)
    results[1] = json.loads((run_dir / "eval_best.json").read_text())
    cmd = [str(Path(sys.executable).with_name("accelerate")), "launch", "--config_file",
           str(REPO / "accelerate_configs" / "cpu_2proc.yaml"), "-m", "hftrain.cli", "eval", str(run_dir)]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results[2] = json.loads((run_dir / "eval_best.json").read_text())
    assert results[1] == results[2]
