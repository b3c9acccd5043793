"""``hftrain convert``: turn a COCO, VOC, BDD100K, FRED, YOLO or Hugging Face (``hf``) source into a saved dataset.

The output folder holds ``datasets.save_to_disk`` files in the project's schema, the Hub
detection schema (``datasets.load_from_disk`` reads it as such: class names in the ClassLabel,
``image`` an ``Image`` feature), the sidecar ``hftrain_dataset.json`` (schema version, format,
image root, sources, class names and each class's original category ids) and
``report.json`` (images, boxes per class, and every dropped or changed box or image by reason).
Images are referenced by path, relative to the recorded image root; ``--embed-images`` stores
the encoded bytes in the dataset instead (the paths stay, as the rows' keys).

The output is written to a new folder beside ``--out`` and renamed into place when complete.
``--overwrite`` replaces only an earlier conversion (a folder holding ``hftrain_dataset.json``),
removed after the new one is in place; any other non-empty folder is refused untouched.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

import datasets
import numpy as np
import pyarrow.compute as pc
from datasets.fingerprint import generate_random_fingerprint

from hftrain.data.formats.coco import DatasetError
from hftrain.data.formats.report import ConversionReport
from hftrain.data.output_folder import output_refusal, replace_folder
from hftrain.data.schema import IMAGE_ROOT_FILE, OLD_SCHEMA, SCHEMA_VERSION, check_schema, class_names_of

FORMATS = ("coco", "voc", "bdd100k", "fred", "yolo", "hf")
REPORT_FILE = "report.json"


def convert_source(
    fmt: str,
    images: str | Path,
    labels: str | Path | None = None,
    *,
    sets: list[str] | None = None,
    modality: str = "rgb",
    drone_classes: str = "single",
    category_map: dict[str, str | None] | None = None,
    max_missing: float = 0.0,
    read_image_sizes: bool = False,
    check_files: bool = True,
    class_names: list[str] | None = None,
    fred_boxes: str = "extended",
    recipe_split: str = "train",
) -> tuple[datasets.Dataset, ConversionReport, Path]:
    """Read one source with its format's reader: (dataset, report, image root). ``recipe_split``
    (train or val): which split of an ``hf`` source is read when ``sets`` names none.

    VOC: without ``labels``, ``images`` is a VOCdevkit and ``sets`` are ``YEAR/SPLIT`` names; with
    ``labels`` (a folder of XML files), ``images`` is the image folder and ``sets`` are optional list
    files of image ids. ``class_names`` (VOC only) fixes the classes and their order."""
    if class_names and fmt != "voc":
        raise DatasetError(f"{fmt}: class names (--classes / data.class_names) apply to voc only; "
                           f"{fmt} names its classes in its label files")
    if fmt == "hf":
        from hftrain.data.formats.hub import read_hub

        if labels or len(sets or []) > 1:
            raise DatasetError(f"hf: give the dataset as images (--images / data.<split>.images) and at most one "
                               f"split name as sets/--split (got labels {labels!r}, sets {sets})")
        return read_hub(str(images), (sets or [None])[0], recipe_split, category_map)
    images = Path(images)
    if fmt in ("coco", "bdd100k") and not labels:
        raise DatasetError(f"{fmt}: a label file is needed (--labels / data.<split>.labels)")
    if fmt in ("coco", "bdd100k") and sets:
        raise DatasetError(f"{fmt}: sets/--split apply to voc and fred only (got {sets})")
    if fmt == "coco":
        from hftrain.data.formats.coco import read_coco

        dataset, report = read_coco(images, labels, category_map, max_missing, check_files)
    elif fmt == "bdd100k":
        from hftrain.data.formats.bdd100k import read_bdd100k

        dataset, report = read_bdd100k(images, labels, category_map, max_missing, check_files, read_image_sizes)
    elif fmt == "voc":
        from hftrain.data.formats.voc import read_voc, read_voc_folder

        if labels:
            dataset, report = read_voc_folder(images, labels, sets, class_names, category_map, max_missing, check_files)
        else:
            dataset, report = read_voc(images, sets or ["2007/trainval"], category_map, max_missing, check_files,
                                       class_names)
    elif fmt == "yolo":
        from hftrain.data.formats.yolo import YoloDataset, read_yolo

        if labels:
            raise DatasetError(f"yolo: the label files are found from data.yaml; give data.yaml as the images "
                               f"(--images / data.<split>.images), not labels ({labels})")
        if not sets:
            raise DatasetError("yolo: name the data.yaml set(s) to read with --split / data.<split>.sets "
                               "(train, val or test)")
        dataset, report = read_yolo(images, sets, category_map, max_missing)
        images = YoloDataset(images).root
    elif fmt == "fred":
        from hftrain.data.formats.fred import read_fred
        from hftrain.data.formats.fred_layout import fred_image_root

        dataset, report = read_fred(images, labels, sets, modality, drone_classes, category_map, max_missing, check_files,
                                    fred_boxes)
        return dataset, report, fred_image_root(images, labels, sets)  # above the root for linked sequences
    else:
        raise DatasetError(f"unknown format {fmt!r} (known: {', '.join(FORMATS)})")
    return dataset, report, images.resolve()


def report_from_dict(data: dict) -> ConversionReport:
    """The inverse of ``ConversionReport.to_dict``."""
    return ConversionReport(
        source=data["source"], images=data["images"], boxes=data["boxes"],
        boxes_per_class=Counter(data.get("boxes_per_class", {})),
        dropped_boxes=Counter(data.get("dropped_boxes", {})),
        changed_boxes=Counter(data.get("changed_boxes", {})),
        dropped_images=Counter(data.get("dropped_images", {})),
        kept_images=Counter(data.get("kept_images", {})),
        examples=dict(data.get("examples", {})), notes=list(data.get("notes", [])),
        category_ids={name: list(ids) for name, ids in data.get("category_ids", {}).items()},
    )


def take_subset(dataset: datasets.Dataset, report: ConversionReport, subset: int | None, seed: int) -> datasets.Dataset:
    """A random ``subset`` of the rows (seeded, kept in their original order); the rest counted."""
    if subset is None or subset >= len(dataset):
        return dataset
    if subset < 1:
        raise ValueError(f"subset: {subset} must be at least 1")
    chosen = np.sort(np.random.default_rng(seed).choice(len(dataset), size=subset, replace=False))
    left_out = len(dataset) - subset
    dataset = dataset.select(chosen.tolist())
    report.dropped_images[f"left out by subset {subset} (seed {seed})"] += left_out
    report.images = subset
    report.boxes, report.boxes_per_class = count_boxes(dataset)
    return dataset


def count_boxes(dataset: datasets.Dataset) -> tuple[int, Counter]:
    """(number of boxes, boxes per class name) in a dataset of the schema."""
    names = class_names_of(dataset)
    column = dataset.with_format("arrow").select_columns(["objects"])[:]["objects"].combine_chunks()
    categories = pc.list_flatten(column.field("category")).to_numpy(zero_copy_only=False)
    counts = np.bincount(categories, minlength=len(names)) if len(categories) else np.zeros(len(names), int)
    return int(counts.sum()), Counter({names[i]: int(c) for i, c in enumerate(counts) if c})


def embed_images(dataset: datasets.Dataset, image_root: Path) -> datasets.Dataset:
    """Fill each row's ``image.bytes`` with its file's encoded bytes."""
    def read(batch):
        images = []
        for image in batch["image"]:
            images.append({"path": image["path"], "bytes": image["bytes"] or (image_root / image["path"]).read_bytes()})
        return {"image": images}

    return dataset.map(read, batched=True, batch_size=64, features=dataset.features, desc="embedding images")


def save_converted(dataset: datasets.Dataset, report: ConversionReport, image_root: Path, fmt: str,
                   out: str | Path, sources: dict | None = None, embedded: bool = False) -> Path:
    """Write the dataset, its sidecar and its report to ``out`` (created).

    The ``image`` column is written as its plain ``{bytes, path}`` storage and then declared an
    ``Image`` feature in ``dataset_info.json``: ``save_to_disk`` embeds the file of every
    ``Image`` path it writes, which would copy all images and replace their paths by base names.
    ``datasets.load_from_disk`` then reads it as the Hub detection schema (``Image``, decoded).
    """
    out = Path(out)
    features = dataset.features
    storage = datasets.Features({**features, "image": {"bytes": datasets.Value("binary"), "path": datasets.Value("string")}})
    table = dataset.with_format(None).data.replace_schema_metadata(None)  # the features are storage's
    plain = datasets.Dataset(table, info=datasets.DatasetInfo(features=storage), indices_table=dataset._indices,
                             fingerprint=generate_random_fingerprint())  # hashing the table would cost a copy
    plain.save_to_disk(str(out))
    info = datasets.DatasetInfo.from_directory(str(out))
    info.features = datasets.Features({**features, "image": datasets.Image()})
    info.write_to_directory(str(out))
    sidecar = {
        "format": fmt,
        "schema_version": SCHEMA_VERSION,
        "image_root": str(Path(image_root).resolve()),
        "embedded_images": embedded,
        "sources": sources or {},
        "class_names": class_names_of(dataset),
        "category_ids": report.category_ids,
    }
    (out / IMAGE_ROOT_FILE).write_text(json.dumps(sidecar, indent=2))
    report.save(out / REPORT_FILE)
    return out


def read_sidecar(folder: str | Path) -> dict:
    """The ``hftrain_dataset.json`` of a folder written by ``hftrain convert``."""
    sidecar = Path(folder) / IMAGE_ROOT_FILE
    try:
        meta = json.loads(sidecar.read_text())
        Path(meta["image_root"])
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise DatasetError(f"{sidecar}: unreadable sidecar ({err})") from None
    return meta


def load_converted(folder: str | Path) -> tuple[datasets.Dataset, Path]:
    """(dataset, image root) of a folder written by ``hftrain convert`` (format ``hf``), its
    images read undecoded. A folder of the older schema is refused, asking for a new conversion."""
    folder = Path(folder)
    if not (folder / IMAGE_ROOT_FILE).is_file():
        raise DatasetError(f"{folder}: no {IMAGE_ROOT_FILE}; not a dataset written by `hftrain convert`")
    meta = read_sidecar(folder)
    if meta.get("schema_version") != SCHEMA_VERSION:
        raise DatasetError(f"{folder}: {OLD_SCHEMA}")
    dataset = datasets.load_from_disk(str(folder))
    if not isinstance(dataset, datasets.Dataset):
        raise DatasetError(f"{folder}: holds a {type(dataset).__name__}, not one dataset split")
    check_schema(dataset, str(folder))
    return dataset.cast_column("image", datasets.Image(decode=False)), Path(meta["image_root"])


def load_converted_report(folder: str | Path) -> ConversionReport:
    """The report saved beside a converted dataset (an empty one naming the folder if absent)."""
    path = Path(folder) / REPORT_FILE
    if not path.is_file():
        return ConversionReport(source=str(folder))
    return report_from_dict(json.loads(path.read_text()))


def _category_map(pairs: list[str]) -> dict[str, str | None]:
    mapping: dict[str, str | None] = {}
    for pair in pairs:
        source, sep, target = pair.partition("=")
        if not sep or not source:
            raise argparse.ArgumentTypeError(f"--category-map {pair!r}: expected SOURCE=TARGET (or SOURCE= to drop)")
        mapping[source] = target or None
    return mapping


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hftrain convert",
        description="Convert a detection dataset to the project's schema (datasets.load_from_disk).",
    )
    parser.add_argument("format", choices=FORMATS)
    parser.add_argument("--images", required=True,
                        help="image folder (coco, bdd100k, voc with --labels), VOCdevkit folder (voc without --labels), "
                             "FRED root (holding train/ and test/, a challenging-split folder of links, or sequence "
                             "folders), the dataset's data.yaml (yolo), or (hf) a save_to_disk folder, an imagefolder "
                             "with metadata.jsonl or a Hub dataset id")
    parser.add_argument("--labels", help="label file (coco, bdd100k); FRED: the dataset_splits folder; "
                                         "VOC: the folder of XML files (LabelImg/CVAT/Roboflow), images in --images")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--split", action="append", default=[],
                        help="VOCdevkit YEAR/SPLIT (2007/trainval); VOC folder: a file listing image ids (XML stems); "
                             "FRED: train or test (a folder under --images), or a split file (challenging/train, or "
                             "a .txt path); YOLO: data.yaml set (train, val, test); hf: the dataset's split (default "
                             "train); repeatable")
    parser.add_argument("--classes", help="VOC: class names in order, comma-separated (default: the 20 PASCAL "
                                          "classes for a VOCdevkit, the names found in the XML files sorted for a folder)")
    parser.add_argument("--subset", type=int, help="keep N random images")
    parser.add_argument("--seed", type=int, default=0, help="seed for --subset")
    parser.add_argument("--embed-images", action="store_true", help="store image bytes instead of paths")
    parser.add_argument("--max-missing", type=float, default=0.0,
                        help="fraction of missing image files tolerated before failing (default 0)")
    parser.add_argument("--modality", choices=("rgb", "event"), default="rgb", help="FRED stream")
    parser.add_argument("--drone-classes", choices=("single", "models"), default="single", help="FRED classes")
    parser.add_argument("--fred-boxes", choices=("extended", "rgb"), default="extended",
                        help="FRED box file: extended = coordinates.txt (padded, shared space; default), "
                             "rgb = coordinates_rgb.txt (without the padding)")
    parser.add_argument("--category-map", action="append", default=[], metavar="SOURCE=TARGET",
                        help="rename a source category (SOURCE= drops it); repeatable")
    parser.add_argument("--read-image-sizes", action="store_true",
                        help="BDD100K: read each image's size instead of the frame's own size or 1280x720 "
                             "(a frame whose own size differs is dropped, counted)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an earlier conversion in --out (a folder holding hftrain_dataset.json); "
                             "the new one is written beside it first")
    return parser


def convert_main(argv: list[str]) -> int:
    """Run ``hftrain convert``; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not 0.0 <= args.max_missing <= 1.0:
        parser.error(f"--max-missing {args.max_missing}: must be a fraction between 0 and 1")
    try:
        category_map = _category_map(args.category_map)
    except argparse.ArgumentTypeError as err:
        parser.error(str(err))
    out = Path(args.out)
    refusal = output_refusal(out, args.overwrite, [Path(p) for p in (args.images, args.labels) if p])
    if refusal:
        print(f"hftrain convert: {refusal}", file=sys.stderr)
        return 2
    class_names = [name.strip() for name in args.classes.split(",")] if args.classes else None
    if class_names and (not all(class_names) or len(set(class_names)) != len(class_names)):
        parser.error(f"--classes {args.classes!r}: names must be non-empty and distinct")
    try:
        dataset, report, root = convert_source(
            args.format, args.images, args.labels, sets=args.split or None, modality=args.modality,
            drone_classes=args.drone_classes, category_map=category_map, max_missing=args.max_missing,
            read_image_sizes=args.read_image_sizes, fred_boxes=args.fred_boxes, class_names=class_names,
        )
    except (DatasetError, ValueError) as err:
        print(f"hftrain convert: {err}", file=sys.stderr)
        return 1
    dataset = take_subset(dataset, report, args.subset, args.seed)
    if args.embed_images:
        dataset = embed_images(dataset, root)
    sources = {"images": args.images if args.format == "hf" else str(Path(args.images).resolve()),
               "labels": str(Path(args.labels).resolve()) if args.labels else None,
               "sets": args.split, "modality": args.modality, "drone_classes": args.drone_classes,
               "fred_boxes": args.fred_boxes, "classes": class_names}
    replace_folder(out, lambda folder: save_converted(dataset, report, root, args.format, folder, sources,
                                                      embedded=args.embed_images))
    for line in report.lines():
        print(line)
    print(f"wrote {len(dataset)} images to {out} (report: {out / REPORT_FILE})")
    names = class_names_of(dataset)
    print(f"{len(names)} classes: {', '.join(names)}")
    return 0
