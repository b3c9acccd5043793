"""Turn a recipe's data split into a dataset in the project's schema, whatever its source format.

Formats: ``coco``, ``voc``, ``bdd100k``, ``fred``, ``yolo`` (converted on the fly) and ``hf``: a folder
written by ``hftrain convert`` (read as it is), or any dataset in the Hub detection schema (a
``save_to_disk`` folder, an ``imagefolder`` with ``metadata.jsonl``, a Hub id; see
``hftrain.data.formats.hub``), brought to the project's schema on every load without copying
its images (never cached). With a ``cache_dir`` the converted dataset is cached there,
keyed by the conversion options and by the path, size and modification time of every label
file the conversion reads (COCO/BDD100K label file; VOC split files and the listed XMLs, or for a
VOC folder its list files, both folders and every XML in it; FRED
split files and each sequence's YOLO label files, or its box file (coordinates.txt or
coordinates_rgb.txt, per ``fred_boxes``) and frame folders, whose listing pairs frames with
times; YOLO data.yaml, its list files, the image folders searched and each image's label
file). Touching a label file
rebuilds the cache; image files are not part of the key (the blacklist scan is what checks
them). Conversion caches are written to a temporary folder and renamed into place, so
processes converting the same split at once all end with one complete copy.

``blacklist`` filters rows: a JSON file written by ``hftrain scan``, or ``"auto"``, which scans
the split once (``scan_workers`` processes) and keeps the result in the cache folder under the
same key; the number of rows removed goes into ``LoadedSplit.notes``. Under several processes
(``accelerate launch``) the local main process scans first and the others read its result.

``hold_out`` (``data.val.from_train``) holds a validation part out of the split
(``hftrain.data.holdout``), chosen on the converted dataset before the blacklist and the subset.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import datasets

from hftrain.data.formats.report import ConversionReport
from hftrain.data.schema import IMAGE_ROOT_FILE

CACHE_VERSION = 2  # 2: the Hub detection schema (Image feature, objects a dict of lists)
DEFAULT_CACHE_DIR = Path.home() / ".cache" / "hftrain"


@dataclass
class LoadedSplit:
    """A dataset in the project's schema and where its image paths are rooted."""

    dataset: datasets.Dataset
    image_root: Path
    report: ConversionReport
    notes: list[str] = field(default_factory=list)
    """Lines for the console (blacklist filtering, cache use)."""
    held_out: LoadedSplit | None = None
    """``data.val.from_train``: the validation part held out of this split (its own report), or None."""


def source_files(fmt: str, images: str | Path, labels: str | Path | None, sets: list[str] | None,
                 modality: str, fred_boxes: str = "extended") -> list[Path]:
    """The label files a conversion reads, whose path, size and mtime key its cache."""
    if fmt in ("coco", "bdd100k"):
        return [Path(labels)] if labels else []
    if fmt == "voc" and labels:  # a folder of XML files beside an image folder
        from hftrain.data.formats.voc import voc_folder_xmls

        return [Path(f) for f in sets or []] + [Path(labels), Path(images)] + [
            xml for xml, _ in voc_folder_xmls(labels)]
    if fmt == "voc":
        from hftrain.data.formats.voc import read_voc_ids, voc_set_files

        devkit = Path(images)
        files = voc_set_files(devkit, list(sets or ["2007/trainval"]))
        for spec in sets or ["2007/trainval"]:
            year, ids = read_voc_ids(devkit, spec)
            files.extend(devkit / year / "Annotations" / f"{name}.xml" for name in ids)
        return files
    if fmt == "yolo":
        from hftrain.data.formats.yolo import yolo_source_files

        return yolo_source_files(images, list(sets or []))
    if fmt == "hf":  # a local dataset's metadata and data files (a Hub id: none, keyed by its name)
        folder = Path(images)
        if not folder.is_dir():
            return []
        return sorted(p for p in folder.rglob("*") if p.suffix in (".json", ".jsonl", ".csv", ".arrow", ".parquet"))
    if fmt == "fred":
        from hftrain.data.formats.fred import fred_label_files

        splits = Path(labels) if labels else Path(images) / "dataset_splits"
        return fred_label_files(images, splits, sets, modality, fred_boxes)
    return []


def cache_key(fmt: str, images: str | Path, labels: str | Path | None, options: dict, files: list[Path]) -> str:
    """A digest of the options and of each source file's path, size and modification time."""
    stats = []
    for path in files:
        try:
            info = os.stat(path)
            stats.append([str(Path(path).resolve()), info.st_size, info.st_mtime_ns])
        except FileNotFoundError:
            stats.append([str(path), None, None])
    payload = {
        "version": CACHE_VERSION, "format": fmt, "images": str(Path(images).resolve()),
        "labels": str(Path(labels).resolve()) if labels else None, "options": options, "files": stats,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:20]


def load_split(
    fmt: str,
    images: str,
    labels: str | None = None,
    *,
    sets: list[str] | None = None,
    modality: str = "rgb",
    drone_classes: str = "single",
    fred_boxes: str = "extended",
    category_map: dict | None = None,
    max_missing: float = 0.0,
    read_image_sizes: bool = False,
    subset: int | None = None,
    seed: int = 0,
    cache_dir: str | Path | None = None,
    blacklist: str | None = None,
    scan_workers: int = 1,
    min_side: int = 1,
    recipe_split: str = "train",
    class_names: list[str] | None = None,
    hold_out: float | None = None,
) -> LoadedSplit:
    """Read one split of a recipe.

    ``fmt``: coco, voc, bdd100k, fred, yolo or hf. ``images``/``labels``: as for ``hftrain convert``
    (hf: ``images`` is the dataset folder or Hub id; yolo: the data.yaml). ``sets``: VOC ``YEAR/SPLIT``,
    FRED split names, YOLO data.yaml sets (``train``, ``val``, ``test``), or the hf dataset's split
    (default: ``recipe_split``, val reading ``validation``).
    ``fred_boxes``: FRED's box file, ``extended`` (coordinates.txt) or ``rgb`` (coordinates_rgb.txt).
    ``subset``/``seed``: keep a seeded random sample of rows (counted in the report).
    ``cache_dir``: cache conversions there (None: convert every time). ``blacklist``: a blacklist
    JSON path or ``"auto"`` (scans once; cached in ``cache_dir``, or ~/.cache/hftrain).
    ``class_names``: VOC's classes in order. ``hold_out``: the fraction held out as
    ``LoadedSplit.held_out`` (``data.val.from_train``), seeded by ``seed``.
    """
    from hftrain.data.convert import convert_source, load_converted, load_converted_report, take_subset

    notes: list[str] = []
    options = {
        "sets": list(sets or []), "modality": modality, "drone_classes": drone_classes, "fred_boxes": fred_boxes,
        "category_map": category_map or {}, "max_missing": max_missing, "read_image_sizes": read_image_sizes,
        **({"class_names": list(class_names)} if class_names else {}),  # absent when unset: older cache keys stay valid
    }
    if fmt == "hf":  # which split of the source is read (keys the blacklist scan)
        options["recipe_split"] = recipe_split
    key = None
    if fmt == "hf" and (Path(images) / IMAGE_ROOT_FILE).is_file():  # written by hftrain convert
        dataset, root = load_converted(images)
        report = load_converted_report(images)
    elif fmt == "hf" or cache_dir is None:
        dataset, report, root = convert_source(
            fmt, images, labels, sets=sets, modality=modality, drone_classes=drone_classes,
            category_map=category_map, max_missing=max_missing, read_image_sizes=read_image_sizes,
            fred_boxes=fred_boxes, recipe_split=recipe_split, class_names=class_names,
        )
    else:
        key = cache_key(fmt, images, labels, options, source_files(fmt, images, labels, sets, modality, fred_boxes))
        cached = Path(cache_dir) / f"{fmt}-{key}"
        if cached.is_dir():
            notes.append(f"{fmt} {images}: conversion cache hit ({cached})")
        else:
            dataset, report, root = convert_source(
                fmt, images, labels, sets=sets, modality=modality, drone_classes=drone_classes,
                category_map=category_map, max_missing=max_missing, read_image_sizes=read_image_sizes,
                fred_boxes=fred_boxes, class_names=class_names,
            )
            _save_atomically(dataset, report, root, fmt, cached, {"images": str(images), "labels": labels, **options})
            notes.append(f"{fmt} {images}: converted and cached in {cached}")
        dataset, root = load_converted(cached)
        report = load_converted_report(cached)

    held_out_keys = None
    if hold_out is not None:  # chosen before the blacklist: a blacklist moves no image across
        from hftrain.data.holdout import held_out_keys as choose

        held_out_keys = choose(dataset, hold_out, seed)
    if blacklist:
        dataset, blacklist_note = _filter_blacklist(dataset, root, blacklist, fmt, images, labels, options, key,
                                                    cache_dir, scan_workers, min_side, report)
        notes.append(blacklist_note)
    held_out = None
    if held_out_keys is not None:
        dataset, held_out = _hold_out(dataset, Path(root), report, held_out_keys, hold_out, seed)
    dataset = take_subset(dataset, report, subset, seed)
    return LoadedSplit(dataset, Path(root), report, notes, held_out)


def _hold_out(dataset, root: Path, report: ConversionReport, keys: set[str], fraction: float,
              seed: int) -> tuple[datasets.Dataset, LoadedSplit]:
    """The rows kept for training and the held-out validation split, both reports counted."""
    from hftrain.data.convert import count_boxes
    from hftrain.data.holdout import split_by_keys

    train, val = split_by_keys(dataset, keys)
    how = f"data.val.from_train {fraction:g}, data.seed {seed}"
    report.dropped_images[f"held out for validation ({how})"] += len(val)
    report.images = len(train)
    report.boxes, report.boxes_per_class = count_boxes(train)
    val_report = ConversionReport(source=f"{report.source} [validation held out: {how}]", images=len(val))
    val_report.boxes, val_report.boxes_per_class = count_boxes(val)
    return train, LoadedSplit(val, root, val_report, [f"validation: {len(val)} of the training split's "
                                                      f"{len(train) + len(val)} images held out ({how})"])


def _save_atomically(dataset, report, root, fmt, target: Path, sources: dict) -> None:
    from hftrain.data.convert import save_converted

    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        save_converted(dataset, report, root, fmt, temporary / "data", sources)
        try:
            os.rename(temporary / "data", target)
        except OSError:
            if not target.is_dir():  # another process won the race: keep its copy
                raise
    finally:
        shutil.rmtree(temporary, ignore_errors=True)


@contextmanager
def local_main_process_first():
    """Accelerate's ``local_main_process_first`` when processes were started (by ``accelerate
    launch``/torchrun and ``PartialState`` initialised); nothing otherwise."""
    from accelerate.state import PartialState

    if PartialState._shared_state and PartialState().num_processes > 1:
        with PartialState().local_main_process_first():
            yield
    else:
        yield


def _filter_blacklist(dataset, root, blacklist, fmt, images, labels, options, key, cache_dir, scan_workers,
                      min_side, report):
    from hftrain.data.blacklist import apply_blacklist, image_keys, load_blacklist, scan_images, scan_items

    if blacklist == "auto":
        if key is None:
            files = source_files(fmt, images, labels, options["sets"], options["modality"],
                                 options["fred_boxes"])
            key = cache_key(fmt, images, labels, options, files)
        path = Path(cache_dir or DEFAULT_CACHE_DIR) / f"blacklist-{fmt}-{key}-min{min_side}.json"
        with local_main_process_first():  # one scan per machine; the other processes read its result
            if path.is_file():
                entries = load_blacklist(path)
                how = f"cached scan {path}"
            else:
                entries = scan_images(scan_items(dataset, root), workers=scan_workers, min_side=min_side, out=path)
                how = f"scanned {len(dataset)} images with {scan_workers} workers, saved {path}"
    else:
        path = Path(blacklist)
        entries = load_blacklist(path)
        how = str(path)
    before = len(dataset)
    keys = image_keys(dataset) if entries else []
    listed = [key for key in keys if key in entries]
    dataset, removed = apply_blacklist(dataset, entries, keys)
    if removed:
        from hftrain.data.convert import count_boxes

        reason = f"blacklisted ({how})"
        report.dropped_images[reason] += removed
        report.examples[reason] = [f"{key}: {entries[key]}" for key in listed[:5]]
        report.images -= removed
        report.boxes, report.boxes_per_class = count_boxes(dataset)
    example = f" (e.g. {listed[0]}: {entries[listed[0]]})" if listed else ""
    return dataset, f"blacklist ({how}): removed {removed} of {before} images{example}"
