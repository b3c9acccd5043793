"""Run by tests/engine/test_two_process_checks.py under ``torchrun --nproc_per_node 2`` (gloo):
what every process sees of the ``blacklist: auto`` scan, the ``batch_size: auto`` probe and a
checkpoint write that failed on one process. Writes ``rank<N>.json`` into the folder argv[2]."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

sys.path[0] = str(Path(__file__).resolve().parents[2])  # the repository, not tests/helpers/ (its datasets.py)

import torch  # noqa: E402
from accelerate import Accelerator, PartialState  # noqa: E402

import hftrain.data.blacklist as blacklist_module
from hftrain.data.loader import load_data
from hftrain.engine.checkpoints import agree_on_failure
from hftrain.engine.optim import build_optimizer
from hftrain.health.oom import install_injection, resolve_auto_batch
from hftrain.models.inputs import Normalize, model_inputs
from hftrain.models.registry import build_model
from hftrain.models.tiny import tiny_config
from hftrain.recipe.schema import DataConfig, ModelConfig, Recipe, SplitConfig, TrainConfig


class Log:
    def __init__(self):
        self.lines = []

    def print(self, *lines):
        self.lines.extend(lines)


def main(shapes: Path, out: Path) -> None:
    torch.set_num_threads(1)
    state = PartialState(cpu=True)
    rank = state.process_index
    result = {}

    scans = []
    real_scan = blacklist_module.scan_images

    def counted_scan(*args, **kwargs):
        scans.append(kwargs.get("workers"))
        time.sleep(0.5)  # a scan takes a while: a process that does not wait for it starts its own
        return real_scan(*args, **kwargs)

    blacklist_module.scan_images = counted_scan
    data_cfg = DataConfig(
        train=SplitConfig(images=str(shapes / "train"), labels=str(shapes / "train.json")),
        val=SplitConfig(images=str(shapes / "val"), labels=str(shapes / "val.json")),
        min_size=64, max_size=64, num_workers=2, blacklist="auto", cache_dir=str(out / "cache"))
    state.wait_for_everyone()
    data = load_data(data_cfg)
    result["scans"] = scans  # the workers each scan used, one entry per scan this process ran
    result["notes"] = [n for n in data.notes if n.startswith("blacklist")]

    # batch_size: auto: process 0 fits 4 images, process 1 only 2: both must take 2
    os.environ["HFTRAIN_TEST_OOM_ABOVE"] = "4" if rank == 0 else "2"
    recipe = Recipe(model=ModelConfig(name="rt_detr", config=tiny_config("rt_detr")), data=data_cfg,
                    train=TrainConfig(batch_size="auto", effective_batch=16))
    torch.manual_seed(0)
    detector = build_model(recipe.model, data.class_names)
    install_injection(detector.model)
    accelerator = Accelerator(cpu=True)
    normalize = Normalize(detector.image_mean, detector.image_std, accelerator.device)
    log = Log()
    chosen = resolve_auto_batch(recipe, detector, data.train, accelerator,
                                lambda batch: model_inputs(batch, normalize, detector.uses_pixel_mask), log,
                                lambda model: build_optimizer(model, detector.backbone_prefixes, recipe.optim))
    result["batch"] = [chosen.train.batch_size, chosen.train.gradient_accumulation_steps]

    # a write that failed on process 1 only is a failure on every process
    result["agreed"] = agree_on_failure(accelerator, "writing random_states_1.pkl failed" if rank == 1 else None)
    (out / f"rank{rank}.json").write_text(json.dumps(result))
    state.wait_for_everyone()


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
