"""best/ and model/ as published (hftrain.engine.publish), without training: a card that cannot be built
costs nothing but the card, the training time survives a resume, and a dry run never uploads."""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

from hftrain.engine import publish
from hftrain.engine.state import LoopState
from hftrain.recipe.schema import HubConfig, Recipe, SyntheticConfig
from hftrain.tools.dry_run import dry_run_recipe


class Weights:
    """A detector double whose ``save`` writes what save_pretrained would (config and weights)."""

    def save(self, folder: Path) -> None:
        Path(folder).mkdir(parents=True, exist_ok=True)
        (Path(folder) / "config.json").write_text(json.dumps({"model_type": "rt_detr", "id2label": {"0": "a"}}))
        (Path(folder) / "model.safetensors").write_bytes(b"weights")


def single_process_run(tmp_path: Path, lines: list[str]):
    accelerator = SimpleNamespace(is_main_process=True, num_processes=1, wait_for_everyone=lambda: None)
    return SimpleNamespace(accelerator=accelerator, recipe=Recipe(output_dir=str(tmp_path)),
                           log=SimpleNamespace(print=lambda *text: lines.extend(text)))


def test_the_card_goes_into_the_atomic_save(tmp_path):
    lines: list[str] = []
    publish.save_model(single_process_run(tmp_path, lines), Weights(), tmp_path / "best", {"epoch": 3, "metrics": {"map": 0.5}})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best"]  # no .partial or .old left
    assert sorted(p.name for p in (tmp_path / "best").iterdir()) == ["README.md", "config.json", "hftrain_info.json",
                                                                     "model.safetensors"]
    assert "| mAP@[.5:.95] | 0.5000 |" in (tmp_path / "best" / "README.md").read_text() and lines == []


def test_a_card_that_cannot_be_built_is_logged_and_the_weights_are_saved(tmp_path, monkeypatch):
    def broken(*_, **__):
        raise ValueError("an unexpected recipe value")

    monkeypatch.setattr(publish, "write_card", broken)
    lines: list[str] = []
    publish.save_model(single_process_run(tmp_path, lines), Weights(), tmp_path / "model", {"epoch": 1, "metrics": {}})
    assert (tmp_path / "model" / "model.safetensors").read_bytes() == b"weights"
    assert not (tmp_path / "model" / "README.md").exists()
    assert lines == ["model card: writing model/README.md failed (ValueError: an unexpected recipe value); "
                     "the weights are saved without it"]


def test_the_training_time_is_carried_across_a_resume():
    first = LoopState(session_start=time.monotonic() - 100.0)
    saved = first.saved(epoch_complete=True)
    assert 100.0 <= saved["train_seconds"] < 110.0
    resumed = LoopState()
    resumed.resume_at(saved)
    assert saved["train_seconds"] <= resumed.train_seconds() < saved["train_seconds"] + 10.0
    rolled_back = LoopState(seconds_before=5.0)
    rolled_back.resume_at({**saved, "train_seconds": 1.0}, rollback=True)  # a rollback keeps the run's own clock
    assert rolled_back.seconds_before == 5.0


def test_a_dry_run_uploads_nothing(tmp_path):
    recipe = replace(Recipe(hub=HubConfig(push=True, push_best=True, repo_id="someone/m")),
                     data=replace(Recipe().data, synthetic=SyntheticConfig()))
    dry, notes = dry_run_recipe(recipe, tmp_path)
    assert not dry.hub.push and not dry.hub.push_best
    assert "hub.push/push_best: off (a dry run uploads nothing to someone/m)" in notes
