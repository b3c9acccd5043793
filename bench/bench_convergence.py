"""Benchmark: does hftrain learn as fast as a minimal hand-written loop? (issue 18)

Run: ``.venv/bin/python bench/bench_convergence.py [--seeds 3] [--epochs 10] [--full] [--json PATH]``

Both sides train the demo recipe (``recipes/shapes_demo.yaml``: a small RT-DETR from scratch on the
generated 128x128 shapes, batch 16, AdamW 5e-4 / wd 1e-4 off for 1-D parameters, 50 warm-up steps then
cosine to 2.5e-5, clip 0.1, hflip 0.5) for the same seeds, one process at a time, each in its own
subprocess with the same number of torch threads:

- hftrain: ``python hftrain/train.py RECIPE train.seed=S train.epochs=E eval.interval=1
  eval.backend=pycocotools output_dir=TMP``; mAP per epoch and step times are read from its
  ``metrics.jsonl`` (``eval`` and ``step`` records);
- minimal: this file with ``--minimal-worker``, written in the style of transformers'
  ``run_object_detection_no_trainer.py`` example: the COCO files read with pycocotools, images
  prepared by ``RTDetrImageProcessorPil`` (resize to the recipe's square size, rescale), flip with
  PIL, a torch DataLoader with ``shuffle=True``, AdamW with two groups, transformers'
  ``get_cosine_with_min_lr_schedule_with_warmup``, ``clip_grad_norm_``, plain forward/backward/step.

Same initial weights on both sides: the model is built with the recipe's own builder
(``hftrain.models.registry.build_model``) right after ``set_seed(S)``, as ``hftrain train`` does. That
and the recipe loader are the only hftrain imports (module paths may move).

Evaluation is the same on both sides: every epoch, the top 100 (query, class) pairs of each validation
image by sigmoid score (COCO counts 100 detections; transformers' ``post_process_object_detection``
keeps only ``num_queries`` = 50 of them) scored by pycocotools against the validation COCO file.
The minimal side also reports the 50-detection ``post_process_object_detection`` figure.

Printed per side: mAP after epoch 5 and after the last epoch (mean, min-max over seeds), mAP at equal
training wall time (each side's last evaluation reached within the mean training time, evaluation excluded,
that the faster side needs for all its epochs), and the median time per step. ``--stop-epoch K`` stops both
sides after K epochs of the ``--epochs`` schedule (the cosine still spans ``--epochs``): half the cost for
the epoch-5 figure.
The machine may be shared: times are only comparable within one run of this script; ``--parallel`` runs
the two sides of a seed at the same time (one core each on a 2-core machine), so both see the same load.

``--dataset kangaroo``: the same comparison on a real dataset, ``shared/datasets/kangaroo`` (164 photographs
of varied sizes, one class, LabelImg's VOC-XML files), converted here to COCO files (every 5th image to
val) that both sides read, the demo's model trained from scratch at ``--size`` x ``--size``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import json
import math
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

RECIPE = ROOT / "recipes" / "shapes_demo.yaml"
MAX_DETECTIONS = 100


# --------------------------------------------------------------------------------------------------
# the minimal loop (subprocess)
# --------------------------------------------------------------------------------------------------

def minimal_worker(args) -> None:
    import numpy as np
    import torch
    from accelerate.utils import set_seed
    from PIL import Image, ImageOps
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval
    from torch.utils.data import DataLoader, Dataset
    from transformers import get_cosine_with_min_lr_schedule_with_warmup
    from transformers.models.rt_detr.image_processing_pil_rt_detr import RTDetrImageProcessorPil

    # the only hftrain imports: the recipe and the builder that makes the same initial weights
    from hftrain.models.registry import build_model
    from hftrain.recipe import load_recipe

    from PIL import ImageFile

    # kangaroo's images/00090.jpg lacks its last 20 bytes: PIL's full decode refuses it, as an example user
    # would find out at the first evaluation; their fix is this flag (hftrain decodes it: reduced-scale JPEG
    # decoding stops before the missing end marker, and `hftrain scan` would list it)
    ImageFile.LOAD_TRUNCATED_IMAGES = True
    torch.set_num_threads(args.threads)
    recipe = load_recipe(args.recipe, [*args.override, f"train.seed={args.seed}"])
    if recipe.data.synthetic is not None:  # the demo's generated COCO files (made once, by whichever side is first)
        from hftrain.data.loader import materialise_synthetic

        recipe = dataclasses.replace(recipe, data=materialise_synthetic(recipe.data))
    if recipe.data.format != "coco" or recipe.data.resize != "square":
        raise SystemExit("bench_convergence: the minimal side reads COCO files resized to a square (data.format coco)")
    size = recipe.data.min_size
    batch_size, epochs = recipe.train.batch_size, args.epochs
    optim, sched = recipe.optim, recipe.schedule

    train_coco = _quiet(COCO, recipe.data.train.labels)
    val_coco = _quiet(COCO, recipe.data.val.labels)
    cat_ids = sorted(train_coco.getCatIds())
    label_of = {c: i for i, c in enumerate(cat_ids)}  # contiguous 0..K-1, as transformers' heads expect
    class_names = [train_coco.cats[c]["name"] for c in cat_ids]
    processor = RTDetrImageProcessorPil(size={"height": size, "width": size})

    class CocoDetection(Dataset):
        def __init__(self, coco, folder, flip):
            self.coco, self.folder, self.flip = coco, folder, flip
            self.ids = sorted(coco.getImgIds())

        def __len__(self):
            return len(self.ids)

        def __getitem__(self, i):
            info = self.coco.loadImgs(self.ids[i])[0]
            image = Image.open(self.folder / info["file_name"]).convert("RGB")
            anns = [dict(a, category_id=label_of[a["category_id"]])
                    for a in self.coco.loadAnns(self.coco.getAnnIds(imgIds=info["id"])) if not a.get("iscrowd", 0)]
            if self.flip and random.random() < 0.5:
                image = ImageOps.mirror(image)
                anns = [dict(a, bbox=[info["width"] - a["bbox"][0] - a["bbox"][2], *a["bbox"][1:]]) for a in anns]
            out = processor(images=image, annotations={"image_id": info["id"], "annotations": anns}, return_tensors="pt")
            return {"pixel_values": out["pixel_values"][0], "labels": out["labels"][0],
                    "image_id": info["id"], "size": (info["height"], info["width"])}

    def collate(samples):
        return {"pixel_values": torch.stack([s["pixel_values"] for s in samples]),
                "labels": [{"class_labels": s["labels"]["class_labels"], "boxes": s["labels"]["boxes"]} for s in samples],
                "image_ids": [s["image_id"] for s in samples], "sizes": [s["size"] for s in samples]}

    train_set = CocoDetection(train_coco, Path(recipe.data.train.images), flip=recipe.data.hflip > 0)
    val_set = CocoDetection(val_coco, Path(recipe.data.val.images), flip=False)

    set_seed(args.seed)  # as `hftrain train`: the seed right before the model is built
    model = build_model(recipe.model, class_names).model
    set_seed(args.seed)
    generator = torch.Generator().manual_seed(args.seed)
    train_loader = DataLoader(train_set, batch_size=batch_size, shuffle=True, collate_fn=collate, generator=generator)
    val_loader = DataLoader(val_set, batch_size=32, shuffle=False, collate_fn=collate)

    decay = [p for p in model.parameters() if p.requires_grad and p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim <= 1]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": optim.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}],
                                  lr=optim.lr, betas=tuple(optim.betas), eps=optim.eps)
    total = epochs * len(train_loader)
    scheduler = get_cosine_with_min_lr_schedule_with_warmup(optimizer, sched.warmup_steps, total, min_lr=sched.min_lr)

    @torch.no_grad()
    def evaluate():
        model.eval()
        top100, top50 = [], []
        for batch in val_loader:
            outputs = model(pixel_values=batch["pixel_values"])
            sizes = torch.tensor(batch["sizes"], dtype=torch.float32)
            # top 100 (query, class) pairs
            logits, boxes = outputs.logits, outputs.pred_boxes
            k = min(MAX_DETECTIONS, logits.shape[1] * logits.shape[2])
            scores, index = logits.sigmoid().flatten(1).topk(k, dim=1)
            queries, labels = index // logits.shape[2], index % logits.shape[2]
            chosen = boxes.gather(1, queries.unsqueeze(-1).expand(-1, -1, 4))
            cx, cy, w, h = chosen.unbind(-1)
            xyxy = torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], -1)
            xyxy = xyxy * torch.stack([sizes[:, 1], sizes[:, 0], sizes[:, 1], sizes[:, 0]], 1)[:, None]
            for image_id, s, l, b in zip(batch["image_ids"], scores, labels, xyxy):
                top100.append((image_id, s, l, b))
            # transformers' post-processing (num_queries detections)
            for image_id, r in zip(batch["image_ids"], processor.post_process_object_detection(
                    outputs, threshold=0.0, target_sizes=batch["sizes"])):
                top50.append((image_id, r["scores"], r["labels"], r["boxes"]))
        model.train()
        return coco_map(val_coco, top100, cat_ids), coco_map(val_coco, top50, cat_ids)

    history, step_times = [], []
    train_time, step = 0.0, 0
    model.train()
    for epoch in range(1, (args.stop_epoch or epochs) + 1):
        tick = time.perf_counter()
        for batch in train_loader:
            outputs = model(pixel_values=batch["pixel_values"], labels=batch["labels"])
            outputs.loss.backward()
            if recipe.train.clip_max_norm:
                torch.nn.utils.clip_grad_norm_(model.parameters(), recipe.train.clip_max_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            now = time.perf_counter()
            step_times.append(now - tick)
            train_time += now - tick
            tick = now
        if epoch % args.eval_interval == 0 or epoch == (args.stop_epoch or epochs):
            m100, m50 = evaluate()
            history.append({"epoch": epoch, "step": step, "train_time": train_time, "map": m100, "map_post_process": m50})
            print(f"[minimal seed {args.seed}] epoch {epoch} mAP {m100:.4f} (post_process top-50: {m50:.4f}) "
                  f"train time {train_time:.0f} s", flush=True)
    Path(args.out).write_text(json.dumps({"history": history, "step_times": step_times}))


def _quiet(fn, *a):
    with contextlib.redirect_stdout(io.StringIO()):
        return fn(*a)


def coco_map(gt, predictions, cat_ids) -> float:
    """pycocotools bbox mAP@[.5:.95] of (image_id, scores, labels (contiguous), boxes xyxy) tuples."""
    from pycocotools.cocoeval import COCOeval

    dets = []
    for image_id, scores, labels, boxes in predictions:
        for s, l, b in zip(scores.tolist(), labels.tolist(), boxes.tolist()):
            dets.append({"image_id": image_id, "category_id": cat_ids[l], "score": s,
                         "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]]})
    if not dets:
        return 0.0
    with contextlib.redirect_stdout(io.StringIO()):
        result = gt.loadRes(dets)
        ev = COCOeval(gt, result, "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return float(ev.stats[0])


# --------------------------------------------------------------------------------------------------
# the two sides as subprocesses
# --------------------------------------------------------------------------------------------------

def env(threads: int) -> dict:
    return dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
                HF_DATASETS_DISABLE_PROGRESS_BARS="1", TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1",
                OMP_NUM_THREADS=str(threads))


def train_images(recipe: Path, overrides: list[str]) -> int:
    from hftrain.recipe import load_recipe

    r = load_recipe(recipe, overrides, check_paths=False)
    if r.data.synthetic is not None:
        return r.data.synthetic.train_images
    return len(json.loads(Path(r.data.train.labels).read_text())["images"])


def hftrain_command(recipe: Path, seed: int, epochs: int, eval_interval: int, threads: int, tmp: Path,
                    stop_epoch: int | None, overrides: list[str]) -> tuple[list[str], Path]:
    out = tmp / f"hftrain_{seed}"
    stop = []
    if stop_epoch:  # the schedule of `epochs` epochs, stopped after `stop_epoch` of them
        from hftrain.recipe import load_recipe

        batch = load_recipe(recipe, overrides, check_paths=False).train.batch_size
        stop = [f"train.max_steps={stop_epoch * math.ceil(train_images(recipe, overrides) / batch)}"]
    cmd = [sys.executable, str(ROOT / "hftrain" / "train.py"), str(recipe), *overrides, f"train.seed={seed}",
           f"train.epochs={epochs}", f"eval.interval={eval_interval}", "eval.backend=pycocotools",
           f"train.cpu_threads={threads}", f"output_dir={out}", "plots.enabled=false", "log.tensorboard=false",
           f"checkpoint.interval={epochs}", *stop, "--overwrite"]
    return cmd, out


def hftrain_result(out: Path, seed: int) -> dict:
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    # training time: wall clock between consecutive step records, each evaluation left out (the step after
    # it is timed from the evaluation record); the first step from the "config" record (model built)
    history, step_times, train_time, last = [], [], 0.0, None
    for r in records:
        if r["type"] == "config":
            last = r["time"]
        elif r["type"] == "step":
            if last is not None:
                step_times.append(r["time"] - last)
                train_time += r["time"] - last
            last = r["time"]
        elif r["type"] == "eval":
            history.append({"epoch": r["epoch"], "step": r["step"], "train_time": train_time, "map": r["map"]})
            print(f"[hftrain seed {seed}] epoch {r['epoch']} mAP {r['map']:.4f} train time {train_time:.0f} s", flush=True)
            last = r["time"]
    return {"history": history, "step_times": step_times}


def minimal_command(recipe: Path, seed: int, epochs: int, eval_interval: int, threads: int, tmp: Path,
                    stop_epoch: int | None, overrides: list[str]) -> tuple[list[str], Path]:
    out = tmp / f"minimal_{seed}.json"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--minimal-worker", "--recipe", str(recipe), "--seed", str(seed),
           "--epochs", str(epochs), "--eval-interval", str(eval_interval), "--threads", str(threads), "--out", str(out),
           *(["--stop-epoch", str(stop_epoch)] if stop_epoch else []), *(f"--override={o}" for o in overrides)]
    return cmd, out


def minimal_result(out: Path, seed: int) -> dict:
    return json.loads(out.read_text())


COMMANDS = {"hftrain": (hftrain_command, hftrain_result), "minimal": (minimal_command, minimal_result)}


def run_seed(sides: list[str], parallel: bool, seed: int, args, tmp: Path, overrides: list[str]) -> dict[str, dict]:
    """Both sides of one seed: one after the other, or at the same time (``--parallel``: each on its own
    threads, so both see the same machine load)."""
    started, results = {}, {}
    for side in sides:
        cmd, out = COMMANDS[side][0](Path(args.recipe), seed, args.epochs, args.eval_interval, args.threads, tmp,
                                     args.stop_epoch, overrides)
        log = open(tmp / f"{side}_{seed}.log", "w")
        started[side] = (subprocess.Popen(cmd, cwd=ROOT, env=env(args.threads), stdout=log, stderr=subprocess.STDOUT,
                                          text=True), cmd, out, log)
        if not parallel:
            started[side][0].wait()
    for side, (proc, cmd, out, log) in started.items():
        proc.wait()
        log.close()
        text = (tmp / f"{side}_{seed}.log").read_text()
        if proc.returncode or not out.exists():
            raise RuntimeError(f"{side} side failed (exit {proc.returncode}): {' '.join(cmd)}\n{text[-3000:]}")
        print("\n".join(line for line in text.splitlines() if line.startswith("[minimal")), flush=True)
        results[side] = COMMANDS[side][1](out, seed)
    return results


def kangaroo_coco(source: Path, out: Path) -> list[str]:
    """The kangaroo dataset (LabelImg's VOC-XML files in annots/, JPEGs in images/; hftrain's own VOC
    adapter reads only VOCdevkit layouts until issue 14) as COCO files, every 5th image to val; returns the
    recipe overrides that point both sides at them."""
    import xml.etree.ElementTree as ET

    splits = {"train": {"images": [], "annotations": []}, "val": {"images": [], "annotations": []}}
    for number, path in enumerate(sorted((source / "annots").glob("*.xml"))):
        root = ET.parse(path).getroot()
        split = splits["val" if number % 5 == 4 else "train"]
        image_id = number + 1
        split["images"].append({"id": image_id, "file_name": root.findtext("filename"),
                                "width": int(root.findtext("size/width")), "height": int(root.findtext("size/height"))})
        for obj in root.iter("object"):
            box = [float(obj.findtext(f"bndbox/{k}")) for k in ("xmin", "ymin", "xmax", "ymax")]
            w, h = box[2] - box[0], box[3] - box[1]
            split["annotations"].append({"id": len(split["annotations"]) + 1, "image_id": image_id, "category_id": 1,
                                         "bbox": [box[0], box[1], w, h], "area": w * h, "iscrowd": 0})
    overrides = ["data.synthetic=null", "data.format=coco"]
    for name, coco in splits.items():
        coco["categories"] = [{"id": 1, "name": "kangaroo"}]
        (out / f"kangaroo_{name}.json").write_text(json.dumps(coco))
        overrides += [f"data.{name}.images={source / 'images'}", f"data.{name}.labels={out / f'kangaroo_{name}.json'}"]
    print(f"kangaroo: {len(splits['train']['images'])} train / {len(splits['val']['images'])} val images, "
          f"{len(splits['train']['annotations'])} / {len(splits['val']['annotations'])} boxes", flush=True)
    return overrides


def map_at(history: list[dict], epoch: int) -> float | None:
    return next((h["map"] for h in history if h["epoch"] == epoch), None)


def map_at_time(history: list[dict], t: float) -> float | None:
    """mAP at training time ``t``: the last evaluation at or before it (what a run stopped then would have)."""
    done = [h for h in history if h["train_time"] <= t + 1e-9]
    return done[-1]["map"] if done else 0.0


def spread(values: list[float]) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    mean = statistics.fmean(values)
    return f"{mean:.3f} ({min(values):.3f}-{max(values):.3f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipe", default=str(RECIPE))
    parser.add_argument("--seeds", type=int, default=None, help="seeds 0..N-1 (default 3, --full 5)")
    parser.add_argument("--first-seed", type=int, default=0, help="seeds FIRST..FIRST+N-1 (default 0)")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--stop-epoch", type=int, default=None,
                        help="stop both sides after this many epochs of the --epochs schedule")
    parser.add_argument("--eval-interval", type=int, default=1, help="evaluate every this many epochs (both sides)")
    parser.add_argument("--mid-epoch", type=int, default=5, help="the intermediate epoch reported (default 5)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads per side (1: on a shared 2-core machine, 2 threads slow a step 5-30x)")
    parser.add_argument("--sides", default="hftrain,minimal")
    parser.add_argument("--parallel", action="store_true",
                        help="run the two sides of a seed at the same time (each on --threads threads): same machine load")
    parser.add_argument("--dataset", choices=["shapes", "kangaroo"], default="shapes",
                        help="kangaroo: the real VOC-XML dataset in --kangaroo, converted to COCO files for both sides")
    parser.add_argument("--kangaroo", default=str(ROOT.parent / "shared" / "datasets" / "kangaroo"))
    parser.add_argument("--size", type=int, default=192, help="square image size for --dataset kangaroo")
    parser.add_argument("--override", action="append", default=[], help="a recipe override for both sides (repeatable)")
    parser.add_argument("--full", action="store_true", help="5 seeds")
    parser.add_argument("--json", default=None)
    parser.add_argument("--minimal-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--out", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.minimal_worker:
        minimal_worker(args)
        return
    seeds = list(range(args.first_seed, args.first_seed + (args.seeds if args.seeds is not None else (5 if args.full else 3))))
    sides = args.sides.split(",")
    runs: dict[str, list[dict]] = {side: [] for side in sides}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        overrides = list(args.override)
        if args.dataset == "kangaroo":
            overrides = kangaroo_coco(Path(args.kangaroo), Path(tmp)) + [f"data.min_size={args.size}",
                                                                         f"data.max_size={args.size}", *overrides]
        else:  # the demo data, generated once before the sides start
            from hftrain.data.loader import materialise_synthetic
            from hftrain.recipe import load_recipe

            materialise_synthetic(load_recipe(args.recipe, overrides).data)
        for seed in seeds:
            for side, run in run_seed(sides, args.parallel, seed, args, Path(tmp), overrides).items():
                runs[side].append(run)

    last = args.stop_epoch or args.epochs
    mid = min(args.mid_epoch, last)
    summary = {}
    for side, side_runs in runs.items():
        steps = [t for r in side_runs for t in r["step_times"]]
        summary[side] = {
            "map_mid": [map_at(r["history"], mid) for r in side_runs],
            "map_last": [map_at(r["history"], last) for r in side_runs],
            "train_time": [r["history"][-1]["train_time"] for r in side_runs],
            "step_s": statistics.median(steps) if steps else None,
        }
    # equal wall time: the faster side's mean time for all its epochs
    t_equal = min(statistics.fmean(s["train_time"]) for s in summary.values())
    for side, side_runs in runs.items():
        summary[side]["map_equal_time"] = [map_at_time(r["history"], t_equal) for r in side_runs]

    print(f"\nconvergence, {args.dataset} data, {args.recipe} model and settings, seeds {seeds}, {args.epochs} epochs, {args.threads} threads, "
          f"{time.perf_counter() - started:.0f} s in all")
    print(f"{'side':10s} {'mAP ep' + str(mid):22s} {'mAP ep' + str(last):22s} {f'mAP @ {t_equal:.0f}s train':22s} {'s/step':>7s}")
    for side, s in summary.items():
        print(f"{side:10s} {spread(s['map_mid']):22s} {spread(s['map_last']):22s} {spread(s['map_equal_time']):22s} "
              f"{s['step_s']:7.3f}")
    if "minimal" in runs:
        pp = [next((h["map_post_process"] for h in r["history"] if h["epoch"] == last), None) for r in runs["minimal"]]
        print(f"minimal side, transformers post_process_object_detection (top {50}) mAP ep{last}: {spread(pp)}")

    if args.json:
        from report import emit, row

        rows = []
        if {"hftrain", "minimal"} <= set(summary):
            h, m = summary["hftrain"], summary["minimal"]
            mean = lambda v: statistics.fmean([x for x in v if x is not None]) if any(x is not None for x in v) else None  # noqa: E731
            note = (f"{len(seeds)} seeds, mean (min-max) hftrain {spread(h['map_mid'])}, minimal {spread(m['map_mid'])} at epoch "
                    f"{mid}; {spread(h['map_last'])} and {spread(m['map_last'])} at epoch {last} (schedule {args.epochs} epochs)")
            rows.append(row("7 convergence", f"{args.dataset}: RT-DETR mAP after epoch {mid}", mean(h["map_mid"]), mean(m["map_mid"]),
                            "mAP", higher_is_better=True, target=">= 0.95x minimal", target_ratio=0.95, note=note,
                            extra={"hftrain": h, "minimal": m, "seeds": seeds}))
            if last != mid:
                rows.append(row("7 convergence", f"{args.dataset}: RT-DETR mAP after epoch {last}", mean(h["map_last"]),
                                mean(m["map_last"]), "mAP", higher_is_better=True, target=">= 0.95x minimal",
                                target_ratio=0.95, note=note))
            rows.append(row("7 convergence", f"mAP at equal training time ({t_equal:.0f} s)", mean(h["map_equal_time"]),
                            mean(m["map_equal_time"]), "mAP", higher_is_better=True, target="(informational)"))
            rows.append(row("7 convergence", "time per training step", h["step_s"], m["step_s"], "s",
                            higher_is_better=False, target="(informational)"))
        emit(rows, args.json)


if __name__ == "__main__":
    main()
