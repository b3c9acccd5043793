"""What a run directory shows besides numbers, drawn while the run trains.

At the start: ``plots/label_stats.png`` (the training labels) and ``plots/train_batch.png`` (the first
training images of the epoch as the model receives them, ``hftrain.report.train_batch``). After each evaluation:
``results.csv`` (one row per evaluation), the plots of ``hftrain.report.plots`` rebuilt from
``metrics.jsonl``, ``plots/pr_curves.png`` from the evaluator's precision array, and
``plots/predictions.png``, a grid of the first ``plots.images`` validation images with their
ground truth and the model's predictions (also sent to TensorBoard as an image), and the
confusion matrix and F1 / precision / recall against confidence curves of
:mod:`hftrain.report.confusion_plots`. After each evaluation's pictures, the trackers that take pictures get them (:meth:`RunPictures._send_to_trackers`):
TensorBoard every new or redrawn ``plots/*.png`` as an image at the evaluation's step, MLflow
``plots/*.png`` as the run's artifacts under ``plots/`` (replaced by each evaluation); the other
trackers get the scalars and hyper-parameters only.

Only the main process draws, on one background thread: the evaluation hands over a snapshot
(the PR arrays and the grid images' predictions) and training goes on at once, so no process
waits for a picture. ``close()`` waits for the queued pictures at the end of the run. A picture
that fails is logged with its cause and training goes on; without matplotlib the run says so
once and still writes ``results.csv`` and the prediction grid.
"""

from __future__ import annotations

import traceback
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from hftrain.report import confusion_plots, draw
from hftrain.report import plots
from hftrain.report import train_batch as batch_picture
from hftrain.data.decode import decode_image
from hftrain.data.schema import objects_of, resolve_image_path
from hftrain.report.history import read_history, write_results_csv

PLOTS_DIR = "plots"


class RunPictures:
    def __init__(self, run_dir: Path, cfg, log, accelerator, val_dataset, class_names: list[str]):
        self.run_dir = Path(run_dir)
        self.plots_dir = self.run_dir / PLOTS_DIR
        self.cfg = cfg
        self.log = log
        self.accelerator = accelerator
        self.val = val_dataset
        self.class_names = list(class_names)
        self.active = accelerator.is_main_process
        self.matplotlib = False
        self.worker: ThreadPoolExecutor | None = None
        self.evaluations = 0  # queued so far; a plot job that a newer one follows skips the curves
        self.grid_rows: list[dict] = []
        self.grid_ids: set[int] = set()
        self.sent: dict[str, int] = {}  # plots/*.png already sent to TensorBoard: name -> modification time (ns)
        if not self.active:
            return
        self.worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hftrain-pictures")
        if cfg.enabled:
            missing = plots.available()
            self.matplotlib = missing is None
            if missing is not None:
                log.print(f"plots are off: matplotlib cannot be imported ({missing}); {plots.ENABLE_HINT} to get "
                          f"{PLOTS_DIR}/*.png. results.csv, train.log and the prediction grid are still written.")
        count = min(cfg.images, len(val_dataset)) if cfg.enabled else 0
        self.grid_rows = [val_dataset.rows[i] for i in range(count)]
        self.grid_ids = {int(row["image_id"]) for row in self.grid_rows}

    # -- called by the training loop (every process; only the main one acts)
    def label_statistics(self, train_dataset) -> None:
        """Queue ``plots/label_stats.png`` for the training set."""
        if self.active and self.matplotlib:
            self.worker.submit(self._guard, "label statistics", self._label_statistics, train_dataset)

    def train_batch(self, data, batch_size: int, data_cfg, seed: int, needs, epoch: int) -> None:
        """Queue ``plots/train_batch.png``: the first batches of ``epoch`` from a training loader of its
        own, built like the run's (:func:`hftrain.report.train_batch.loader_like_training`); ``needs``:
        the detector (its collate settings, and what it takes the boxes relative to)."""
        if self.active and self.cfg.enabled and self.cfg.train_batch:
            self.worker.submit(self._guard, "training batch picture", self._train_batch, data, batch_size, data_cfg,
                               seed, needs, epoch)

    def after_eval(self, epoch: int, step: int, evaluator, confusion=None) -> None:
        """Queue results.csv, the plots and the prediction grid for this evaluation (``confusion``:
        the :class:`hftrain.metrics.confusion.ConfusionEvaluator` that scored it, if any)."""
        if not self.active:
            return
        curves = None
        if self.cfg.enabled and evaluator.last is not None:  # numpy only: saved for `hftrain report` even without matplotlib
            curves = self._guard("precision-recall arrays", plots.pr_curves, evaluator.last, self.class_names, epoch)
        report = confusion.last if self.cfg.enabled and confusion is not None else None  # a new report per evaluation
        predictions = {p["image_id"]: p for p in evaluator.predictions if p["image_id"] in self.grid_ids}
        self.evaluations += 1
        self.worker.submit(self._after_eval, self.evaluations, step, curves, predictions, (epoch, report))

    def close(self) -> None:
        """Wait for the queued pictures (before the trackers close)."""
        if self.worker is not None:
            self.worker.shutdown(wait=True)
            self.worker = None

    # -- the background thread
    def _guard(self, what: str, function, *args):
        """Run ``function``; a failure is logged with its cause and never reaches the training loop."""
        try:
            return function(*args)
        except Exception as err:  # noqa: BLE001 -- a picture must never stop training
            frame = traceback.extract_tb(err.__traceback__)[-1]
            self.log.print(f"plots: {what} failed ({type(err).__name__}: {err}) at {frame.filename}:{frame.lineno}; "
                           "training goes on")
            return None

    def _label_statistics(self, train_dataset) -> None:
        stats = plots.label_statistics(train_dataset.rows, self.class_names)
        plots.plot_label_statistics(stats, self.plots_dir / "label_stats.png")

    def _train_batch(self, data, batch_size: int, data_cfg, seed: int, needs, epoch: int) -> None:
        loader = batch_picture.loader_like_training(data, batch_size, data_cfg, seed, needs,
                                                   self.accelerator.num_processes)
        batches = batch_picture.first_batches(loader, epoch)
        grid = batch_picture.batch_grid(batches, self.class_names, needs.uses_pixel_mask, epoch,
                                      processes=self.accelerator.num_processes)
        batch_picture.save_png(grid, self.plots_dir / batch_picture.FILE)

    def _after_eval(self, number: int, step: int, curves: dict | None, predictions: dict, confusion: tuple) -> None:
        history = self._guard("reading metrics.jsonl", read_history, self.run_dir)
        if history is not None:
            self._guard("results.csv", write_results_csv, history)
        superseded = number < self.evaluations  # training outran the plots: the next job redraws them
        if self.matplotlib and history is not None and not superseded:
            runs = [(history.name, history)]
            self._guard("training plots", plots.plot_training, runs, self.plots_dir)
            self._guard("memory plot", plots.plot_memory, runs, self.plots_dir / "memory.png")
            self._guard("evaluation plots", plots.plot_evaluation, runs, self.plots_dir)
        if curves is not None and not superseded:
            self._guard("precision-recall curves", self._pr_curves, curves)
        epoch, report = confusion
        if report is not None and not superseded:
            self._guard("confusion matrix and confidence curves", confusion_plots.write_confusion_plots, report,
                        self.plots_dir, self.matplotlib, epoch)
        if self.grid_rows:
            self._guard("prediction grid", self._prediction_grid, step, predictions)
        if self.accelerator.trackers and not superseded:
            self._guard("sending the plots to the trackers", self._send_to_trackers, step)

    def _pr_curves(self, curves: dict) -> None:
        plots.save_pr_curves(curves, self.plots_dir / plots.PR_FILE)
        if self.matplotlib:
            plots.plot_pr_curves([(self.run_dir.name, curves)], self.plots_dir / "pr_curves.png")

    def _prediction_grid(self, step: int, predictions: dict) -> None:
        samples = [grid_sample(self.val, row, predictions.get(int(row["image_id"]))) for row in self.grid_rows]
        grid = draw.prediction_grid(samples, self.class_names, self.cfg.score_threshold)
        self.plots_dir.mkdir(parents=True, exist_ok=True)
        partial = self.plots_dir / "predictions.png.partial"
        grid.save(partial, format="PNG")
        partial.replace(self.plots_dir / "predictions.png")
        for tracker in self.accelerator.trackers:
            if tracker.name == "tensorboard":
                tracker.log_images({"val/predictions": np.asarray(grid)[None]}, step=step, dataformats="NHWC")


    def _send_to_trackers(self, step: int) -> None:
        """Each new or redrawn plots/*.png, once, to the trackers that take pictures, through the tracker
        objects Accelerate holds."""
        stamps = {path: path.stat().st_mtime_ns for path in sorted(self.plots_dir.glob("*.png"))}
        changed = [path for path, stamp in stamps.items() if self.sent.get(path.name) != stamp]
        for tracker in self.accelerator.trackers:
            if tracker.name == "tensorboard":  # the grid goes as val/predictions
                for path in changed:
                    if path.name != "predictions.png":
                        with Image.open(path) as picture:
                            pixels = np.asarray(picture.convert("RGB"))
                        tracker.log_images({f"plots/{path.stem}": pixels[None]}, step=step, dataformats="NHWC")
            elif tracker.name == "mlflow":  # MLflow's client for the tracker's run: its fluent API is per thread
                from mlflow import MlflowClient

                client = MlflowClient()
                for path in changed:
                    client.log_artifact(tracker.tracker.info.run_id, str(path), PLOTS_DIR)
        self.sent.update((path.name, stamps[path]) for path in changed)


def grid_sample(dataset, row: dict, prediction: dict | None) -> draw.Sample:
    """A validation row's image, ground truth (xyxy, ignore regions marked) and prediction."""
    ref = row["image"]
    where = f"validation image_id {row['image_id']}"
    source = ref["bytes"] if ref.get("bytes") else resolve_image_path(dataset.image_root, ref["path"], where)
    objects = objects_of(row)
    prediction = prediction or {}
    return draw.Sample(
        image=decode_image(source),
        image_id=int(row["image_id"]),
        gt_boxes=[[x, y, x + w, y + h] for x, y, w, h in (o["bbox"] for o in objects)],
        gt_labels=[int(o["category"]) for o in objects],
        gt_ignored=[bool(o["iscrowd"]) or bool(o.get("difficult", 0)) for o in objects],
        pred_boxes=list(prediction.get("boxes", [])),
        pred_labels=list(prediction.get("labels", [])),
        pred_scores=list(prediction.get("scores", [])),
    )
