"""The ``hftrain`` command: ``hftrain train RECIPE [key=value ...]``, ``hftrain eval RUN_DIR``."""

from __future__ import annotations

import argparse
import sys


def eval_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="hftrain eval", description="Evaluate a run's best weights.")
    parser.add_argument("run_dir", help="run directory (holds recipe.yaml and best/)")
    parser.add_argument("--weights", default="best", help="weights directory inside the run: best or model")
    args = parser.parse_args(argv)
    from hftrain.train import evaluate_run

    try:
        evaluate_run(args.run_dir, args.weights)
    except FileNotFoundError as err:
        print(f"hftrain eval: {err}", file=sys.stderr)
        return 2
    return 0


def train_main(argv: list[str]) -> int:
    from hftrain.train import main

    return main(argv)


COMMANDS = {
    "train": (train_main, "train a detector from a recipe"),
    "eval": (eval_main, "evaluate a run's best checkpoint"),
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        lines = [f"  {name:<8} {help_}" for name, (_, help_) in COMMANDS.items()]
        print("usage: hftrain COMMAND [ARGS]\n\ncommands:\n" + "\n".join(lines))
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    command, rest = argv[0], argv[1:]
    return COMMANDS[command][0](rest)


if __name__ == "__main__":
    sys.exit(main())
