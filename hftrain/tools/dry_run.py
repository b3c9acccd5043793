"""``hftrain train RECIPE --dry-run``: the recipe's whole path on a tiny model and a few generated images.

Everything the recipe names is built and run (its dataset format through the same adapter, its
model family, phases, augmentation, cache, EMA, memory settings, evaluation and checkpoints), with
these replacements, each printed:

- the model: a tiny random one of the same family (``hftrain.models.tiny``), no pretrained weights;
  switches (booleans) and loss weights (floats) of the recipe's ``model.config`` are kept, sizes
  (integers, lists, the backbone) come from the tiny config;
- the data: a few small images with boxes written in the recipe's format and split layout (COCO
  JSON, VOC devkit with the recipe's sets or a LabelImg-style VOC folder with its list files,
  BDD100K JSON, FRED as released (train/ and test/), a YOLO data.yaml with images/ and labels/
  folders per set, or a converted ``hf`` folder); the recipe's subset and blacklist file are not
  used (``auto`` is); ``data.val.from_train`` holds out the 4 validation images of one generated
  training split;
- sizes: images at most 96 x 160, micro-batches of 2 images; every epoch is one optimizer step
  (accumulation kept), two epochs, or one per phase, checkpointed each epoch, evaluated after the last;
- precision ``no`` without CUDA; at most 1 dataloader worker; no more torch threads than cores; no pictures; a temporary run directory.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from hftrain.recipe import Recipe, RecipeError, load_recipe

SIZE = (96, 160)  # (height, width) of the generated images
TRAIN_IMAGES_PER_STEP = 2  # micro-batch of the dry run
VAL_IMAGES = 4
SHAPES_CLASSES = ["rectangle", "ellipse", "triangle"]
FORMAT_CLASSES = {
    "coco": ["car", "person", "dog"],
    "hf": ["car", "person", "dog"],
    "voc": ["car", "person", "dog"],
    "bdd100k": ["car", "pedestrian", "traffic sign"],
    "fred": ["drone"],
    "yolo": ["car", "person", "dog"],
}


# ---------------------------------------------------------------------------- images


def sample_images(count: int, classes: int, seed: int) -> list[tuple[np.ndarray, list[tuple[int, list[int]]]]]:
    """``count`` RGB images with 1-3 filled rectangles each: (pixels, [(class index, [x1, y1, x2, y2])])."""
    rng = np.random.default_rng(seed)
    height, width = SIZE
    out = []
    for _ in range(count):
        image = np.clip(rng.integers(60, 200, 3) + rng.normal(0, 8, (height, width, 3)), 0, 255).astype(np.uint8)
        boxes = []
        for _ in range(int(rng.integers(1, 4))):
            w, h = int(rng.integers(16, width // 2)), int(rng.integers(16, height // 2))
            x, y = int(rng.integers(0, width - w)), int(rng.integers(0, height - h))
            image[y:y + h, x:x + w] = rng.integers(0, 256, 3)
            boxes.append((int(rng.integers(0, classes)), [x, y, x + w, y + h]))
        out.append((image, boxes))
    return out


# ---------------------------------------------------------------------------- writers, one per format


def write_coco(root: Path, split: str, samples, classes: list[str]) -> tuple[str, str]:
    image_dir = root / split
    image_dir.mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for i, (pixels, boxes) in enumerate(samples, start=1):
        Image.fromarray(pixels).save(image_dir / f"{i:06d}.jpg", quality=90)
        images.append({"id": i, "file_name": f"{i:06d}.jpg", "height": SIZE[0], "width": SIZE[1]})
        for label, (x1, y1, x2, y2) in boxes:
            annotations.append({"id": len(annotations) + 1, "image_id": i, "category_id": label + 1,
                                "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1), "iscrowd": 0})
    labels = root / f"{split}.json"
    categories = [{"id": k + 1, "name": name} for k, name in enumerate(classes)]
    labels.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return str(image_dir), str(labels)


def write_bdd100k(root: Path, split: str, samples, classes: list[str]) -> tuple[str, str]:
    image_dir = root / "images" / split
    image_dir.mkdir(parents=True, exist_ok=True)
    frames = []
    for i, (pixels, boxes) in enumerate(samples):
        name = f"{split}-{i:05d}.jpg"
        Image.fromarray(pixels).save(image_dir / name, quality=90)
        frames.append({"name": name, "attributes": {"weather": "clear", "scene": "city street", "timeofday": "daytime"},
                       "labels": [{"id": str(k), "category": classes[label],
                                   "box2d": {"x1": x1, "y1": y1, "x2": x2 - 1, "y2": y2 - 1}}  # inclusive corners
                                  for k, (label, (x1, y1, x2, y2)) in enumerate(boxes)]})
    labels = root / f"det_{split}.json"
    labels.write_text(json.dumps(frames))
    return str(image_dir), str(labels)


def write_voc(devkit: Path, sets: list[str], samples, classes: list[str]) -> None:
    from hftrain.data.formats.voc import parse_voc_set

    for spec in sets:
        year, split = parse_voc_set(spec)
        base = devkit / year
        for sub in ("JPEGImages", "Annotations", "ImageSets/Main"):
            (base / sub).mkdir(parents=True, exist_ok=True)
        ids = []
        for i, (pixels, boxes) in enumerate(samples):
            image_id = f"{split}_{i:06d}"
            ids.append(image_id)
            Image.fromarray(pixels).save(base / "JPEGImages" / f"{image_id}.jpg", quality=90)
            objects = "".join(
                f"<object><name>{classes[label]}</name><difficult>0</difficult><bndbox><xmin>{x1 + 1}</xmin>"
                f"<ymin>{y1 + 1}</ymin><xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox></object>"
                for label, (x1, y1, x2, y2) in boxes)
            (base / "Annotations" / f"{image_id}.xml").write_text(
                f"<annotation><filename>{image_id}.jpg</filename><size><width>{SIZE[1]}</width>"
                f"<height>{SIZE[0]}</height><depth>3</depth></size>{objects}</annotation>")
        (base / "ImageSets" / "Main" / f"{split}.txt").write_text("\n".join(ids) + "\n")


def write_voc_folder(root: Path, list_names: list[str], samples, classes: list[str]) -> tuple[str, str, list[str]]:
    """LabelImg's layout: ``images/<stem>.jpg`` beside ``annots/<stem>.xml``; with ``list_names`` (the recipe's
    list files), one list file of ids per name, the images dealt out among them. Returns (images, annots, lists)."""
    images, annots = root / "images", root / "annots"
    images.mkdir(parents=True, exist_ok=True)
    annots.mkdir(parents=True, exist_ok=True)
    stems = []
    for i, (pixels, boxes) in enumerate(samples):
        stem = f"{i:05d}"
        stems.append(stem)
        Image.fromarray(pixels).save(images / f"{stem}.jpg", quality=90)
        objects = "".join(
            f"<object><name>{classes[label]}</name><pose>Unspecified</pose><truncated>0</truncated>"
            f"<difficult>0</difficult><bndbox><xmin>{x1 + 1}</xmin><ymin>{y1 + 1}</ymin><xmax>{x2}</xmax>"
            f"<ymax>{y2}</ymax></bndbox></object>" for label, (x1, y1, x2, y2) in boxes)
        (annots / f"{stem}.xml").write_text(
            f"<annotation><folder>images</folder><filename>{stem}.jpg</filename><size><width>{SIZE[1]}</width>"
            f"<height>{SIZE[0]}</height><depth>3</depth></size><segmented>0</segmented>{objects}</annotation>")
    lists = []
    for k, name in enumerate(list_names):
        path = root / Path(name).name
        path.write_text("".join(f"{stem}\n" for stem in stems[k::len(list_names)]))
        lists.append(str(path))
    return str(images), str(annots), lists


def write_fred(root: Path, sets: list[str], samples, first_sequence: int) -> None:
    """FRED as released: one sequence per set, in ``<root>/<set>/<seq>/`` for a split folder such as
    ``train`` (or ``<root>/train/<seq>/`` plus ``dataset_splits/<group>/<split>_split.txt`` for a split
    file name such as ``challenging/train``; a flat ``<root>/<seq>/`` without sets): ``RGB/*.jpg`` and
    ``Event/Frames/*.png`` (the same frames, as many in both streams, named as FRED names them) and
    ``coordinates.txt`` / ``coordinates_rgb.txt`` with 6-field lines at the times the authors' rule
    gives frame i."""
    from hftrain.data.formats.fred import FRED_MODELS, authors_time_key

    for k, name in enumerate(sets or [""]):
        seq = str(first_sequence + k)
        folder_set = name and "/" not in name.strip("/") and not name.endswith(".txt")
        seq_dir = root / name.strip("/") / seq if folder_set else root / ("train" if name else "") / seq
        (seq_dir / "RGB").mkdir(parents=True, exist_ok=True)
        (seq_dir / "Event" / "Frames").mkdir(parents=True, exist_ok=True)
        lines = []
        for i, (pixels, boxes) in enumerate(samples):
            micro = 363444 + i * 33333
            Image.fromarray(pixels).save(seq_dir / "RGB" / f"Video_{seq}_16_03_{3 + micro // 10**6:02d}.{micro % 10**6:06d}.jpg")
            Image.fromarray(pixels).save(seq_dir / "Event" / "Frames" / f"Video_{seq}_frame_{(i + 1) * 33333}.png")
            lines += [f"{authors_time_key(i)}: {x1:.1f}, {y1:.1f}, {x2:.1f}, {y2:.1f}, {j + 1}, {FRED_MODELS[0]}\n"
                      for j, (_, (x1, y1, x2, y2)) in enumerate(boxes)]
        for box_file in ("coordinates.txt", "coordinates_rgb.txt"):
            (seq_dir / box_file).write_text("".join(lines))
        if name and not folder_set:
            group, _, split = name.strip("/").partition("/")
            split_file = root / "dataset_splits" / group / f"{split}_split.txt"
            split_file.parent.mkdir(parents=True, exist_ok=True)
            split_file.write_text(f"{seq}/\n")


def write_yolo(root: Path, sets: list[str], samples, classes: list[str]) -> Path:
    """ultralytics' layout: images/<set>/*.jpg, labels/<set>/*.txt (normalised centre boxes) and a
    data.yaml naming every set written so far."""
    height, width = SIZE
    for key in sets:
        for sub in ("images", "labels"):
            (root / sub / key).mkdir(parents=True, exist_ok=True)
        for i, (pixels, boxes) in enumerate(samples):
            Image.fromarray(pixels).save(root / "images" / key / f"{key}_{i:06d}.jpg", quality=90)
            (root / "labels" / key / f"{key}_{i:06d}.txt").write_text("".join(
                f"{label} {(x1 + x2) / 2 / width:.6f} {(y1 + y2) / 2 / height:.6f} {(x2 - x1) / width:.6f} "
                f"{(y2 - y1) / height:.6f}\n" for label, (x1, y1, x2, y2) in boxes))
    written = sorted(p.name for p in (root / "images").iterdir())
    data_yaml = root / "data.yaml"
    data_yaml.write_text(json.dumps({"path": ".", **{k: f"images/{k}" for k in written}, "names": classes}))
    return data_yaml


def write_split(fmt: str, root: Path, split_name: str, split_cfg, data_cfg, count: int, seed: int, first_sequence: int):
    """Write ``count`` images for one split in ``fmt``; returns the split config pointing at them."""
    classes = FORMAT_CLASSES[fmt]
    samples = sample_images(count, len(classes), seed)
    if fmt == "coco":
        images, labels = write_coco(root / "coco", split_name, samples, classes)
        return replace(split_cfg, images=images, labels=labels, subset=None)
    if fmt == "hf":
        from hftrain.data.convert import convert_source, save_converted

        images, labels = write_coco(root / "coco", split_name, samples, classes)
        dataset, report, image_root = convert_source("coco", images, labels)
        out = root / "hf" / split_name
        save_converted(dataset, report, image_root, "coco", out)
        return replace(split_cfg, images=str(out), labels=None, subset=None)
    if fmt == "bdd100k":
        images, labels = write_bdd100k(root / "bdd100k", split_name, samples, classes)
        return replace(split_cfg, images=images, labels=labels, subset=None)
    if fmt == "voc" and split_cfg.labels:  # a folder of XML files beside an image folder
        images, labels, lists = write_voc_folder(root / "voc" / split_name, split_cfg.sets, samples, classes)
        return replace(split_cfg, images=images, labels=labels, sets=lists, subset=None)
    if fmt == "voc":
        devkit = root / "VOCdevkit"
        sets = split_cfg.sets or ["2007/trainval" if split_name == "train" else "2007/test"]
        write_voc(devkit, sets, samples, classes)
        return replace(split_cfg, images=str(devkit), labels=None, sets=sets, subset=None)
    if fmt == "yolo":
        sets = split_cfg.sets or [split_name]
        data_yaml = write_yolo(root / "yolo", sets, samples, classes)
        return replace(split_cfg, images=str(data_yaml), labels=None, sets=sets, subset=None)
    if fmt == "fred":
        fred = root / "FRED"
        write_fred(fred, split_cfg.sets, samples, first_sequence)
        return replace(split_cfg, images=str(fred), labels=None, subset=None)
    raise RecipeError([f"data.format: {fmt!r} has no dry-run writer"])


# ---------------------------------------------------------------------------- the dry-run recipe


def tiny_model_config(name: str, config: dict) -> dict:
    from hftrain.models.tiny import tiny_config

    switches = {k: v for k, v in config.items() if isinstance(v, (bool, float))}
    return {**switches, **tiny_config(name)}


def dry_run_recipe(recipe: Recipe, work_dir: Path) -> tuple[Recipe, list[str]]:
    """The recipe shrunk as the module docstring says; and the lines that say what changed."""
    notes = [f"model: a tiny random {recipe.model.name} (recipe: "
             f"{'pretrained ' + recipe.model.pretrained if recipe.model.pretrained else 'from scratch'})"]
    model = replace(recipe.model, pretrained=None, config=tiny_model_config(recipe.model.name, recipe.model.config))
    data = recipe.data
    accumulation = max([recipe.train.gradient_accumulation_steps]
                       + [p.gradient_accumulation_steps or 0 for p in recipe.phases])
    train_count = TRAIN_IMAGES_PER_STEP * accumulation
    if data.synthetic is not None:
        synthetic = replace(data.synthetic, out_dir=str(work_dir / "data" / "shapes"), train_images=train_count,
                            val_images=VAL_IMAGES, image_size=min(data.synthetic.image_size, 96))
        data = replace(data, synthetic=synthetic)
        notes.append(f"data: the shapes generator, {train_count} train / {VAL_IMAGES} val images")
    else:
        root = work_dir / "data"
        if data.val.from_train:  # one generated training split; the fraction holds out exactly VAL_IMAGES of it
            total = train_count + VAL_IMAGES
            val = replace(data.val, from_train=VAL_IMAGES / total)
            notes.append(f"data.val.from_train: {data.val.from_train:g} -> {VAL_IMAGES / total:g} "
                         f"({VAL_IMAGES} of {total} generated training images held out)")
        else:
            total = train_count
            val = write_split(data.format, root, "val", data.val, data, VAL_IMAGES, 1, first_sequence=100)
        data = replace(
            data,
            train=write_split(data.format, root, "train", data.train, data, total, 0, first_sequence=0),
            val=val,
            read_image_sizes=data.format == "bdd100k" or data.read_image_sizes,  # not BDD100K's 1280 x 720
            blacklist="auto" if data.blacklist == "auto" else None,
            cache_dir=str(work_dir / "cache"), max_missing=0.0,
        )
        notes.append(f"data: {train_count} train / {VAL_IMAGES} val generated images in {data.format} layout "
                     f"under {root}")
    scale = min(1.0, 96 / data.min_size)
    data = replace(data, min_size=max(32, int(data.min_size * scale)), max_size=max(32, int(data.max_size * scale)),
                   num_workers=min(data.num_workers, 1))
    augment = getattr(data, "augment", None)
    if augment is not None and augment.close_mosaic_epoch is not None:  # reach the closing epoch
        data = replace(data, augment=replace(augment, close_mosaic_epoch=2 if not recipe.phases else len(recipe.phases)))
    batch = TRAIN_IMAGES_PER_STEP
    cpu_threads = recipe.train.cpu_threads
    if cpu_threads is not None and cpu_threads > (os.cpu_count() or 1):  # more threads than cores only contend
        notes.append(f"train.cpu_threads: {cpu_threads} -> {os.cpu_count() or 1} (the cores here)")
        cpu_threads = os.cpu_count() or 1
    train = replace(recipe.train, batch_size=batch, effective_batch=None, max_steps=None, cpu_threads=cpu_threads,
                    epochs=2 if not recipe.phases else len(recipe.phases))
    phases = [replace(p, epochs=1, batch_size=batch) for p in recipe.phases]
    precision = recipe.precision
    if not torch.cuda.is_available() and precision.mode != "no":
        precision = replace(precision, mode="no")
        notes.append(f"precision: {recipe.precision.mode} -> no (no CUDA device here)")
    schedule = replace(recipe.schedule, warmup_steps=min(recipe.schedule.warmup_steps, 1))
    if recipe.hub.push or recipe.hub.push_best:
        notes.append(f"hub.push/push_best: off (a dry run uploads nothing to {recipe.hub.repo_id})")
    dry = replace(
        recipe, output_dir=str(work_dir / "run"), model=model, data=data, train=train, phases=phases,
        precision=precision, schedule=schedule,
        eval=replace(recipe.eval, interval=train.epochs, batch_size=VAL_IMAGES // 2),
        checkpoint=replace(recipe.checkpoint, interval=1, every_steps=None),
        log=replace(recipe.log, interval=1), plots=replace(recipe.plots, enabled=False),
        hub=replace(recipe.hub, push=False, push_best=False),
    )
    notes.append(f"training: micro-batch {batch} x accumulation {accumulation}, {train.epochs} epochs of one "
                 f"optimizer step, images at most {data.min_size}/{data.max_size}, {data.num_workers} worker(s)")
    return dry, notes


def prepare(recipe_path: str, overrides: list[str], work_dir: Path | None = None) -> tuple[Recipe, Path, bool]:
    """The dry-run recipe of ``recipe_path`` in ``work_dir`` (a new temporary directory without one);
    returns it, the directory and whether it is temporary. :func:`hftrain.train.dry_run` trains it."""
    recipe = load_recipe(recipe_path, overrides, check_paths=False)
    temporary = work_dir is None
    work_dir = Path(tempfile.mkdtemp(prefix="hftrain-dry-run-")) if temporary else Path(work_dir)
    dry, notes = dry_run_recipe(recipe, work_dir)
    print(f"hftrain dry run of {recipe_path} in {work_dir}:", *(f"  {line}" for line in notes), sep="\n", flush=True)
    return dry, work_dir, temporary


def check(recipe_path: str, metrics: dict) -> None:
    """A dry run passes when its evaluation gave finite COCO statistics."""
    from hftrain.metrics.coco_eval import STAT_NAMES

    if not metrics or not all(np.isfinite(metrics[name]) for name in STAT_NAMES):  # per-class APs may be NaN (class absent)
        raise RuntimeError(f"dry run of {recipe_path}: the evaluation gave no finite metrics ({metrics})")
    print(f"hftrain dry run of {recipe_path}: OK (mAP {metrics.get('map', float('nan')):.4f} on generated images; "
          "the number means nothing, the path works)", flush=True)


def print_recipe(recipe_path: str, overrides: list[str]) -> int:
    """``--print``: the resolved recipe (base, overrides, defaults) as YAML; missing data paths are warned about."""
    import yaml

    from hftrain.recipe import missing_paths, to_dict

    recipe = load_recipe(recipe_path, overrides, check_paths=False)
    print(f"# {recipe_path} resolved (base, overrides and defaults applied)")
    print(yaml.safe_dump(to_dict(recipe), sort_keys=False), end="")
    for problem in missing_paths(recipe):
        print(f"warning: {problem}", file=sys.stderr)
    return 0
