"""One cell of a sweep, run in its own process(es) by ``hftrain sweep``.

    python -m hftrain.tools.sweep_cell RECIPE [key=value ...]
    accelerate launch --config_file CONFIG --module hftrain.tools.sweep_cell RECIPE [key=value ...]

Trains the recipe through the ordinary loop (``hftrain.train.train``), then, on the main
process only, times inference of the saved ``model/`` on the validation set
(``hftrain.tools.throughput``) and writes ``cell.json`` into the run directory: the training time
(wall clock of ``train()``, evaluations and checkpoints included) and the inference figures.
A cell that raises leaves no ``cell.json``; the sweep reads the error from the cell's log.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

CELL_FILE = "cell.json"


def main(argv: list[str] | None = None) -> int:
    from accelerate import PartialState

    from hftrain.recipe import RecipeError, load_recipe
    from hftrain.tools.throughput import measure_inference
    from hftrain.train import parse_args, train

    args = parse_args(argv)
    try:
        recipe = load_recipe(args.recipe, args.overrides)
    except RecipeError as err:
        print(err, file=sys.stderr)
        return 2
    start = time.perf_counter()
    train(recipe, resume=args.resume)
    train_time = time.perf_counter() - start
    if not PartialState().is_main_process:
        return 0
    figures = {"train_time_s": train_time, **measure_inference(recipe.output_dir, "model")}
    (Path(recipe.output_dir) / CELL_FILE).write_text(json.dumps(figures, indent=2))
    print(f"[sweep cell] trained in {train_time:.1f}s; inference {figures['images_per_s']:.1f} images/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
