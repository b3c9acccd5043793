"""log.trackers (MLflow's local file store read back, TensorBoard) and train.early_stop across a resume.

One tiny run (one step per epoch) with mlflow and tensorboard and early stopping with a min_delta no
mAP can beat, so every evaluation after the first is "no improvement": with patience 2 it stops
itself at the third evaluation (the uninterrupted run). Then it is resumed from its checkpoint after
the second evaluation (one evaluation without improvement counted) and must stop at the same third
evaluation, with the same record. The plots sent to the trackers are tested on the run of
tests/report/test_pictures.py, which draws them anyway (pictures cost seconds).
"""

from __future__ import annotations

import json

import pytest
import yaml
from accelerate.state import AcceleratorState

from conftest import records, tiny_recipe, write_recipe
from hftrain.engine import early_stop
from hftrain.engine.state import LoopState
from hftrain.engine.trackers import PROJECT, hyper_parameters
from hftrain.recipe import RecipeError, load_recipe
from hftrain.report.runlog import tracker_key
from hftrain.train import train

PATIENCE = 2
RESUMED_AT = 2  # the checkpoint the second run resumes from (optimizer step = epoch here)


@pytest.fixture(scope="module")
def tracked(tmp_path_factory, shapes_dir):
    """The run: its directory, its recipe, the resumed run's exit code, the uninterrupted run's records."""
    pytest.importorskip("mlflow")
    tmp = tmp_path_factory.mktemp("tracked")
    run_dir = tmp / "run"
    recipe = tiny_recipe(shapes_dir, run_dir, train={"epochs": 6, "early_stop": {"patience": PATIENCE, "min_delta": 1.0}},
                         log={"tensorboard": True, "trackers": ["mlflow"]})
    path = write_recipe(tmp / "run.yaml", recipe)
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)  # the default: a file store in the run directory
        AcceleratorState._reset_state(reset_partial_state=True)
        first = load_recipe(path, ["data.train.subset=4"])  # 4 images, batch 4: one step per epoch
        train(first)
        uninterrupted = {kind: records(run_dir, kind) for kind in ("eval", "early_stop")}
        AcceleratorState._reset_state(reset_partial_state=True)
        code = train(load_recipe(path, ["data.train.subset=4"]), exit_code=True,
                     resume=str(run_dir / "checkpoints" / f"step_{RESUMED_AT:08d}"))
    return run_dir, first, code, uninterrupted


def mlflow_run(run_dir):
    from mlflow import MlflowClient

    client = MlflowClient((run_dir / "mlruns").resolve().as_uri())
    (experiment,) = [e for e in client.search_experiments() if e.name == PROJECT]
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1  # the resume continued the run (trackers.json holds its id)
    return client, runs[0]


def test_mlflow_holds_every_scalar_hftrain_recorded(tracked):
    run_dir, *_ = tracked
    client, run = mlflow_run(run_dir)
    assert run.info.run_id == json.loads((run_dir / "trackers.json").read_text())["mlflow"]
    assert run.info.status == "FINISHED" and run.info.run_name == "run"
    expected: dict[str, list] = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        for key, value in record.items():
            if key not in ("type", "step", "time") and isinstance(value, (int, float)):
                expected.setdefault(tracker_key(f"{record['type']}/{key}"), []).append((record["step"], float(value)))
    assert set(run.data.metrics) == set(expected)
    assert {"train/loss", "eval/map", "step/lr", "early_stop/evaluations_without_improvement"} <= set(expected)
    for key, values in expected.items():
        history = sorted(client.get_metric_history(run.info.run_id, key), key=lambda m: (m.step, m.timestamp))
        before = [(m.step, m.value) for m in history if m.step <= RESUMED_AT]
        want = sorted(v for v in values if v[0] <= RESUMED_AT)
        assert [s for s, _ in before] == [s for s, _ in want], key
        assert [v for _, v in before] == pytest.approx([v for _, v in want], rel=1e-9, nan_ok=True), key
        # the steps after the checkpoint were logged by both runs: MLflow keeps both, the resumed run's last
        after: dict[int, list] = {}
        for m in history:
            if m.step > RESUMED_AT:
                after.setdefault(m.step, []).append(m.value)
        assert all(len(logged) == 2 for logged in after.values()), key
        last = {step: logged[-1] for step, logged in after.items()}
        assert last == pytest.approx({s: v for s, v in values if s > RESUMED_AT}, rel=1e-9, nan_ok=True), key


def test_mlflow_params_are_the_resolved_recipe(tracked):
    run_dir, first, *_ = tracked
    client, run = mlflow_run(run_dir)
    assert run.data.params == {key: str(value) for key, value in hyper_parameters(first).items()}
    assert run.data.params["train.early_stop.patience"] == "2"
    assert run.data.params["log.trackers"] == '["mlflow"]' and run.data.params["optim.lr"] == "0.001"


def test_tensorboard_gets_the_same_steps_once_after_the_resume_and_the_hyper_parameters_once(tracked):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir, first, *_ = tracked
    events = run_dir / "tensorboard" / PROJECT
    accumulator = EventAccumulator(str(events), size_guidance={"images": 0, "scalars": 0})
    accumulator.Reload()
    # purge_step: what the first run logged after the checkpoint resumed from is hidden, so each step shows once
    assert [e.step for e in accumulator.Scalars("train/loss")] == [r["step"] for r in records(run_dir, "train")]
    assert [e.step for e in accumulator.Scalars("eval/map")] == [1, 2, 3]
    (hparams,) = events.glob("*/hparams.yml")  # the resumed run did not log them again
    assert yaml.safe_load(hparams.read_text()) == hyper_parameters(first)


def test_early_stop_across_a_resume_stops_where_the_uninterrupted_run_did(tracked):
    run_dir, _, code, uninterrupted = tracked
    assert code == 0
    no_time = lambda rows: [{k: v for k, v in row.items() if k != "time"} for row in rows]  # noqa: E731
    assert [r["epoch"] for r in uninterrupted["eval"]] == [1, 2, 3]  # 2 evaluations without improvement after the first
    assert [r["epoch"] for r in records(run_dir, "eval")] == [1, 2, 3]
    assert no_time(records(run_dir, "early_stop")) == no_time(uninterrupted["early_stop"])
    (stop,) = records(run_dir, "early_stop")
    assert (stop["epoch"], stop["evaluations_without_improvement"], stop["patience"]) == (3, PATIENCE, PATIENCE)
    assert stop["reference"] == records(run_dir, "eval")[0]["map"]
    state = json.loads((run_dir / "checkpoints" / "step_00000003" / "trainer_state.json").read_text())
    assert (state["epoch"], state["evals_without_improvement"]) == (3, PATIENCE)
    assert json.loads((run_dir / "model" / "hftrain_info.json").read_text())["epoch"] == 3
    assert (run_dir / "best" / "hftrain_info.json").is_file()
    assert "early stop at epoch 3: map has not improved by more than 1" in (run_dir / "train.log").read_text()


def test_the_count_of_evaluations_is_the_same_when_resumed_anywhere():
    values, cfg = [0.50, 0.53, 0.54, 0.62, 0.61, 0.60, 0.66, 0.70, 0.69], {"mode": "max", "min_delta": 0.05}
    uninterrupted, state = [], LoopState()
    for value in values:
        uninterrupted.append(early_stop.count(state, value, **cfg))
    # 0.53 and 0.54 are within 0.05 of 0.50 (no improvement), 0.62 is more than 0.05 above it; then 0.66 is not
    # 0.05 above 0.62, 0.70 is
    assert uninterrupted == [0, 1, 2, 0, 1, 2, 3, 0, 1]
    for cut in range(1, len(values)):
        state = LoopState()
        counts = [early_stop.count(state, value, **cfg) for value in values[:cut]]
        saved = state.saved(epoch_complete=True)
        resumed = LoopState()
        resumed.resume_at(json.loads(json.dumps(saved)))  # through trainer_state.json
        counts += [early_stop.count(resumed, value, **cfg) for value in values[cut:]]
        assert counts == uninterrupted, cut


def test_improvement_in_min_mode_and_with_nan():
    assert early_stop.improved(0.8, 1.0, "min", 0.1)
    assert not early_stop.improved(0.95, 1.0, "min", 0.1)
    assert early_stop.improved(0.3, None, "max", 0.0) and early_stop.improved(0.3, float("nan"), "max", 0.0)
    assert not early_stop.improved(float("nan"), 0.3, "max", 0.0)


def test_unknown_and_missing_trackers_and_a_bad_early_stop_are_recipe_errors(tmp_path, monkeypatch):
    import accelerate.tracking
    from accelerate.utils import LoggerType

    monkeypatch.setattr(accelerate.tracking, "get_available_trackers", lambda: [LoggerType.TENSORBOARD])
    path = write_recipe(tmp_path / "r.yaml", {
        "data": {"synthetic": {"kind": "shapes"}},
        "log": {"trackers": ["mlflow", "neptune", "wandb", "tensorbord"], "tensorboard": True},
        "train": {"early_stop": {"patience": 0, "min_delta": -0.1}}, "eval": {"during_training": False}})
    with pytest.raises(RecipeError) as err:
        load_recipe(path)
    text = str(err.value)
    for expected in ("log.trackers: mlflow is not installed; pip install mlflow",
                     "log.trackers: wandb is not installed; pip install wandb",
                     "log.trackers: unknown tracker 'neptune'", "unknown tracker 'tensorbord' (did you mean 'tensorboard'?)",
                     "train.early_stop.patience: must be at least 1", "train.early_stop.min_delta: must be 0 or more",
                     "train.early_stop: counts evaluations, but eval.during_training is false"):
        assert expected in text, expected
    monkeypatch.undo()
    ok = write_recipe(tmp_path / "ok.yaml", {"data": {"synthetic": {"kind": "shapes"}}, "log": {"trackers": ["tensorboard"]},
                                             "train": {"early_stop": {"patience": 3}}})
    pytest.importorskip("tensorboard")
    assert load_recipe(ok).log.trackers == ["tensorboard"]
    clash = write_recipe(tmp_path / "clash.yaml", {"data": {"synthetic": {"kind": "shapes"}},
                                                   "log": {"trackers": ["tensorboard"], "tensorboard": False}})
    with pytest.raises(RecipeError, match="log.tensorboard: false, but log.trackers names tensorboard"):
        load_recipe(clash)


def test_hyper_parameters_are_flat_and_of_types_every_tracker_takes(tmp_path):
    path = write_recipe(tmp_path / "r.yaml", {
        "data": {"synthetic": {"kind": "shapes"}, "category_map": {"a (b)": "c"}},
        "model": {"config": {"num_queries": 10}},
        "phases": [{"epochs": 1, "lr": 1e-4}, {"epochs": 2, "freeze": ["model.backbone"]}]})
    flat = hyper_parameters(load_recipe(path))
    assert all(isinstance(v, (bool, int, float, str)) for v in flat.values())
    assert flat["phases.0.lr"] == 1e-4 and flat["phases.1.freeze"] == '["model.backbone"]'
    assert flat["model.config"] == '{"num_queries": 10}' and flat["data.category_map"] == '{"a (b)": "c"}'
    assert flat["train.max_steps"] == "null" and flat["train.epochs"] == 3 and flat["data.synthetic.kind"] == "shapes"
    assert tracker_key("eval/ap_person (rider)") == "eval/ap_person _rider_"
