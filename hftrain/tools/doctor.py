"""Checks without training: ``hftrain check-sampler RECIPE`` and ``hftrain doctor RECIPE``.

check-sampler: the class mix of the first batches exactly as the training sampler will deliver
them (same sampler, seed and epoch; labels only, no image is decoded), the dataset's class
distribution, the imbalance ratio (most / least frequent class, in boxes) and advice when one
class dominates. With ``--pictures``, the images of those batches drawn as the model receives them
(``hftrain.report.train_batch``, the picture training draws as ``plots/train_batch.png``).

doctor: one report before a long run: dataset counts and class distribution, blacklist status,
boxes per image, image sizes, effective batch (warning below 32, as the seed's guide advises),
learning rate and warm-up sanity, trainable and frozen parameters (the model is built, not
trained) and the precision chosen for this device. The pretrained checkpoint is checked first,
before any data is read: which checkpoint, which backbone; once the model is built, which heads
were re-initialised and their class-bias prior. Lines starting with ``WARNING`` need a look;
``ERROR`` lines make the command exit with 1.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections import Counter
from pathlib import Path

import numpy as np

from hftrain.data import samplers
from hftrain.recipe import RecipeError, load_recipe

MIN_EFFECTIVE_BATCH = 32
"""The seed's guide: an effective batch below 32 makes the loss oscillate."""
DOMINANT_SHARE = 0.5
"""A class holding more than this share of the boxes dominates the dataset."""


def _load(argv: list[str], prog: str, description: str, extra=None, before_data=None):
    """Parse the command line, load the recipe and its data; None (problems printed) for a bad recipe,
    or when ``before_data(recipe)`` (run before any data is read) returns False."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("recipe", help="recipe YAML file")
    parser.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. data.sampler=repeat_factor")
    if extra:
        extra(parser)
    args = parser.parse_args(argv)
    try:
        recipe = load_recipe(args.recipe, args.overrides)
    except RecipeError as err:
        print(err, file=sys.stderr)
        return None
    if before_data is not None and not before_data(recipe):
        return None
    from hftrain.data.loader import load_data, materialise_synthetic

    data = load_data(materialise_synthetic(recipe.data), seed=recipe.train.seed)
    return args, recipe, data


def class_distribution(classes: list[np.ndarray], class_names: list[str]) -> tuple[list[str], float, list[str]]:
    """Lines of boxes and images per class, the imbalance ratio, and advice."""
    boxes = Counter()
    images = Counter()
    for present in classes:
        boxes.update(present.tolist())
        images.update(set(present.tolist()))
    total = sum(boxes.values())
    lines = []
    for c, name in enumerate(class_names):
        share = boxes[c] / total if total else 0.0
        lines.append(f"  class {c} {name!r}: {boxes[c]} boxes ({100 * share:.1f}%) in {images[c]} images")
    counts = [boxes[c] for c in range(len(class_names))]
    present = [n for n in counts if n]
    ratio = max(present) / min(present) if present else 0.0
    advice = []
    absent = [class_names[c] for c in range(len(class_names)) if boxes[c] == 0]
    if absent:
        advice.append(f"WARNING: classes with no training box: {absent}")
    if total and max(counts) / total > DOMINANT_SHARE and len(class_names) > 1:
        top = class_names[int(np.argmax(counts))]
        advice.append(f"WARNING: class {top!r} dominates ({100 * max(counts) / total:.0f}% of the boxes, imbalance ratio "
                      f"{ratio:.1f}): batches will be mostly {top!r}; set data.sampler: repeat_factor "
                      f"(data.repeat_threshold: about the image fraction of the rare classes) to repeat images "
                      f"of rare classes")
    return lines, ratio, advice


def sampler_batches(recipe, data, batches: int, epoch: int = 1) -> list[list[int]]:
    """Dataset indices of the first ``batches`` micro-batches of ``epoch`` as training orders them
    (one process: the global order that Accelerate hands out batch by batch)."""
    from hftrain.data.epoch_sampler import EpochShuffle

    batch_size = recipe.train.batch_size
    if batch_size == "auto":
        batch_size = recipe.train.effective_batch
    classes = samplers.image_classes(data.train.rows)
    batch_sampler = None
    if recipe.data.sampler != "random" or recipe.data.group_by_aspect_ratio:
        batch_sampler = samplers.train_batch_sampler(recipe.data, classes, samplers.image_sizes(data.train.rows),
                                                     len(data.class_names), batch_size, recipe.train.seed)
    if batch_sampler is None:
        from torch.utils.data import BatchSampler

        batch_sampler = BatchSampler(EpochShuffle(len(data.train), recipe.train.seed), batch_size, drop_last=False)
    if hasattr(batch_sampler, "set_epoch"):
        batch_sampler.set_epoch(epoch)
    else:
        batch_sampler.sampler.set_epoch(epoch)
    out = []
    for keys in batch_sampler:
        out.append([k[1] if isinstance(k, tuple) else k for k in keys])
        if len(out) == batches:
            break
    return out


def _at_least_one(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _check_sampler_options(parser) -> None:
    parser.add_argument("--batches", type=_at_least_one, default=5, help="how many batches to show (default 5)")
    parser.add_argument("--epoch", type=_at_least_one, default=1, help="the epoch whose batches to show (default 1): its order "
                        "and, with --pictures, its augmentation")
    parser.add_argument("--pictures", nargs="?", const="", default=None, metavar="PNG",
                        help="also draw the images of these batches as the model receives them (augmented, padded, "
                             "with the boxes the loss gets), as plots/train_batch.png at the start of training; to PNG "
                             "(default OUTPUT_DIR/plots/train_batch_epochE.png). Builds the model (its padding and box "
                             "normalisation depend on the family)")


def check_sampler_main(argv: list[str]) -> int:
    loaded = _load(argv, "hftrain check-sampler", "Class mix of the first training batches, class distribution, imbalance.",
                   _check_sampler_options)
    if loaded is None:
        return 2
    args, recipe, data = loaded
    from hftrain.health.debug import batch_warnings

    names = data.class_names
    classes = samplers.image_classes(data.train.rows)
    print(f"sampler: {recipe.data.sampler}"
          + (f" (repeat_threshold {recipe.data.repeat_threshold})" if recipe.data.sampler == "repeat_factor" else "")
          + (", grouped by aspect ratio" if recipe.data.group_by_aspect_ratio else "")
          + f"; seed {recipe.train.seed}; {len(classes)} training images")
    print(f"first {args.batches} batches of epoch {args.epoch}:")
    single = 0
    delivered = Counter()
    for i, indices in enumerate(sampler_batches(recipe, data, args.batches, args.epoch), 1):
        counts = Counter()
        for index in indices:
            counts.update(names[c] for c in classes[index].tolist())
        delivered.update(counts)
        mix = ", ".join(f"{name}: {n}" for name, n in sorted(counts.items())) or "no boxes"
        print(f"  batch {i} ({len(indices)} images): {mix}; {len(counts)} of {len(names)} classes")
        for warning in batch_warnings(counts, len(names)):
            single += warning.startswith("ALL")
            print(f"    WARNING: {warning}")
    lines, ratio, advice = class_distribution(classes, names)
    print("class distribution (training boxes):", *lines, sep="\n")
    print(f"imbalance ratio (most / least frequent class present): {ratio:.1f}")
    if recipe.data.sampler == "repeat_factor":
        factors = samplers.repeat_factors(classes, len(names), recipe.data.repeat_threshold)
        print(f"repeat factors: min {factors.min():.2f}, max {factors.max():.2f}; an epoch has "
              f"{int(round(factors.sum()))} samples for {len(factors)} images")
    for line in advice:
        print(line)
    if single:
        print(f"{single} of {args.batches} batches hold a single class")
    if args.pictures is not None:
        return draw_batches(recipe, data, args.batches, args.epoch, args.pictures)
    return 0


PICTURE_IMAGES = 64
"""check-sampler --pictures draws at most this many images."""


def draw_batches(recipe, data, batches: int, epoch: int, path: str) -> int:
    """``check-sampler --pictures``: the first ``batches`` batches of ``epoch`` drawn as training's
    ``plots/train_batch.png`` is (:mod:`hftrain.report.train_batch`), to ``path`` (or the default)."""
    from hftrain.models.pretrained import PretrainedError
    from hftrain.models.registry import build_model, check_model
    from hftrain.report import train_batch

    batch_size = recipe.train.batch_size
    if batch_size == "auto":  # as sampler_batches: the global batch
        batch_size = recipe.train.effective_batch
    try:
        check_model(recipe.model)
        detector = build_model(recipe.model, data.class_names, fp32_criterion=recipe.precision.fp32_criterion)
    except PretrainedError as err:
        print(f"hftrain check-sampler --pictures: {err}", file=sys.stderr)
        return 2
    images = min(batches * batch_size, PICTURE_IMAGES)
    loader = train_batch.loader_like_training(data, batch_size, recipe.data, recipe.train.seed, detector)
    drawn = train_batch.first_batches(loader, epoch, images)
    grid = train_batch.batch_grid(drawn, data.class_names, detector.uses_pixel_mask, epoch, images=images)
    out = Path(path) if path else Path(recipe.output_dir) / "plots" / f"train_batch_epoch{epoch}.png"
    train_batch.save_png(grid, out)
    shown = sum(b["images"] for b in drawn)
    print(f"pictures: {out} ({min(images, shown)} images of the first {len(drawn)} batch(es) of epoch {epoch}, "
          f"as the model receives them"
          + (f"; at most {PICTURE_IMAGES} are drawn" if batches * batch_size > PICTURE_IMAGES else "") + ")")
    return 0


def _report_checkpoint(recipe) -> bool:
    """``== model weights``: whether the pretrained checkpoint loads (config, weights file, backbone,
    architecture), before any data is read. False (an ERROR line printed) when it cannot."""
    from hftrain.models.pretrained import PretrainedError
    from hftrain.models.registry import check_model

    print("== model weights")
    try:
        described = check_model(recipe.model)
    except PretrainedError as err:
        print(f"ERROR: {err}")
        print("== 1 error(s) (the data was not read)")
        return False
    print(f"  pretrained: {described}" if described else "  from scratch (model.pretrained: none)")
    return True


def doctor_main(argv: list[str]) -> int:
    checkpoint = {}

    def check_checkpoint(recipe) -> bool:
        checkpoint["loads"] = _report_checkpoint(recipe)
        return checkpoint["loads"]

    loaded = _load(argv, "hftrain doctor", "One health report of a recipe before a long run.", lambda p: p.add_argument(
        "--processes", type=int, default=1, help="processes the run will use (default 1)"), before_data=check_checkpoint)
    if loaded is None:
        return 1 if checkpoint.get("loads") is False else 2
    args, recipe, data = loaded
    errors = 0

    def say(line: str) -> None:
        nonlocal errors
        errors += line.startswith("ERROR")
        print(line)

    _report_data(recipe, data, say)
    _report_batch_and_schedule(recipe, len(data.train), args.processes, say)
    _report_model_and_device(recipe, data.class_names, say)
    say(f"== {errors} error(s)")
    return 1 if errors else 0


def _report_data(recipe, data, say) -> None:
    """Sizes, class distribution, sampler, blacklist, boxes per image, image sizes."""
    names = data.class_names
    classes = samplers.image_classes(data.train.rows)
    sizes = samplers.image_sizes(data.train.rows)
    say(f"== data ({recipe.data.format})")
    say(f"  {len(data.train)} training images, {len(data.val)} validation images, {len(names)} classes")
    for note in data.notes:
        say(f"  {note}")
    lines, ratio, advice = class_distribution(classes, names)
    say("  class distribution (training boxes):")
    for line in lines:
        say("  " + line)
    say(f"  imbalance ratio (most / least frequent class present): {ratio:.1f}")
    for line in advice:
        say(line)
    say(f"  sampler: {recipe.data.sampler}{', grouped by aspect ratio' if recipe.data.group_by_aspect_ratio else ''}")
    if recipe.data.blacklist is None:
        say("  blacklist: none (WARNING: images that fail to decode are found only during training; "
            "run `hftrain scan` or set data.blacklist: auto)")
    elif recipe.data.blacklist == "auto":
        say("  blacklist: auto (scanned once, cached)")
    else:
        path = Path(recipe.data.blacklist)
        say(f"  blacklist: {path} ({'found' if path.is_file() else 'ERROR: file not found'})")
    per_image = np.array([len(c) for c in classes])
    if len(per_image):
        say(f"  boxes per image: min {per_image.min()}, mean {per_image.mean():.1f}, max {per_image.max()}; "
            f"{int((per_image == 0).sum())} images without boxes")
    if len(sizes):
        ratios = sizes[:, 1] / np.maximum(1, sizes[:, 0])
        distinct = len({tuple(s) for s in sizes.tolist()})
        say(f"  image sizes (h x w): {distinct} distinct, from {sizes[:, 0].min()}x{sizes[:, 1].min()} to "
            f"{sizes[:, 0].max()}x{sizes[:, 1].max()}; aspect ratio (w/h) {ratios.min():.2f}..{ratios.max():.2f}; "
            f"resized to {recipe.data.resize} min {recipe.data.min_size} / max {recipe.data.max_size}")


def _report_batch_and_schedule(recipe, train_images: int, processes: int, say) -> None:
    """Effective batch, steps, learning rate, warm-up and clipping."""
    say("== batch and schedule")
    if recipe.train.batch_size == "auto":
        effective = recipe.train.effective_batch
        say(f"  batch_size: auto (probed before training) for effective batch {effective}")
    else:
        effective = recipe.train.batch_size * recipe.train.gradient_accumulation_steps * processes
        say(f"  effective batch: {effective} (= {recipe.train.batch_size} x {recipe.train.gradient_accumulation_steps} "
            f"accumulation x {processes} process(es))")
    if effective < MIN_EFFECTIVE_BATCH:
        say(f"WARNING: effective batch {effective} is below {MIN_EFFECTIVE_BATCH}: the loss tends to oscillate; raise "
            f"train.gradient_accumulation_steps (or use train.batch_size: auto with train.effective_batch)")
    steps_per_epoch = math.ceil(train_images / max(1, effective))
    total = steps_per_epoch * recipe.train.epochs
    lr, sched = recipe.optim.lr, recipe.schedule
    say(f"  {steps_per_epoch} optimizer steps per epoch, {total} in all; lr {lr:g} ({sched.name}), "
        f"warm-up {sched.warmup_steps} steps from {sched.warmup_start_lr:g}")
    if lr > 1e-3:
        say(f"WARNING: optim.lr {lr:g} is high for AdamW on a DETR-family model (1e-4 is usual): a loss that "
            f"explodes to NaN usually starts here")
    if lr < 1e-6:
        say(f"WARNING: optim.lr {lr:g} is so small that the loss will barely move")
    if sched.warmup_steps >= total:
        say(f"WARNING: warm-up ({sched.warmup_steps} steps) is not shorter than the run ({total} steps): the "
            f"learning rate never reaches {lr:g}")
    if sched.warmup_steps and sched.warmup_start_lr >= lr:
        say(f"ERROR: schedule.warmup_start_lr {sched.warmup_start_lr:g} is not below optim.lr {lr:g}")
    if sched.warmup_steps == 0 and lr >= 1e-4 and not recipe.model.pretrained:
        say("  note: no warm-up at a high learning rate from scratch; schedule.warmup_steps smooths the start")
    if recipe.train.clip_max_norm is None:
        say("WARNING: train.clip_max_norm is off: DETR-family training usually clips at 0.1")
    say(f"  non-finite guard: {recipe.guard.nonfinite}; debug mode: {'on' if recipe.debug else 'off'}")


def _report_model_and_device(recipe, names: list[str], say) -> None:
    """Parameters (trainable and frozen) of the built model; precision on this machine."""
    say("== model and device")
    from hftrain.health.debug import count_parameters
    from hftrain.models.registry import build_model
    from hftrain.engine.accelerator import resolve_precision

    try:
        detector = build_model(recipe.model, names, fp32_criterion=recipe.precision.fp32_criterion)
    except Exception as err:  # noqa: BLE001 - the doctor reports, it does not crash
        say(f"  model: could not build {recipe.model.name!r}: {str(err).splitlines()[0][:200]}")
    else:
        say(f"  weights: {detector.loaded}")
        for note in detector.notes:
            say(f"  note: {note}")
        tensors, elements, frozen, frozen_elements = count_parameters(detector.model)
        say(f"  model {recipe.model.name}: {elements + frozen_elements:,} parameters; trainable {elements:,} "
            f"({tensors} tensors), frozen {frozen_elements:,} ({frozen} tensors)")
        if tensors == 0:
            say("ERROR: every parameter is frozen: nothing would train and the loss could never move")
    import torch

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU"
    say(f"  precision: {resolve_precision(recipe.precision.mode)} on {device} (recipe: {recipe.precision.mode}); "
        f"criterion {'fp32' if recipe.precision.fp32_criterion else 'autocast'}")
