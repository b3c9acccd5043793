"""The ``hftrain`` command: one sub-command per job, each a ``*_main(argv) -> int`` in its own module,
imported only when its command runs (so ``hftrain --help`` stays fast)."""

from __future__ import annotations

import importlib
import sys

COMMANDS = {
    "train": ("hftrain.train:main", "train a detector from a recipe"),
    "eval": ("hftrain.tools.eval:eval_main", "evaluate a run's weights on its validation split, another split or dataset"),
    "predict": ("hftrain.tools.predict:predict_main", "detect objects in images: COCO results JSON and drawn images"),
    "convert": ("hftrain.data.convert:convert_main", "convert COCO / VOC / BDD100K / FRED / YOLO / HF datasets into the Hub detection schema"),
    "scan": ("hftrain.data.blacklist:scan_main", "decode every image and write a blacklist of broken ones"),
    "doctor": ("hftrain.tools.doctor:doctor_main", "one health report of a recipe (data, batch, lr, frozen parameters, precision)"),
    "check-sampler": ("hftrain.tools.doctor:check_sampler_main", "class mix of the first batches as the training sampler delivers them (--pictures: their images as the model receives them)"),
    "sweep": ("hftrain.tools.sweep:sweep_main", "train a grid of batch sizes x norms and tabulate the results"),
    "report": ("hftrain.tools.report:report_main", "plots and a markdown summary of one run, or several overlaid"),
    "push": ("hftrain.tools.push:push_main", "upload a run's model/ (or best/) with its model card to the Hugging Face Hub"),
    "export": ("hftrain.tools.export:export_main", "export a run's weights to ONNX, checked against PyTorch with ONNX Runtime"),
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        lines = [f"  {name:<14} {help_}" for name, (_, help_) in COMMANDS.items()]
        print("usage: hftrain COMMAND [ARGS]\n\ncommands:\n" + "\n".join(lines))
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    module, function = COMMANDS[argv[0]][0].split(":")
    return getattr(importlib.import_module(module), function)(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
