"""Read any Hugging Face ``datasets`` dataset in the Hub's detection schema into the project's schema.

The Hub detection schema is the one of cppe-5, the transformers object-detection example and the
``datasets`` docs: ``image`` an ``Image`` feature, ``image_id``, ``width``, ``height`` and
``objects`` with ``id``, ``area``, ``bbox`` (absolute COCO ``[x, y, w, h]``) and ``category``
(a ``ClassLabel``). ``data.format: hf`` / ``hftrain convert hf --images SOURCE`` take, as SOURCE:

- a ``save_to_disk`` folder of a ``Dataset``, or of a ``DatasetDict`` (the split chosen by name);
- any other folder ``datasets.load_dataset`` reads: an ``imagefolder`` with ``metadata.jsonl``
  (images beside it, or in ``train/``, ``validation/``... folders each with its own
  ``metadata.jsonl``), a local copy of a Hub repository (parquet files);
- a Hub id (``cppe-5``, ``user/name``) through ``load_dataset``: with ``HF_HUB_OFFLINE=1`` it is
  read from the local cache (``HF_DATASETS_CACHE``); when neither the Hub nor the cache can give
  it, the error says so, naming the id.

Conventions:

- ``objects`` is a dict of lists (the Hub's storage) or a list of per-object dicts; ``bbox`` and
  ``category`` are required; ``id`` (default: running), ``area`` (default ``w * h``),
  ``iscrowd`` and ``difficult`` (default 0) are optional;
- ``category`` a ``ClassLabel``: its names are the classes, its indices the dataset's own ids.
  Integers or strings without a ``ClassLabel`` (what ``metadata.jsonl`` gives unless the folder's
  README declares the feature): the classes are the distinct values in increasing order, named by
  their text, and integer values are kept as the dataset's own ids;
- ``image_id`` optional (default: the row number); ``width``/``height`` optional: when absent, each
  image's size is read from its header (after EXIF orientation) and counted in the report;
- boxes are cleaned as every reader does (clipped to the image; under 1 px or non-finite dropped,
  counted); no image is dropped;
- images stay as stored: encoded bytes stay in the source's Arrow column (not copied); absolute
  paths (an ``imagefolder``'s) are made relative to their common folder, which becomes the image
  root; relative ones are taken relative to the source folder (the current directory for a Hub id).
  The result is rebuilt on every load (one pass over the labels, no image copied; about 0.5 s
  for 20,000 boxes) and not cached.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import datasets
import pyarrow as pa
import pyarrow.compute as pc
from PIL import Image as PILImage

from hftrain.data.decode import SWAPPING_ORIENTATIONS, exif_orientation
from hftrain.data.formats.boxes import clean_xywh
from hftrain.data.formats.coco import DatasetError
from hftrain.data.formats.columns import DetectionColumns
from hftrain.data.formats.report import ConversionReport

SPLIT_NAMES = {"train": ("train",), "val": ("validation", "val", "valid")}
"""The source splits a recipe split reads when ``sets`` names none, in order of preference."""


def looks_like_hub_id(source: str) -> bool:
    """Whether ``source`` names a Hub dataset (``name`` or ``owner/name``) rather than a local path."""
    return not source.startswith((".", "/", "~")) and source.count("/") <= 1 and not Path(source).exists()


def open_source(source: str, split: str | None = None, recipe_split: str = "train") -> tuple[datasets.Dataset, str]:
    """(the chosen split of ``source``, a description naming it). ``split``: the source split to
    read; None takes the first of ``SPLIT_NAMES[recipe_split]`` that exists."""
    path = Path(source).expanduser()
    if path.is_dir():
        if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
            loaded = datasets.load_from_disk(str(path))
        else:
            loaded = _load_dataset(str(path), local=True)
    elif path.exists():
        raise DatasetError(f"hf: {source} is a file; give a dataset folder or a Hub dataset id")
    elif not looks_like_hub_id(source):
        raise DatasetError(f"hf: {source} does not exist (neither a local folder nor a Hub id like 'cppe-5')")
    else:
        loaded = _load_dataset(source, local=False)
    if isinstance(loaded, (datasets.DatasetDict, dict)):
        names = list(loaded)
        wanted = [split] if split else list(SPLIT_NAMES.get(recipe_split, (recipe_split,)))
        chosen = next((name for name in wanted if name in loaded), None)
        if chosen is None:
            how = f"split {split!r}" if split else f"a split named {' or '.join(map(repr, wanted))}"
            raise DatasetError(
                f"hf {source}: has no {how} (splits: {names}); name one with data.{recipe_split}.sets: [NAME] "
                f"(hftrain convert: --split NAME)"
            )
        return loaded[chosen], f"{source} [{chosen}]"
    if not isinstance(loaded, datasets.Dataset):
        raise DatasetError(f"hf {source}: load gave a {type(loaded).__name__}, not a Dataset or DatasetDict")
    return loaded, str(source)


def _load_dataset(source: str, local: bool):
    try:
        return datasets.load_dataset(source)
    except Exception as err:  # datasets raises many kinds (FileNotFoundError, ConnectionError, ValueError...)
        if local:
            raise DatasetError(
                f"hf {source}: not a save_to_disk folder, and datasets.load_dataset cannot read it either "
                f"(an imagefolder needs images with a metadata.jsonl; {type(err).__name__}: {err})"
            ) from None
        offline = bool(datasets.config.HF_HUB_OFFLINE) or os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0")
        cache = datasets.config.HF_DATASETS_CACHE
        hint = (
            f"HF_HUB_OFFLINE is set, so only the local cache ({cache}) is read, and it holds no copy of "
            f"{source!r}: load it once with network access, or give a local folder"
            if offline else
            f"the Hub could not be reached or has no dataset {source!r}; without network, set HF_HUB_OFFLINE=1 "
            f"to read a copy from the local cache ({cache})"
        )
        raise DatasetError(f"hf {source!r}: load_dataset failed ({type(err).__name__}: {err}); {hint}") from None


def object_fields(dataset: datasets.Dataset, where: str) -> tuple[dict, bool]:
    """(the feature of each object field, whether ``objects`` is stored as a dict of lists)."""
    features = dataset.features
    for column in ("image", "objects"):
        if column not in features:
            raise DatasetError(f"{where}: no column {column!r} (columns: {list(features)})")
    if not isinstance(features["image"], datasets.Image):
        raise DatasetError(f"{where}: column 'image' must be a datasets.Image feature, got {features['image']}")
    objects = features["objects"]
    if isinstance(objects, dict):  # the Hub's dict of lists
        fields = {key: getattr(value, "feature", None) for key, value in objects.items()}
        bad = [key for key, value in objects.items() if not isinstance(value, (datasets.List, datasets.LargeList))]
        if bad:
            raise DatasetError(f"{where}: objects.{bad[0]} must be a list (one entry per object), got {objects[bad[0]]}")
        as_lists = True
    elif isinstance(getattr(objects, "feature", None), dict):  # a list of per-object dicts
        fields, as_lists = dict(objects.feature), False
    else:
        raise DatasetError(f"{where}: column 'objects' must be a dict of lists or a list of dicts, got {objects}")
    for key in ("bbox", "category"):
        if key not in fields:
            raise DatasetError(f"{where}: objects have no key {key!r} (keys: {list(fields)})")
    return fields, as_lists


def read_hub(
    source: str,
    split: str | None = None,
    recipe_split: str = "train",
    category_map: dict[str, str | None] | None = None,
) -> tuple[datasets.Dataset, ConversionReport, Path]:
    """Read one split of ``source`` (see the module docstring): (dataset, report, image root)."""
    dataset, where = open_source(source, split, recipe_split)
    return from_hub_schema(dataset, where, category_map, Path(source) if Path(source).is_dir() else Path.cwd())


def from_hub_schema(
    dataset: datasets.Dataset, where: str, category_map: dict[str, str | None] | None = None,
    base: Path | None = None,
) -> tuple[datasets.Dataset, ConversionReport, Path]:
    """A dataset in the Hub detection schema as one in the project's: (dataset, report, image root).
    ``base``: the image root when no image path is absolute (default: the current directory)."""
    fields, as_lists = object_fields(dataset, where)
    report = ConversionReport(source=where)
    labels = dataset.select_columns([c for c in ("image_id", "width", "height", "objects") if c in dataset.column_names])
    labels = labels.with_format(None)
    source_names, source_ids, values = _source_classes(labels, fields["category"], as_lists, where)
    index_of = None if values is None else {value: i for i, value in enumerate(values)}
    category_map = category_map or {}
    class_names: list[str] = []
    label_of: list[int | None] = []
    for name, source_id in zip(source_names, source_ids):
        target = category_map.get(name, name)
        if target is not None and target not in class_names:
            class_names.append(target)
        label_of.append(None if target is None else class_names.index(target))
        if target is not None and source_id is not None:
            report.category_ids.setdefault(target, []).append(source_id)

    image_storage = _image_storage(dataset)
    empty = pc.and_(image_storage.field("bytes").is_null(), image_storage.field("path").is_null())
    if image_storage.null_count or pc.any(empty).as_py():
        row = next(i for i, (whole, none) in enumerate(zip(image_storage.is_null().to_pylist(), empty.to_pylist()))
                   if whole or none)
        raise DatasetError(f"{where} row {row}: column 'image' holds neither bytes nor a path")
    roots = _image_root(image_storage, base or Path.cwd())
    sizes = None
    if "width" not in labels.column_names or "height" not in labels.column_names:
        sizes = _read_sizes(*roots, where)
        report.source = f"{where} (width/height read from the image files)"
    columns = DetectionColumns(class_names)
    seen_ids: set[int] = set()
    row = 0
    for batch in labels.iter(batch_size=1024):
        for i in range(len(batch["objects"])):
            row_where = f"{where} row {row}"
            image_id = _int(batch["image_id"][i], "image_id", row_where) if "image_id" in batch else row
            if image_id in seen_ids:
                raise DatasetError(f"{row_where}: duplicate image_id {image_id}")
            seen_ids.add(image_id)
            width, height = sizes[row] if sizes is not None else (
                _int(batch["width"][i], "width", row_where), _int(batch["height"][i], "height", row_where))
            objects = batch["objects"][i] or ({} if as_lists else [])
            per_key = objects if as_lists else {key: [o.get(key) for o in objects] for key in fields}
            count = len(per_key.get("bbox") or [])
            for key, entries in per_key.items():
                if entries is not None and len(entries) != count:
                    raise DatasetError(f"{row_where}: objects.{key} has {len(entries)} entries, objects.bbox {count}")
            for k in range(count):
                obj_where = f"{row_where} object {k}"
                category = per_key["category"][k]
                source = category if index_of is None else index_of.get(category)
                if source is None or not 0 <= source < len(source_names):
                    raise DatasetError(f"{obj_where}: category {category!r} is not one of the classes {source_names}")
                label = label_of[source]
                if label is None:
                    report.drop_box(f"category {source_names[source]!r} mapped to nothing", obj_where)
                    continue
                box = clean_xywh(per_key["bbox"][k], width, height, report, obj_where)
                if box is None:
                    continue
                area = _optional(per_key, "area", k)
                object_id = _optional(per_key, "id", k)
                columns.add_object_counted(
                    report, columns.objects_added() + 1 if object_id is None else int(object_id), box, label,
                    None if area is None else float(area), iscrowd=int(_optional(per_key, "iscrowd", k) or 0),
                    difficult=int(_optional(per_key, "difficult", k) or 0),
                )
            columns.add_image(None, image_id, width, height)
            report.images += 1
            row += 1
    return columns.build(image_storage=roots[1]), report, roots[0]


def _optional(per_key: dict, key: str, k: int):
    values = per_key.get(key)
    return None if values is None else values[k]


def _int(value, column: str, where: str) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        raise DatasetError(f"{where}: column {column!r} must hold integers, got {value!r}") from None


def _source_classes(labels: datasets.Dataset, feature, as_lists: bool, where: str) -> tuple[list[str], list, list | None]:
    """(class names, the dataset's own id of each, the stored value of each) from the ClassLabel
    (values: None, the stored value is the index), or from the distinct stored values."""
    if isinstance(feature, datasets.ClassLabel):
        return list(feature.names), list(range(len(feature.names))), None
    if not isinstance(feature, datasets.Value) or not (feature.dtype.startswith("int") or feature.dtype == "string"):
        raise DatasetError(f"{where}: objects.category must be a ClassLabel, integers or strings, got {feature}")
    column = labels.with_format("arrow").select_columns(["objects"])[:]["objects"].combine_chunks()
    values = column.field("category").flatten() if as_lists else column.flatten().field("category")
    distinct = sorted(v for v in pc.unique(values).to_pylist() if v is not None)
    if feature.dtype == "string":
        return distinct, [None] * len(distinct), distinct
    return [str(v) for v in distinct], distinct, distinct


def _image_storage(dataset: datasets.Dataset) -> pa.StructArray:
    """The ``image`` column's ``{bytes, path}`` storage, rows in dataset order (bytes not copied
    when the dataset is not a selection)."""
    column = dataset.with_format("arrow").select_columns(["image"])[:]["image"]
    return column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)


def _image_root(storage: pa.StructArray, base: Path) -> tuple[Path, pa.StructArray]:
    """(image root, storage with the paths of byte-less images relative to it): absolute paths are
    made relative to their common folder; relative ones stay relative to ``base``."""
    paths = storage.field("path").to_pylist()
    has_bytes = storage.field("bytes").is_valid().to_pylist()
    absolute = [p for p, b in zip(paths, has_bytes) if p and not b and os.path.isabs(p)]
    if not absolute:
        return base.resolve(), storage
    if len(absolute) != sum(1 for p, b in zip(paths, has_bytes) if p and not b):
        raise DatasetError(f"image paths mix absolute and relative ones (e.g. {absolute[0]!r}); cannot find one image root")
    root = Path(os.path.commonpath(absolute))
    if len(absolute) == 1 or Path(absolute[0]) == root:
        root = root.parent
    relative = [os.path.relpath(p, root) if p and not b and os.path.isabs(p) else p for p, b in zip(paths, has_bytes)]
    fixed = pa.StructArray.from_arrays([storage.field("bytes"), pa.array(relative, pa.string())],
                                       fields=list(storage.type), mask=storage.is_null())
    return root, fixed


def _read_sizes(root: Path, storage: pa.StructArray, where: str) -> list[tuple[int, int]]:
    """(width, height) of every image from its header, after EXIF orientation (the displayed size)."""
    sizes = []
    for row, (blob, path) in enumerate(zip(storage.field("bytes").to_pylist(), storage.field("path").to_pylist())):
        try:
            with PILImage.open(io.BytesIO(blob) if blob else root / path) as image:
                width, height = image.size
                if exif_orientation(image) in SWAPPING_ORIENTATIONS:  # rotated by 90 degrees when displayed
                    width, height = height, width
        except (OSError, TypeError) as err:
            raise DatasetError(f"{where} row {row}: no width/height columns and the image cannot be read "
                               f"({path!r}: {err})") from None
        sizes.append((width, height))
    return sizes
