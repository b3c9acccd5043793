"""Find corrupted images before training: ``hftrain scan`` and the blacklist it writes.

Every image is decoded in full (``Image.open`` alone reads only the header, and truncated
JPEGs open fine) with ``LOAD_TRUNCATED_IMAGES`` off, in a pool of worker processes. Reasons:

- ``zero bytes``: an empty file;
- ``unreadable``: missing, not an image, or corrupt data;
- ``truncated``: the pixel data ends early;
- ``smaller than N px``: a side (after EXIF orientation) under ``min_side`` (default 1, so
  only with ``--min-side``: a 2x1 image is unusual, not broken);
- ``size mismatch``: the decoded size (after EXIF orientation) differs from the annotation's;
- ``unsupported mode``: pixels with no defined RGB conversion (see ``hftrain.data.decode``).

CMYK, grayscale, palette, 16-bit and EXIF-rotated images are converted at decode time, not
blacklisted. Sizes are compared after EXIF orientation, because training decodes with the
orientation applied and the schema's width/height are the displayed size. An image whose
annotated size equals its *stored* size while EXIF rotates it by 90 degrees (the labels were
drawn on the unrotated pixels) is blacklisted as a size mismatch saying so: its boxes would not
match what the model sees. (Orientations that flip or rotate by 180 degrees keep the size and
cannot be told apart; the labels are taken to be in the displayed frame.)

The blacklist is a JSON object ``{image path relative to the image root: reason}``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from PIL import Image, ImageFile, UnidentifiedImageError

from hftrain.data.decode import CONVERTIBLE_MODES, SIXTEEN_BIT_MODES, SWAPPING_ORIENTATIONS, exif_orientation

ScanItem = tuple[str, "str | bytes", "tuple[int, int] | None"]
"""(key, file path or encoded bytes, annotated (width, height) or None)."""


def check_image(source: str | bytes, expected: tuple[int, int] | None = None, min_side: int = 1) -> str | None:
    """Why this image cannot be trained on, or None when it decodes and fits its annotation."""
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    if isinstance(source, (bytes, bytearray)):
        if not source:
            return "zero bytes"
        import io

        handle = io.BytesIO(source)
    else:
        try:
            if os.path.getsize(source) == 0:
                return "zero bytes"
            handle = open(source, "rb")
        except OSError as err:
            return f"unreadable: {err.strerror or err}"
    with handle:
        try:
            image = Image.open(handle)
        except UnidentifiedImageError:
            return "unreadable: not a recognised image format"
        except Exception as err:  # PIL raises several types for a damaged header
            return f"unreadable: {err}"
        with image:
            try:
                image.load()
            except Exception as err:
                message = str(err)
                return f"truncated: {message}" if "truncated" in message.lower() else f"unreadable: {message}"
            stored = image.size
            shown = (stored[1], stored[0]) if exif_orientation(image) in SWAPPING_ORIENTATIONS else stored
            mode = image.mode
    if mode not in CONVERTIBLE_MODES and mode not in SIXTEEN_BIT_MODES:
        return f"unsupported mode: {mode}"
    if min(shown) < min_side:
        return f"smaller than {min_side} px: {shown[0]}x{shown[1]}"
    if expected is not None:
        return size_mismatch(expected, shown, stored)
    return None


def size_mismatch(annotated: tuple[int, int], shown: tuple[int, int],
                  stored: tuple[int, int] | None = None) -> str | None:
    """The ``size mismatch`` reason when the annotated (width, height) is not the image's size as
    displayed (after EXIF orientation), else None. ``stored``: the size before the orientation,
    when known, to say when the labels were drawn on the unrotated pixels. The training loader
    applies the same rule on every load (``DetectionDataset``), blacklist or not."""
    if tuple(annotated) == tuple(shown):
        return None
    width, height = annotated
    if stored is not None and tuple(annotated) == tuple(stored):
        return (f"size mismatch: annotated {width}x{height} is the stored size, but EXIF orientation "
                f"shows it as {shown[0]}x{shown[1]}")
    return f"size mismatch: annotated {width}x{height}, image {shown[0]}x{shown[1]}"


def _check_item(item: ScanItem, min_side: int) -> tuple[str, str | None]:
    key, source, expected = item
    return key, check_image(source, expected, min_side)


def _check_chunk(args: tuple[list[ScanItem], int]) -> list[tuple[str, str | None]]:
    items, min_side = args
    return [_check_item(item, min_side) for item in items]


def scan_images(items: list[ScanItem], workers: int = 1, min_side: int = 1,
                out: str | Path | None = None) -> dict[str, str]:
    """``{key: reason}`` for every item that fails; written to ``out`` as JSON when given."""
    items = list(items)
    if workers <= 1 or len(items) < 2:
        results = [_check_item(item, min_side) for item in items]
    else:
        size = max(1, min(64, len(items) // (workers * 4) or 1))
        chunks = [(items[i:i + size], min_side) for i in range(0, len(items), size)]
        with ProcessPoolExecutor(max_workers=workers) as pool:
            results = [pair for chunk in pool.map(_check_chunk, chunks) for pair in chunk]
    blacklist = {key: reason for key, reason in results if reason is not None}
    if out is not None:  # written whole and renamed: a reader never sees half a file
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        temporary = out.with_name(f".{out.name}.{os.getpid()}.tmp")
        temporary.write_text(json.dumps(blacklist, indent=1, sort_keys=True))
        os.replace(temporary, out)
    return blacklist


def reason_counts(blacklist: dict[str, str]) -> Counter:
    """Blacklisted images per reason (the part before the colon)."""
    return Counter(reason.split(":", 1)[0] for reason in blacklist.values())


def image_key(row_image: dict, image_id: int) -> str:
    """The blacklist key of a row: its relative path, or ``image_id:N`` for bytes without a path."""
    return row_image.get("path") or f"image_id:{image_id}"


def image_keys(dataset) -> list[str]:
    """Every row's :func:`image_key`, read column-wise from Arrow (no per-row dicts, no image bytes)."""
    table = dataset.select_columns(["image", "image_id"]).with_format("arrow")[:]
    paths = table.column("image").combine_chunks().field("path").to_pylist()
    ids = table.column("image_id").to_pylist()
    return [path if path else f"image_id:{image_id}" for path, image_id in zip(paths, ids)]


def scan_items(dataset, image_root: str | Path) -> list[ScanItem]:
    """One scan item per row of a dataset in the project's schema."""
    root = Path(image_root)
    table = dataset.select_columns(["image", "image_id", "width", "height"])
    items = []
    for batch in table.iter(batch_size=4096):
        for image, image_id, width, height in zip(batch["image"], batch["image_id"], batch["width"], batch["height"]):
            source = image["bytes"] if image.get("bytes") else str(root / image["path"])
            items.append((image_key(image, image_id), source, (width, height)))
    return items


def load_blacklist(path: str | Path) -> dict[str, str]:
    """A blacklist JSON written by ``scan``; an error names the file when it is not one."""
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ValueError(f"data.blacklist: {path} not found (run `hftrain scan` or use 'auto')") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"data.blacklist: {path} is not valid JSON ({err})") from None
    if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
        raise ValueError(f"data.blacklist: {path} must be a JSON object {{path: reason}}")
    return data


def apply_blacklist(dataset, blacklist: dict[str, str] | str | Path, keys: list[str] | None = None):
    """(dataset without the blacklisted rows, how many rows were removed); ``keys``: the rows'
    :func:`image_keys` when the caller has them already."""
    if not isinstance(blacklist, dict):
        blacklist = load_blacklist(blacklist)
    if not blacklist or len(dataset) == 0:
        return dataset, 0
    keep = [i for i, key in enumerate(keys if keys is not None else image_keys(dataset)) if key not in blacklist]
    removed = len(dataset) - len(keep)
    return (dataset.select(keep) if removed else dataset), removed


def scan_main(argv: list[str]) -> int:
    """``hftrain scan --data DIR [--workers N] [--out PATH] [--min-side N]`` (or ``--images --labels``)."""
    parser = argparse.ArgumentParser(prog="hftrain scan", description="Decode every image in full and write a blacklist of the broken ones.")
    parser.add_argument("--data", help="a converted dataset folder (from `hftrain convert`)")
    parser.add_argument("--images", help="with --labels: a COCO image folder")
    parser.add_argument("--labels", help="with --images: a COCO instances JSON")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="decoding processes (default: all cores)")
    parser.add_argument("--out", help="blacklist JSON to write (default: DATA/blacklist.json, or ./blacklist.json)")
    parser.add_argument("--min-side", type=int, default=1, help="blacklist images with a side under this many pixels")
    args = parser.parse_args(argv)
    if args.workers < 1:
        parser.error("--workers must be at least 1")
    from hftrain.data.convert import load_converted

    if args.data:
        data = Path(args.data)
        if data.suffix in (".yaml", ".yml"):
            print(f"hftrain scan: {data}: scanning from a recipe is not supported yet; convert the split "
                  "(`hftrain convert`) and pass its folder", file=sys.stderr)
            return 2
        try:
            dataset, root = load_converted(data)
        except ValueError as err:
            print(f"hftrain scan: {err}", file=sys.stderr)
            return 2
        out = Path(args.out) if args.out else data / "blacklist.json"
    elif args.images and args.labels:
        from hftrain.data.formats.coco import read_coco

        dataset, _ = read_coco(args.images, args.labels, max_missing=1.0, check_files=False)
        root = Path(args.images).resolve()
        out = Path(args.out) if args.out else Path("blacklist.json")
    else:
        parser.error("give --data DIR, or --images and --labels")
    items = scan_items(dataset, root)
    blacklist = scan_images(items, workers=args.workers, min_side=args.min_side, out=out)
    print(f"scanned {len(items)} images with {args.workers} workers: {len(blacklist)} blacklisted -> {out}")
    for reason, count in sorted(reason_counts(blacklist).items()):
        print(f"  {reason}: {count}")
    return 0
