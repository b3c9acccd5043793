"""The weights' moving average (hftrain.engine.ema): its arithmetic, what evaluation and the saved weights use,
exact resume, and that turning it on or off changes nothing in the training itself."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from accelerate.state import AcceleratorState
from safetensors.torch import load_file

from conftest import records, tiny_recipe, write_recipe
from hftrain.engine import checkpoints
from hftrain.engine.ema import ModelEma
from hftrain.recipe import RecipeError, load_recipe
from hftrain.train import train

DECAY, WARMUPS = 0.9, 2  # far from the 0.9999 / 2000 default, so that a few steps move the average visibly


class Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(3, 4)
        self.norm = torch.nn.BatchNorm1d(4)
        self.head = torch.nn.Linear(4, 2)
        self.tied = self.head  # one set of weights under two names

    def forward(self, x):
        return self.tied(self.norm(self.linear(x)))


def test_update_is_the_warmed_up_exponential_average_of_weights_and_batchnorm_statistics():
    torch.manual_seed(0)
    model = Tiny()
    ema = ModelEma(model, decay=DECAY, warmups=WARMUPS)
    expected = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    for k in range(1, 5):
        model.train()
        loss = model(torch.randn(8, 3)).square().mean()  # also moves BatchNorm's running statistics
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        ema.update()
        d = DECAY * (1 - math.exp(-k / WARMUPS))  # RT-DETR's ramp, written out by hand
        for name, value in model.state_dict().items():
            if value.dtype.is_floating_point and name != "tied.weight" and name != "tied.bias":  # tied: once
                expected[name] = d * expected[name] + (1 - d) * value
        expected["tied.weight"], expected["tied.bias"] = expected["head.weight"], expected["head.bias"]
    averaged = ema.module.state_dict()
    for name, value in expected.items():
        assert torch.allclose(averaged[name], value, atol=1e-6, rtol=1e-5), name
    assert ema.updates == 4
    # the average is not the weights, and BatchNorm's running statistics were averaged like the weights
    assert not torch.allclose(averaged["linear.weight"], model.linear.weight)
    assert not torch.allclose(averaged["norm.running_mean"], model.norm.running_mean)
    # integer buffers keep the value of the copy, as in RT-DETR's code
    assert int(averaged["norm.num_batches_tracked"]) == 0 and int(model.norm.num_batches_tracked) == 4
    # fp32, no autograd, evaluation mode
    assert all(p.dtype == torch.float32 and not p.requires_grad and p.grad_fn is None for p in ema.module.parameters())
    assert not ema.module.training


class Recorder(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(3, 2)
        self.autocast = []

    def forward(self, x):
        self.autocast.append(torch.is_autocast_enabled("cpu"))
        return self.linear(x)


def test_the_average_is_called_like_the_prepared_model_under_mixed_precision():
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=True, mixed_precision="bf16")
    prepared = accelerator.prepare(Recorder())
    ema = ModelEma(prepared, decay=DECAY, warmups=WARMUPS, accelerator=accelerator)
    assert ema.source is accelerator.unwrap_model(prepared)
    x = torch.randn(4, 3)
    ours, theirs = ema.module(x), prepared(x)
    assert ema.module.autocast == [True] and ema.source.autocast == [True]  # both ran under bf16 autocast
    assert ours.dtype == theirs.dtype == torch.float32  # ...and hand back fp32 outputs
    assert torch.equal(ours, theirs)
    assert next(ema.module.parameters()).dtype == torch.float32


def test_restart_and_state_round_trip():
    torch.manual_seed(0)
    model = Tiny()
    ema = ModelEma(model, decay=DECAY, warmups=WARMUPS)
    with torch.no_grad():
        model.linear.weight.add_(1.0)
    ema.update()
    other = ModelEma(Tiny(), decay=DECAY, warmups=WARMUPS)
    other.load_state_dict(ema.state_dict())
    assert other.updates == 1 and torch.equal(other.module.linear.weight, ema.module.linear.weight)
    ema.restart()
    assert ema.updates == 0 and torch.equal(ema.module.linear.weight, model.linear.weight)
    with pytest.raises(ValueError, match="expected the keys"):
        other.load_state_dict({"module": {}})


def _two_processes(rank: int, init_file: str, out_dir: str, decay: float, warmups: int) -> None:
    """One of two gloo processes: the same weights, a different batch (so different BatchNorm statistics)."""
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    torch.manual_seed(0)
    model = Tiny()
    ema = ModelEma(model, decay=decay, warmups=warmups,
                   accelerator=SimpleNamespace(num_processes=2, device=torch.device("cpu"), native_amp=False))
    start = ema.module.norm.running_mean.clone()
    torch.manual_seed(1 + rank)
    model.train()
    model(torch.randn(8, 3) * (1 + rank))
    ema.update()
    torch.save({"model": model.norm.running_mean, "ema": ema.module.norm.running_mean, "start": start,
                "weight": ema.module.linear.weight}, f"{out_dir}/rank{rank}.pt")
    torch.distributed.destroy_process_group()


def test_every_process_keeps_process_0s_average(tmp_path):
    torch.multiprocessing.start_processes(_two_processes, args=(str(tmp_path / "init"), str(tmp_path), DECAY, WARMUPS),
                                          nprocs=2, start_method="fork")  # forked: nothing to import again
    zero, one = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert not torch.allclose(zero["model"], one["model"])  # each process's BatchNorm saw its own batch
    d = DECAY * (1 - math.exp(-1 / WARMUPS))
    assert torch.allclose(zero["ema"], d * zero["start"] + (1 - d) * zero["model"])
    assert torch.equal(zero["ema"], one["ema"]) and torch.equal(zero["weight"], one["weight"])


def test_recipe_values_are_checked(tmp_path, shapes_dir):
    recipe = tiny_recipe(shapes_dir, tmp_path / "run")
    recipe["ema"] = {"enabled": True, "decay": 1.0, "warmup_updates": 0}
    with pytest.raises(RecipeError) as err:
        load_recipe(write_recipe(tmp_path / "r.yaml", recipe))
    assert "ema.decay: must be in (0, 1), got 1.0" in str(err.value)
    assert "ema.warmup_updates: must be at least 1, got 0" in str(err.value)


# ---------------------------------------------------------------------------- in the loop

STEPS = 4  # 8 images, batch 4, 2 epochs


def ema_recipe(shapes_dir, run_dir, enabled=True):
    recipe = tiny_recipe(shapes_dir, run_dir, train={"epochs": 2}, eval={"interval": 1},
                         checkpoint={"interval": 1, "keep": 10, "every_steps": 1})
    recipe["data"]["train"]["subset"] = 8
    recipe["ema"] = {"enabled": enabled, "decay": DECAY, "warmup_updates": WARMUPS}
    return recipe


def ema_file(run_dir, step):
    return torch.load(checkpoints.checkpoint_dir(run_dir) / f"step_{step:08d}" / checkpoints.EMA_FILE, weights_only=True)


def raw_weights(run_dir, step):
    return load_file(checkpoints.checkpoint_dir(run_dir) / f"step_{step:08d}" / "model.safetensors")


@pytest.fixture(scope="module")
def ema_run(tmp_path_factory, shapes_dir):
    """An uninterrupted run with the EMA on; records the model every evaluation was given."""
    import hftrain.engine.evaluation as loop

    tmp = tmp_path_factory.mktemp("ema")
    evaluated = []

    def recording_evaluate(model, *args, **kwargs):
        evaluated.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        return real_evaluate(model, *args, **kwargs)

    real_evaluate = loop.predict
    AcceleratorState._reset_state(reset_partial_state=True)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(loop, "predict", recording_evaluate)
        train(load_recipe(write_recipe(tmp / "r.yaml", ema_recipe(shapes_dir, tmp / "run"))))
    AcceleratorState._reset_state(reset_partial_state=True)
    return tmp / "run", evaluated


def test_every_optimizer_step_updates_the_average_and_checkpoints_hold_it(ema_run):
    run_dir, _ = ema_run
    assert [ema_file(run_dir, step)["updates"] for step in range(1, STEPS + 1)] == list(range(1, STEPS + 1))
    assert checkpoints.read_state(checkpoints.complete_checkpoints(run_dir)[-1])["step"] == STEPS
    checkpoints.verify(checkpoints.complete_checkpoints(run_dir)[-1])  # ema.pt is in the manifest and loads safely
    assert "ema               : on: decay 0.9, warm-up 2 updates" in (run_dir / "train.log").read_text()


def test_evaluation_best_and_model_use_the_averaged_weights(ema_run):
    from transformers import AutoModelForObjectDetection

    run_dir, evaluated = ema_run
    assert len(evaluated) == 2  # epochs 1 and 2
    for epoch, seen in zip((1, 2), evaluated):
        step = epoch * STEPS // 2
        average, raw = ema_file(run_dir, step)["module"], raw_weights(run_dir, step)
        assert all(torch.equal(seen[k], average[k]) for k in average), f"epoch {epoch} evaluated other weights"
        assert any(not torch.equal(seen[k], raw[k]) for k in raw)  # ...than the trained ones
    best_epoch = max(records(run_dir, "eval"), key=lambda r: r["map"])["epoch"]  # the first of equal ones
    for directory, step in (("model", STEPS), ("best", best_epoch * STEPS // 2)):
        loaded = AutoModelForObjectDetection.from_pretrained(run_dir / directory).state_dict()
        average = ema_file(run_dir, step)["module"]
        assert loaded.keys() == average.keys()
        assert all(torch.equal(loaded[k], average[k]) for k in average), directory


def test_resume_after_a_failure_continues_the_average_exactly(tmp_path, shapes_dir, ema_run, monkeypatch):
    reference, _ = ema_run
    run_dir = tmp_path / "run"
    path = write_recipe(tmp_path / "r.yaml", ema_recipe(shapes_dir, run_dir))
    monkeypatch.setenv("HFTRAIN_TEST_FAIL_AT_STEP", "2")  # after step 2's update, before its checkpoint
    monkeypatch.setenv("HFTRAIN_TEST_FAIL_RANK", "0")
    with pytest.raises(RuntimeError, match="injected failure"):
        train(load_recipe(path))
    assert [p.name for p in checkpoints.complete_checkpoints(run_dir)] == ["step_00000001"]  # mid-epoch 1
    monkeypatch.delenv("HFTRAIN_TEST_FAIL_AT_STEP")
    AcceleratorState._reset_state(reset_partial_state=True)
    train(load_recipe(path), resume=True)
    ours, theirs = ema_file(run_dir, STEPS), ema_file(reference, STEPS)
    assert ours["updates"] == theirs["updates"] == STEPS
    different = [k for k in theirs["module"] if not torch.equal(ours["module"][k], theirs["module"][k])]
    assert not different, f"{len(different)} averaged tensors differ, e.g. {different[:3]}"


@pytest.fixture(scope="module")
def off_run(tmp_path_factory, shapes_dir):
    """The same run with the EMA off."""
    tmp = tmp_path_factory.mktemp("ema_off")
    AcceleratorState._reset_state(reset_partial_state=True)
    train(load_recipe(write_recipe(tmp / "r.yaml", ema_recipe(shapes_dir, tmp / "run", enabled=False))))
    AcceleratorState._reset_state(reset_partial_state=True)
    return tmp / "run"


def test_turning_the_average_off_or_on_changes_nothing_in_training(off_run, ema_run):
    from transformers import AutoModelForObjectDetection

    reference, _ = ema_run
    assert not any((c / checkpoints.EMA_FILE).exists() for c in checkpoints.complete_checkpoints(off_run))
    assert "ema               : off" in (off_run / "train.log").read_text()
    # the same losses and trained weights as the run with the average
    assert [r["loss"] for r in records(off_run, "step")] == [r["loss"] for r in records(reference, "step")]
    ours, theirs = raw_weights(off_run, STEPS), raw_weights(reference, STEPS)
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs)
    # and without it, model/ holds the trained weights
    loaded = AutoModelForObjectDetection.from_pretrained(off_run / "model").state_dict()
    assert all(torch.equal(loaded[k], ours[k]) for k in ours)


def test_a_checkpoint_without_an_average_restarts_it_from_its_weights(tmp_path, shapes_dir, off_run):
    run_dir = tmp_path / "run"
    source = checkpoints.checkpoint_dir(off_run) / "step_00000002"  # end of epoch 1, saved with the EMA off
    train(load_recipe(write_recipe(tmp_path / "r.yaml", ema_recipe(shapes_dir, run_dir))), resume=str(source))
    assert "holds no EMA (saved with ema.enabled false): the average starts from its weights" in \
        (run_dir / "train.log").read_text()
    average = ema_file(run_dir, STEPS)
    assert average["updates"] == 2  # steps 3 and 4
    start, w3, w4 = load_file(source / "model.safetensors"), raw_weights(run_dir, 3), raw_weights(run_dir, 4)
    d1, d2 = (DECAY * (1 - math.exp(-k / WARMUPS)) for k in (1, 2))
    for name, value in average["module"].items():
        if value.dtype.is_floating_point:
            expected = d2 * (d1 * start[name] + (1 - d1) * w3[name]) + (1 - d2) * w4[name]
            assert torch.allclose(value, expected, atol=1e-6, rtol=1e-5), name


def test_a_step_the_guard_skips_leaves_the_average_alone(tmp_path, shapes_dir, monkeypatch):
    from helpers.nan_loss import nan_in_loss_term

    nan_in_loss_term(monkeypatch, "loss_bbox", lambda n: n == 3)  # step 3's loss is NaN: guard.nonfinite: skip
    run_dir = tmp_path / "run"
    train(load_recipe(write_recipe(tmp_path / "r.yaml", ema_recipe(shapes_dir, run_dir))))
    assert [(e["step"], e["outcome"]) for e in records(run_dir, "nonfinite")] == [(3, "skip")]
    before, skipped, after = (ema_file(run_dir, step) for step in (2, 3, 4))
    assert (before["updates"], skipped["updates"], after["updates"]) == (2, 2, 3)
    assert all(torch.equal(before["module"][k], skipped["module"][k]) for k in before["module"])
    assert any(not torch.equal(skipped["module"][k], after["module"][k]) for k in after["module"])
