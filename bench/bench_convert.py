"""Benchmark: BDD100K-sized conversion (time, peak memory) and blacklist scanning speed.

Run: ``.venv/bin/python bench/bench_convert.py [--frames 70000] [--boxes 1300000] [--images 240]``

1. Writes a deterministic ``det_20``-style label file (default 70,000 frames, about 1.3 million
   box2d labels, as BDD100K's det_train.json: 137 frames without labels, some distracting
   classes, 2018 poly2d-only entries mixed in) to a temporary folder.
2. Converts it in a child process (``read_bdd100k`` + ``save_to_disk``), timing it there and
   reading the child's peak resident memory from ``getrusage(RUSAGE_CHILDREN)``. The images do
   not exist, so the file check is off (it costs one ``lstat`` per frame).
3. Writes ``--images`` 1280x720 JPEGs and times a plain PIL ``open`` + ``load`` loop against
   ``scan_images`` with 1 and 2 workers.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

CATEGORIES = ["pedestrian", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle",
              "traffic light", "traffic sign", "other vehicle", "other person", "trailer"]
WEIGHTS = np.array([10, 0.5, 55, 2.5, 1, 0.1, 0.3, 0.8, 14, 18, 0.5, 0.2, 0.1])


def write_det20(path: Path, frames: int, boxes: int, seed: int = 0) -> int:
    """Write the label file; returns the number of box2d labels."""
    rng = np.random.default_rng(seed)
    per_frame = rng.poisson(boxes / (frames - 137), size=frames)
    per_frame[rng.choice(frames, 137, replace=False)] = 0
    total = int(per_frame.sum())
    cats = rng.choice(len(CATEGORIES), size=total, p=WEIGHTS / WEIGHTS.sum())
    x1 = rng.uniform(-5, 1250, total)
    y1 = rng.uniform(-5, 700, total)
    w = rng.gamma(2.0, 30.0, total)
    h = rng.gamma(2.0, 25.0, total)
    occluded = rng.random(total) < 0.5
    weather = ["clear", "overcast", "rainy", "snowy", "partly cloudy", "foggy", "undefined"]
    scene = ["city street", "highway", "residential", "parking lot", "tunnel", "gas stations"]
    timeofday = ["daytime", "night", "dawn/dusk"]
    index = 0
    with open(path, "w") as out:
        out.write("[")
        for f in range(frames):
            labels = []
            for _ in range(per_frame[f]):
                c = CATEGORIES[cats[index]]
                labels.append({
                    "id": str(index), "category": c,
                    "attributes": {"occluded": bool(occluded[index]), "truncated": False,
                                   "trafficLightColor": "G" if c == "traffic light" else "NA"},
                    "box2d": {"x1": round(x1[index], 4), "y1": round(y1[index], 4),
                              "x2": round(x1[index] + w[index], 4), "y2": round(y1[index] + h[index], 4)},
                })
                index += 1
            if f % 50 == 0:  # a 2018-style lane entry: poly2d, no box2d (skipped, counted)
                labels.append({"id": f"lane{f}", "category": "lane", "attributes": {},
                               "poly2d": [{"vertices": [[0, 700], [600, 400]], "types": "LL", "closed": False}]})
            frame = {"name": f"{f:08x}-{f * 7919 % 99991:08x}.jpg",
                     "attributes": {"weather": weather[f % 7], "scene": scene[f % 6], "timeofday": timeofday[f % 3]},
                     "timestamp": 10000}
            if labels:
                frame["labels"] = labels
            out.write(("," if f else "") + json.dumps(frame))
        out.write("]")
    return total


CHILD = """
import sys, time, resource
t0 = time.perf_counter()
from hftrain.data.formats.bdd100k import read_bdd100k
t_import = time.perf_counter()
dataset, report = read_bdd100k(sys.argv[1], sys.argv[2], check_files=False)
t_read = time.perf_counter()
dataset.save_to_disk(sys.argv[3])
t_save = time.perf_counter()
print(f"RESULT {len(dataset)} {report.boxes} {t_read - t_import:.2f} {t_save - t_read:.2f} {t_import - t0:.2f}")
for line in report.lines():
    print(line)
"""


def bench_convert(tmp: Path, frames: int, boxes: int) -> dict:
    labels = tmp / "det_train.json"
    start = time.perf_counter()
    written = write_det20(labels, frames, boxes)
    generate = time.perf_counter() - start
    out = tmp / "converted"
    env = dict(os.environ, HF_DATASETS_DISABLE_PROGRESS_BARS="1")
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", CHILD, str(tmp / "images"), str(labels), str(out)],
                          capture_output=True, text=True, env=env)
    wall = time.perf_counter() - start
    if proc.returncode:
        raise SystemExit(proc.stderr)
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    result = next(line for line in proc.stdout.splitlines() if line.startswith("RESULT")).split()
    print("\n".join(line for line in proc.stdout.splitlines() if not line.startswith("RESULT")))
    return {
        "frames": int(result[1]), "boxes written": written, "boxes kept": int(result[2]),
        "label file MB": labels.stat().st_size / 1e6, "generate s": generate,
        "read s": float(result[3]), "save s": float(result[4]), "import s": float(result[5]),
        "child wall s": wall, "child peak RSS MB": peak_mb,
    }


def bench_scan(tmp: Path, count: int) -> dict:
    from hftrain.data.blacklist import scan_images

    folder = tmp / "jpegs"
    folder.mkdir()
    rng = np.random.default_rng(1)
    base = (rng.random((90, 160, 3)) * 255).astype(np.uint8)
    paths = []
    for i in range(count):
        image = Image.fromarray(np.roll(base, i, axis=1)).resize((1280, 720), Image.BILINEAR)
        path = folder / f"{i:05d}.jpg"
        image.save(path, quality=90)
        paths.append(path)
    start = time.perf_counter()
    for path in paths:
        with Image.open(path) as image:
            image.load()
    plain = time.perf_counter() - start
    items = [(str(p), str(p), (1280, 720)) for p in paths]
    timings = {"images": count, "plain PIL open+load s": plain}
    for workers in (1, 2):
        start = time.perf_counter()
        bad = scan_images(items, workers=workers)
        timings[f"scan_images workers={workers} s"] = time.perf_counter() - start
        assert not bad, bad
    return timings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=70_000)
    parser.add_argument("--boxes", type=int, default=1_300_000)
    parser.add_argument("--images", type=int, default=240)
    parser.add_argument("--json", help="also write the rows for bench/run_all.py here")
    args = parser.parse_args()
    print(f"machine: {os.cpu_count()} CPUs, Python {sys.version.split()[0]}")
    with tempfile.TemporaryDirectory() as tmp:
        convert = bench_convert(Path(tmp), args.frames, args.boxes)
        scan = bench_scan(Path(tmp), args.images)
    print("\n| measurement | value |\n|---|---:|")
    for name, value in {**convert, **scan}.items():
        print(f"| {name} | {value:.2f} |" if isinstance(value, float) else f"| {name} | {value} |")
    for workers in (1, 2):
        rate = scan["images"] / scan[f"scan_images workers={workers} s"]
        print(f"| scan images/s, {workers} worker(s) | {rate:.1f} |")
    print(f"| plain loop images/s | {scan['images'] / scan['plain PIL open+load s']:.1f} |")
    if args.json:
        write_rows(args.json, convert, scan)


def write_rows(path: str, convert: dict, scan: dict) -> None:
    """The table rows of bench/run_all.py (see bench/report.py)."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from report import emit, row

    size = f"{convert['frames']:,} frames, {convert['boxes kept']:,} boxes"
    plain = scan["images"] / scan["plain PIL open+load s"]
    rows = [
        row("4 conversion", f"BDD100K-sized det_20 -> dataset ({size}): read + save time", convert["read s"] + convert["save s"],
            None, "s", higher_is_better=False, target="(absolute)",
            note=f"read {convert['read s']:.1f} s, save {convert['save s']:.1f} s, child wall {convert['child wall s']:.1f} s"),
        row("4 conversion", "peak resident memory of the conversion process", convert["child peak RSS MB"], None, "MB",
            higher_is_better=False, target="(absolute)", note=f"label file {convert['label file MB']:.0f} MB"),
    ]
    for workers in (1, 2):
        rate = scan["images"] / scan[f"scan_images workers={workers} s"]
        rows.append(row("4 scan", f"blacklist scan of 1280x720 JPEGs, {workers} worker(s), vs a plain PIL open+load loop "
                        f"(1 process): images/s", rate, plain, "img/s", higher_is_better=True,
                        target="(comparison)", note=f"{scan['images']} images"))
    emit(rows, path)


if __name__ == "__main__":
    main()
