"""``hftrain push RUN_DIR REPO_ID [--private] [--revision REV] [--weights best|model]``: upload a run's
``model/`` (or ``best/``) to the Hugging Face Hub, model card included.

The card is rewritten first, in the folder, from its ``hftrain_info.json``, the run's ``recipe.yaml`` and
the run's ``plots/`` as they are now, naming ``REPO_ID`` in its usage example (a folder saved by an older
hftrain, without a card, gets one). Exit codes: 0 pushed, 1 the push failed (no token, no network, the
Hub refused; the message says which), 2 no such model folder.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml

from hftrain.report.hub_push import PushError, push_folder
from hftrain.report.model_card import write_card


def push_run(run_dir: Path, repo_id: str, private: bool = False, revision: str | None = None,
             weights: str = "model", api=None) -> str:
    """Refresh the card of ``run_dir/weights`` and upload the folder; returns the commit URL. Raises
    FileNotFoundError for a missing folder and :class:`PushError` for a failed upload."""
    run_dir = Path(run_dir)
    folder = run_dir / weights
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{folder} holds no saved model (no config.json): is {run_dir} a finished run? "
                                f"(--weights best|model chooses the folder)")
    info_path, recipe_path = folder / "hftrain_info.json", run_dir / "recipe.yaml"
    if info_path.is_file() and recipe_path.is_file():
        write_card(folder, json.loads(info_path.read_text()), yaml.safe_load(recipe_path.read_text()) or {},
                   run_dir / "plots", repo_id)  # hftrain.report.pictures.PLOTS_DIR (not imported: it loads datasets)
    elif not (folder / "README.md").is_file():
        print(f"hftrain push: no model card: {folder} has no hftrain_info.json or {run_dir} no recipe.yaml; "
              "pushing the weights without README.md", file=sys.stderr)
    info = json.loads(info_path.read_text()) if info_path.is_file() else {}
    return push_folder(folder, repo_id, private, revision, api=api,
                       commit_message=f"hftrain push: {weights}/ after epoch {info.get('epoch', '?')}")


def push_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hftrain push",
                                     description="Upload a run's model folder (weights, processor, model card, plots) "
                                                 "to the Hugging Face Hub.")
    parser.add_argument("run_dir", help="run directory (the recipe's output_dir)")
    parser.add_argument("repo_id", help="Hub model repository, user-or-org/name (created when missing)")
    parser.add_argument("--private", action="store_true", help="create the repository as private")
    parser.add_argument("--revision", default=None, help="branch to push to (created when missing); default: main")
    parser.add_argument("--weights", choices=("model", "best"), default="model",
                        help="model: the final weights (default); best: the best evaluation's")
    args = parser.parse_args(argv)
    try:
        url = push_run(Path(args.run_dir), args.repo_id, args.private, args.revision, args.weights)
    except FileNotFoundError as err:
        print(f"hftrain push: {err}", file=sys.stderr)
        return 2
    except PushError as err:
        print(f"hftrain push: {err}", file=sys.stderr)
        return 1
    print(f"pushed {Path(args.run_dir) / args.weights} to {args.repo_id}: {url}")
    return 0
