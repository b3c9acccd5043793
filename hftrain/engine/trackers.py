"""``log.trackers``: the experiment trackers of a run, through Accelerate's own tracker API.

``make_accelerator`` passes :func:`tracker_names` as ``Accelerator(log_with=...)``; :func:`start`
then calls ``accelerator.init_trackers`` with each tracker's place under the run directory, gives
every new tracker run the resolved recipe as hyper-parameters (:func:`hyper_parameters`) and writes
``RUN_DIR/trackers.json`` (each tracker's run id) so that ``--resume`` continues the same tracker
runs. Scalars go out in :meth:`hftrain.report.runlog.RunLog.record` (``accelerator.log``), the plots
in :class:`hftrain.report.pictures.RunPictures`. Accelerate creates trackers on the main process only.

Where each tracker writes: tensorboard ``RUN_DIR/tensorboard/hftrain``; mlflow a file store in
``RUN_DIR/mlruns`` (experiment ``hftrain``, run named after the run directory) unless
MLFLOW_TRACKING_URI is set; wandb ``RUN_DIR/wandb``; dvclive ``RUN_DIR/dvclive``; swanlab
``RUN_DIR/swanlog``; aim the directory Accelerate gives every tracker that needs one
(``RUN_DIR/tensorboard``); comet_ml, clearml and trackio where their own settings say.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

PROJECT = "hftrain"
"""``init_trackers``'s project: TensorBoard's sub-directory, MLflow's experiment, W&B's project."""
STATE_FILE = "trackers.json"


def tensorboard_installed() -> bool:
    from accelerate.tracking import get_available_trackers

    return "tensorboard" in {str(name) for name in get_available_trackers()}


def tracker_names(log_cfg) -> list[str]:
    """``log.trackers`` (checked by the recipe: known and installed), and tensorboard with
    ``log.tensorboard: true`` when it is installed."""
    names = list(dict.fromkeys(log_cfg.trackers))
    if log_cfg.tensorboard and "tensorboard" not in names and tensorboard_installed():
        names.insert(0, "tensorboard")
    return names


def hyper_parameters(recipe) -> dict[str, bool | int | float | str]:
    """The resolved recipe as flat ``section.key`` hyper-parameters, every value a bool, int, float or
    str (what every tracker takes): nested sections become dotted keys (``phases.0.lr``), anything else
    (null, lists, free-form mappings such as ``model.config``) its JSON text."""
    flat: dict[str, bool | int | float | str] = {}

    def walk(value, key: str) -> None:
        if dataclasses.is_dataclass(value):
            for field in dataclasses.fields(value):
                walk(getattr(value, field.name), f"{key}.{field.name}" if key else field.name)
        elif isinstance(value, list) and value and all(dataclasses.is_dataclass(item) for item in value):
            for index, item in enumerate(value):
                walk(item, f"{key}.{index}")
        elif isinstance(value, (bool, int, float, str)):
            flat[key] = value
        else:
            flat[key] = json.dumps(value, sort_keys=True, default=str)

    walk(recipe, "")
    return flat


def init_kwargs(names: list[str], run_dir: Path, previous: dict, resumed_step: int | None) -> dict:
    """Each tracker's ``__init__`` arguments: its place under the run directory, the run's name, and on a
    resume the tracker run to continue (``previous``: trackers.json of the interrupted run)."""
    kwargs: dict[str, dict] = {}
    if "tensorboard" in names and resumed_step is not None:
        # what the interrupted run logged after its checkpoint is hidden: the resumed run logs those steps again
        kwargs["tensorboard"] = {"purge_step": resumed_step + 1}
    if "mlflow" in names:
        kwargs["mlflow"] = {"run_name": run_dir.name}
        if previous.get("mlflow"):
            kwargs["mlflow"]["run_id"] = previous["mlflow"]
    if "wandb" in names:
        kwargs["wandb"] = {"dir": str(run_dir), "name": run_dir.name}
        if previous.get("wandb"):
            kwargs["wandb"].update(id=previous["wandb"], resume="allow")
    if "dvclive" in names:
        kwargs["dvclive"] = {"dir": str(run_dir / "dvclive"), "resume": resumed_step is not None}
    if "swanlab" in names:
        (run_dir / "swanlog").mkdir(parents=True, exist_ok=True)
        kwargs["swanlab"] = {"logdir": str(run_dir / "swanlog"), "experiment_name": run_dir.name}
    return kwargs


def mlflow_store(run_dir: Path) -> str:
    """MLflow's tracking URI: MLFLOW_TRACKING_URI when set, otherwise a file store in RUN_DIR/mlruns
    (MLflow 3 asks for MLFLOW_ALLOW_FILE_STORE=true to use one; it is set for this process)."""
    import mlflow

    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    uri = (run_dir / "mlruns").resolve().as_uri()
    mlflow.set_tracking_uri(uri)
    return uri


def run_id(tracker) -> str | None:
    """The id that lets a resumed run continue this tracker's run (None: the tracker has none)."""
    if tracker.name == "mlflow":
        return tracker.tracker.info.run_id
    if tracker.name == "wandb":
        return tracker.tracker.id
    return None


def start(accelerator, recipe, log, resumed_step: int | None) -> None:
    """``init_trackers`` (main process only, as Accelerate does), the hyper-parameters of every new
    tracker run, trackers.json; one log line per tracker saying where it writes."""
    run_dir = Path(recipe.output_dir)
    if recipe.log.tensorboard and "tensorboard" not in recipe.log.trackers and not tensorboard_installed():
        log.print("log.tensorboard: tensorboard is not installed, so nothing goes to TensorBoard "
                  "(pip install tensorboard, or log.tensorboard: false to silence this)")
    names = [str(name) for name in accelerator.log_with]
    if not names or not accelerator.is_main_process:
        return
    state = run_dir / STATE_FILE
    previous = json.loads(state.read_text()) if resumed_step is not None and state.is_file() else {}
    where = {"tensorboard": str(run_dir / "tensorboard" / PROJECT), "wandb": str(run_dir / "wandb"),
             "dvclive": str(run_dir / "dvclive"), "swanlab": str(run_dir / "swanlog"), "aim": str(run_dir / "tensorboard")}
    if "mlflow" in names:
        where["mlflow"] = f"{mlflow_store(run_dir)}, experiment {PROJECT}"
    accelerator.init_trackers(PROJECT, init_kwargs=init_kwargs(names, run_dir, previous, resumed_step))
    config = hyper_parameters(recipe)
    for tracker in accelerator.trackers:
        if tracker.name not in previous:  # a continued tracker run has them already (MLflow refuses changed values)
            tracker.store_init_configuration(config)
    ids = {tracker.name: run_id(tracker) for tracker in accelerator.trackers}
    state.write_text(json.dumps(ids, indent=1))
    for name in names:
        continued = " (continued)" if name in previous else ""
        ident = f", run {ids[name]}" if ids.get(name) else ""
        log.print(f"tracker {name}{continued}: {where.get(name, 'its own settings')}{ident}")
