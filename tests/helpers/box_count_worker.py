"""Run by tests/models/test_families.py as two CPU processes (gloo):

    ACCELERATE_USE_CPU=true torchrun --standalone --nproc_per_node 2 tests/helpers/box_count_worker.py OUT.json

Each process computes every DETR family's loss terms on its half of the images of
tests/box_count_case.py, through our builder and through transformers' own loss path; the main
process writes all processes' terms to OUT.json.
"""

from __future__ import annotations

import json
import sys

import torch
from accelerate import PartialState

from box_count_case import FAMILIES, IMAGES_PER_PROCESS, build, images_and_labels, loss_terms, transformers_copy


def main(out: str) -> None:
    torch.set_num_threads(1)
    state = PartialState(cpu=True)  # as the training loop: transformers' DETR loss looks at it
    assert state.num_processes == 2 and state.backend == "gloo", (state.num_processes, state.backend)
    pixels, labels = images_and_labels()
    mine = slice(state.process_index * IMAGES_PER_PROCESS, (state.process_index + 1) * IMAGES_PER_PROCESS)
    pixels, labels = pixels[mine], labels[mine]
    terms = {}
    for name in FAMILIES:
        detector = build(name)
        terms[name] = {
            "hftrain": loss_terms(detector, detector.model, pixels, labels),
            "transformers": loss_terms(detector, transformers_copy(detector.model), pixels, labels),
        }
    gathered = [None] * state.num_processes
    torch.distributed.all_gather_object(gathered, terms)
    if state.is_main_process:
        with open(out, "w") as f:
            json.dump(gathered, f)
    state.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
