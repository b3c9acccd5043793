"""The ``hftrain`` command: one sub-command per job, each a ``*_main(argv) -> int`` in its own module."""

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


def convert_main(argv: list[str]) -> int:
    from hftrain.data.convert import convert_main as run

    return run(argv)


def scan_main(argv: list[str]) -> int:
    from hftrain.blacklist import scan_main as run

    return run(argv)


def sweep_main(argv: list[str]) -> int:
    from hftrain.sweep import sweep_main as run

    return run(argv)


def report_main(argv: list[str]) -> int:
    from hftrain.report import report_main as run

    return run(argv)


def doctor_main(argv: list[str]) -> int:
    from hftrain.doctor import doctor_main as run

    return run(argv)


def check_sampler_main(argv: list[str]) -> int:
    from hftrain.doctor import check_sampler_main as run

    return run(argv)


COMMANDS = {
    "train": (train_main, "train a detector from a recipe"),
    "eval": (eval_main, "evaluate a run's best checkpoint"),
    "convert": (convert_main, "convert COCO / VOC / BDD100K / FRED labels into a Hugging Face dataset"),
    "scan": (scan_main, "decode every image and write a blacklist of broken ones"),
    "doctor": (doctor_main, "one health report of a recipe (data, batch, lr, frozen parameters, precision)"),
    "check-sampler": (check_sampler_main, "class mix of the first batches as the training sampler delivers them"),
    "sweep": (sweep_main, "train a grid of batch sizes x norms and tabulate the results"),
    "report": (report_main, "plots and a markdown summary of one run, or several overlaid"),
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        lines = [f"  {name:<14} {help_}" for name, (_, help_) in COMMANDS.items()]
        print("usage: hftrain COMMAND [ARGS]\n\ncommands:\n" + "\n".join(lines))
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    command, rest = argv[0], argv[1:]
    return COMMANDS[command][0](rest)


if __name__ == "__main__":
    sys.exit(main())
