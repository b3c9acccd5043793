"""Two gloo processes (torchrun): ``blacklist: auto`` is scanned once, by the main process with
``data.num_workers`` decoding processes, and read by the other; ``batch_size: auto`` takes the
smallest micro-batch over the processes; a write that failed on one process fails on all."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from conftest import REPO


def test_scan_once_probe_agrees_and_failures_are_shared(tmp_path, shapes_dir):
    out = tmp_path / "out"
    out.mkdir()
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                           "--standalone", "tests/helpers/two_process_checks.py", str(shapes_dir), str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-4000:]
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["scans"] == [2, 2] and ranks[1]["scans"] == []  # train and val, once, with num_workers processes
    assert all("cached scan" in note for note in ranks[1]["notes"]), ranks[1]["notes"]
    assert ranks[0]["batch"] == ranks[1]["batch"] == [2, 4]  # process 1 fits only 2: both take 2 x 4
    assert ranks[0]["agreed"] == ranks[1]["agreed"] == "writing random_states_1.pkl failed"
