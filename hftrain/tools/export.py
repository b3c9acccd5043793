"""``hftrain export RUN_DIR_OR_MODEL --format onnx``: an ONNX file of a run's weights with the
post-processing in the graph (:mod:`hftrain.models.onnx_graph`), a JSON beside it that says how
to feed and read it, and a parity check: the file runs in ONNX Runtime on a few images and its
outputs are compared with PyTorch's (:mod:`hftrain.tools.onnx_parity`); above the tolerance the
command fails.

The input size is fixed (the recipe's evaluation size, or ``--size``); the batch is 1, or free
with ``--dynamic-batch``. The TorchScript exporter (``torch.onnx.export(dynamo=False)``) is the
default: it exports every registry family and is several times faster than the dynamo exporter,
which is available with ``--exporter dynamo`` (not for RetinaNet, whose candidate count per level
is read from a tensor).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from hftrain.models.onnx_graph import (
    DetrDetections,
    RetinaNetCandidates,
    reference_points_in_float,
    retinanet_detections,
    valid_size,
)
from hftrain.models.postprocess import MAX_DETECTIONS
from hftrain.models.registry import build_model
from hftrain.recipe import RUN_ONLY, load_recipe
from hftrain.tools.onnx_parity import Parity
from hftrain.data.schema import class_names_of_id2label
from hftrain.data.decode import IMAGE_EXTENSIONS

FAMILY_OF_MODEL_TYPE = {
    "detr": "detr",
    "conditional_detr": "conditional_detr",
    "deformable_detr": "deformable_detr",
    "rt_detr": "rt_detr",
    "rt_detr_v2": "rt_detr_v2",
    "d_fine": "d_fine",
    "hftrain_retinanet": "retinanet",
}
"""config.json ``model_type`` -> hftrain family (``model.name``): what ``hftrain export`` can export."""

SOFTMAX_FAMILIES = {"detr"}
GRID_SAMPLE_FAMILIES = {"deformable_detr", "rt_detr", "rt_detr_v2", "d_fine"}
"""Multi-scale deformable attention samples with ``grid_sample``: ONNX ``GridSample`` from opset 16."""
PARITY_IMAGES = 3


class ExportError(Exception):
    """A clear reason why the export cannot go on (no stack trace for the user)."""


@dataclass
class Source:
    """What is exported: the weights directory, its family, and the recipe when there is one."""

    model_dir: Path
    family: str
    config: dict
    recipe: object | None


def resolve_source(path: str | Path, weights: str) -> Source:
    """A run directory (``recipe.yaml`` + ``WEIGHTS/``), a weights directory inside one, or any
    directory that ``save_pretrained`` wrote with a model type hftrain knows."""
    path = Path(path)
    recipe_file = None
    if (path / "recipe.yaml").is_file():
        recipe_file, model_dir = path / "recipe.yaml", path / weights
        if not (model_dir / "config.json").is_file():
            raise ExportError(f"{path}: no {weights}/config.json (train first, or pass --weights model)")
    elif (path / "config.json").is_file():
        model_dir = path
        if (path.parent / "recipe.yaml").is_file():
            recipe_file = path.parent / "recipe.yaml"
    else:
        raise ExportError(f"{path}: neither a run directory (recipe.yaml) nor a model directory (config.json)")
    config = json.loads((model_dir / "config.json").read_text())
    model_type = config.get("model_type")
    if model_type not in FAMILY_OF_MODEL_TYPE:
        raise ExportError(f"{model_dir}: model_type {model_type!r} is not an hftrain family; ONNX export knows "
                          f"{', '.join(sorted(FAMILY_OF_MODEL_TYPE))}")
    recipe = load_recipe(recipe_file, RUN_ONLY, check_paths=False) if recipe_file else None
    return Source(model_dir, FAMILY_OF_MODEL_TYPE[model_type], config, recipe)


def build_detector(source: Source):
    """The detector through hftrain's own builder (the evaluation's path), weights from ``model_dir``."""
    class_names = class_names_of_id2label(source.config["id2label"])
    if source.recipe is not None:
        section = replace(source.recipe.model, pretrained=str(source.model_dir), config={})
    else:
        section = SimpleNamespace(name=source.family, pretrained=str(source.model_dir), config={},
                                  norm=source.config.get("norm", "default"),
                                  norm_scope=source.config.get("norm_scope", ["backbone", "fpn", "head"]))
    with contextlib.redirect_stdout(sys.stderr):
        detector = build_model(section, class_names)
    detector.model.eval()
    return detector, class_names


def input_size(source: Source, size: str | None, multiple: int) -> tuple[int, int, str, list[str]]:
    """(height, width, resize, notes): ``--size`` (``HxW`` or ``N``), else the recipe's evaluation
    size (``square``: min_size x min_size; ``shortest_edge``: min_size x max_size, an image fitted
    inside and padded), else the saved image processor's; rounded up to the family's multiple."""
    notes = []
    if size:
        try:
            height, width = (int(v) for v in (size.lower().split("x") * 2)[:2]) if "x" in size.lower() \
                else (int(size), int(size))
        except ValueError:
            raise ExportError(f"--size {size!r}: expected HxW or N, e.g. 640x640") from None
        resize = "square"
    elif source.recipe is not None:
        data = source.recipe.data
        resize = data.resize
        height, width = (data.min_size, data.min_size) if resize == "square" else (data.min_size, data.max_size)
    else:
        processor = source.model_dir / "preprocessor_config.json"
        if not processor.is_file():
            raise ExportError(f"{source.model_dir}: no recipe.yaml beside it and no preprocessor_config.json: "
                              "pass --size HxW")
        saved = json.loads(processor.read_text()).get("size", {})
        if "height" in saved:
            height, width, resize = saved["height"], saved["width"], "square"
        else:
            height, width, resize = saved["shortest_edge"], saved["longest_edge"], "shortest_edge"
    rounded = (-(-height // multiple) * multiple, -(-width // multiple) * multiple)
    if rounded != (height, width):
        notes.append(f"input {height}x{width} rounded up to {rounded[0]}x{rounded[1]} (a multiple of {multiple})")
    return rounded[0], rounded[1], resize, notes


def image_files(paths: list[str], source: Source) -> list[Path]:
    """Up to ``PARITY_IMAGES`` images: from ``--images`` (files or folders), else the recipe's
    validation image folder (the shapes demo's generated one), searched recursively."""
    if not paths and source.recipe is not None:
        data = source.recipe.data
        if data.val.images and Path(data.val.images).is_dir():
            paths = [data.val.images]
        elif data.synthetic is not None and (Path(data.synthetic.out_dir) / "val").is_dir():  # the shapes demo
            paths = [str(Path(data.synthetic.out_dir) / "val")]
    found = []
    for path in map(Path, paths):
        if path.is_dir():
            found += sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
        elif path.is_file():
            found.append(path)
        else:
            raise ExportError(f"--images: {path} does not exist")
    return found[:PARITY_IMAGES]


def load_images(files: list[Path], height: int, width: int, resize: str, mean, std) -> tuple[np.ndarray, np.ndarray]:
    """(pixel_values (N, 3, H, W) float32 normalised, pixel_mask (N, H, W) int64): ``square``
    stretches each image to H x W; ``shortest_edge`` fits it inside, top-left, and pads."""
    from PIL import Image

    values = np.zeros((len(files), 3, height, width), np.float32)
    masks = np.zeros((len(files), height, width), np.int64)
    for i, file in enumerate(files):
        try:
            image = Image.open(file).convert("RGB")
        except Exception as err:
            raise ExportError(f"{file}: cannot read the image ({err})") from None
        if resize == "square":
            new_w, new_h = width, height
        else:
            scale = min(height / image.height, width / image.width)
            new_w, new_h = max(1, round(image.width * scale)), max(1, round(image.height * scale))
        pixels = np.asarray(image.resize((new_w, new_h), Image.BILINEAR), np.float32).transpose(2, 0, 1) / 255.0
        pixels = (pixels - np.asarray(mean, np.float32)[:, None, None]) / np.asarray(std, np.float32)[:, None, None]
        values[i, :, :new_h, :new_w] = pixels
        masks[i, :new_h, :new_w] = 1
    return values, masks


def graph_of(detector, family: str) -> torch.nn.Module:
    if family == "retinanet":
        return RetinaNetCandidates(detector.model).eval()
    kind = "softmax" if family in SOFTMAX_FAMILIES else "sigmoid"
    return DetrDetections(detector.model, kind, detector.uses_pixel_mask, MAX_DETECTIONS).eval()


@contextlib.contextmanager
def _export_environment(graph: torch.nn.Module):
    """transformers' ``torch_compilable_check`` asserts become ``aten._is_all_true`` nodes that the
    dynamo exporter cannot translate; they only check shapes, so they are off while exporting.
    Deformable DETR's encoder builds its reference points in float32
    (:func:`hftrain.models.onnx_graph.reference_points_in_float`) while it is traced."""
    previous = os.environ.get("TRANSFORMERS_DISABLE_TORCH_CHECK")
    os.environ["TRANSFORMERS_DISABLE_TORCH_CHECK"] = "1"
    encoders = {type(m) for m in graph.modules() if type(m).__name__ == "DeformableDetrEncoder"}
    originals = {cls: cls.__dict__["get_reference_points"] for cls in encoders}
    for cls in encoders:
        cls.get_reference_points = staticmethod(reference_points_in_float)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TracerWarnings for shapes that are fixed on purpose
            yield
    finally:
        for cls, original in originals.items():
            cls.get_reference_points = original
        if previous is None:
            del os.environ["TRANSFORMERS_DISABLE_TORCH_CHECK"]
        else:
            os.environ["TRANSFORMERS_DISABLE_TORCH_CHECK"] = previous


def export_onnx(graph: torch.nn.Module, example: tuple, input_names: list[str], out: Path, opset: int,
                dynamic_batch: bool, exporter: str) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    output_names = list(graph.output_names)
    with _export_environment(graph), torch.no_grad():
        if exporter == "dynamo":
            batch = torch.export.Dim("batch")
            shapes = tuple({0: batch} for _ in input_names) if dynamic_batch else None
            with contextlib.redirect_stdout(sys.stderr):
                program = torch.onnx.export(graph, example, input_names=input_names, output_names=output_names,
                                            opset_version=opset, dynamo=True, dynamic_shapes=shapes)
            program.save(str(out))
        else:
            axes = {name: {0: "batch"} for name in input_names + output_names} if dynamic_batch else None
            torch.onnx.export(graph, example, str(out), input_names=input_names, output_names=output_names,
                              opset_version=opset, dynamo=False, dynamic_axes=axes)


def file_opset(path: Path) -> int:
    """The default-domain opset an ONNX file declares."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return next(entry.version for entry in model.opset_import if entry.domain in ("", "ai.onnx"))


def check_parity(graph, detector, family: str, session, values: np.ndarray, masks: np.ndarray,
                 input_names: list[str], dynamic_batch: bool) -> Parity:
    """ONNX Runtime against PyTorch: raw outputs, and detections against hftrain's evaluation
    post-processing (``detector.postprocess``) on the PyTorch outputs."""
    parity = Parity()
    batches = [slice(0, len(values))] if dynamic_batch else [slice(i, i + 1) for i in range(len(values))]
    height, width = values.shape[2:]
    for part in batches:
        feed = {"pixel_values": values[part], "pixel_mask": masks[part]}
        onnx_out = dict(zip(graph.output_names, session.run(None, {n: feed[n] for n in input_names})))
        torch_in = {name: torch.from_numpy(feed[name]) for name in input_names}
        with torch.no_grad():
            outputs = detector.model(**torch_in)
            if detector.uses_pixel_mask:
                sizes = torch.stack(valid_size(torch_in["pixel_mask"]), 1)
            else:
                sizes = torch.tensor([[height, width]] * len(values[part]))
            detections = detector.postprocess(outputs, sizes)
        for i, det in enumerate(detections):
            parity.add_raw(outputs.logits[i].float().numpy(), onnx_out["logits"][i],
                           outputs.pred_boxes[i].float().numpy(), onnx_out["pred_boxes"][i],
                           paired=family != "retinanet")
            if family == "retinanet":
                mine = retinanet_detections(*(torch.from_numpy(onnx_out[k][i]) for k in ("scores", "labels", "boxes")),
                                            detector.model.config)
                mine = {k: v.numpy() for k, v in mine.items()}
            else:
                mine = {k: onnx_out[k][i] for k in ("scores", "labels", "boxes")}
            parity.add_detections({k: v.numpy() for k, v in det.items()}, mine, float(max(height, width)))
    return parity


def describe(family: str, detector, height: int, width: int, resize: str, batch, class_names, config: dict,
             model_cfg) -> dict:
    """The JSON written beside the ONNX file: how to feed the graph and read its outputs."""
    inputs = {"pixel_values": {"shape": [batch, 3, height, width], "dtype": "float32",
                               "meaning": "RGB, (pixel / 255 - mean) / std"}}
    if detector.uses_pixel_mask:
        inputs["pixel_mask"] = {"shape": [batch, height, width], "dtype": "int64",
                                "meaning": "1 on the image, 0 on padding; the image starts at the top-left corner"}
    pixels = "pixels of the valid region given by pixel_mask" if detector.uses_pixel_mask else "pixels of the input"
    num_logits = len(class_names) + (1 if family in SOFTMAX_FAMILIES else 0)
    outputs = {
        "logits": f"[batch, N, {num_logits}] raw class logits"
                  + (" (last: no object; softmax)" if family in SOFTMAX_FAMILIES else " (sigmoid)"),
        "pred_boxes": "[batch, N, 4] boxes (cx, cy, w, h) normalised to [0, 1] "
                      + ("of the valid region" if detector.uses_pixel_mask else "of the input"),
        "scores": "[batch, K] detection scores, best first",
        "labels": "[batch, K] class index (class_names)",
        "boxes": f"[batch, K, 4] boxes (x1, y1, x2, y2) in {pixels}",
    }
    if family == "retinanet":
        postprocess = (f"scores/labels/boxes are candidates before NMS (each pyramid level's best "
                       f"{model_cfg.topk_candidates}); detections: keep score > {model_cfg.score_threshold}, "
                       f"class-wise NMS at IoU {model_cfg.nms_threshold}, keep the best "
                       f"{model_cfg.detections_per_image}")
    elif family in SOFTMAX_FAMILIES:
        postprocess = "in the graph: per query softmax, its best real class; the best K queries"
    else:
        postprocess = "in the graph: sigmoid of every (query, class) logit; the best K pairs"
    threshold = config.get("hftrain_score_threshold")
    return {
        "family": family,
        "image_size": {"height": height, "width": width},
        "resize": ("stretch every image to height x width" if resize == "square"
                   else "fit inside height x width keeping the aspect ratio, top-left, pad with 0 (pixel_mask 0)"),
        "mean": list(detector.image_mean),
        "std": list(detector.image_std),
        "class_names": class_names,
        "inputs": inputs,
        "outputs": outputs,
        "postprocess": postprocess,
        "score_threshold": threshold,
        "score_threshold_source": "config.json hftrain_score_threshold" if threshold is not None
        else "none saved (the run predates it or had no evaluation); 0.5 is predict's default",
    }


def export(path: str, out: str | None = None, weights: str = "best", opset: int = 17, dynamic_batch: bool = False,
           size: str | None = None, images: list[str] | None = None, atol: float = 1e-3,
           exporter: str = "torchscript", print_=print) -> dict:
    """Export, check parity, write the JSON; returns it. Raises :class:`ExportError` when the model
    cannot be exported or the parity fails."""
    import onnxruntime

    source = resolve_source(path, weights)
    if source.family in GRID_SAMPLE_FAMILIES and opset < 16:
        raise ExportError(f"--opset {opset}: {source.family}'s deformable attention needs GridSample, "
                          "which ONNX has from opset 16")
    if source.family == "retinanet" and exporter == "dynamo":
        raise ExportError("--exporter dynamo: RetinaNet's per-level candidate counts are read from a tensor, which "
                          "torch.export cannot keep constant; use the default torchscript exporter")
    detector, class_names = build_detector(source)
    height, width, resize, notes = input_size(source, size, detector.pad_to_multiple)
    for note in notes:
        print_(f"note: {note}")
    files = image_files(images or [], source)
    if files:
        values, masks = load_images(files, height, width, resize, detector.image_mean, detector.image_std)
    else:
        print_("note: no images (pass --images): parity on random pixels")
        generator = np.random.default_rng(0)
        values = generator.standard_normal((2, 3, height, width)).astype(np.float32)
        masks = np.ones((2, height, width), np.int64)
    input_names = ["pixel_values"] + (["pixel_mask"] if detector.uses_pixel_mask else [])
    graph = graph_of(detector, source.family)
    example_count = 2 if dynamic_batch else 1  # a batch of 2 keeps the tracer from treating it as a constant 1
    example = tuple(torch.from_numpy(np.repeat(a[:1], example_count, 0)) for a in (values, masks)[:len(input_names)])
    if out is None:
        out_path = (source.model_dir.parent / "export" / f"{source.model_dir.name}.onnx" if source.recipe is not None
                    else source.model_dir / "model.onnx")
    else:
        out_path = Path(out)
    start = time.perf_counter()
    try:
        export_onnx(graph, example, input_names, out_path, opset, dynamic_batch, exporter)
    except Exception as err:  # the exporters raise many types; the user needs the reason, not the trace
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise ExportError(f"{source.family}: the {exporter} ONNX exporter failed: {type(err).__name__}: {first}") from err
    seconds = time.perf_counter() - start
    megabytes = out_path.stat().st_size / 1e6
    batch = "batch" if dynamic_batch else 1
    written_opset = file_opset(out_path)
    if written_opset != opset:  # the dynamo exporter writes its own lowest opset when it cannot convert down
        print_(f"note: the {exporter} exporter wrote opset {written_opset}, not {opset}")
        opset = written_opset
    print_(f"exported {out_path} ({megabytes:.1f} MB) in {seconds:.1f} s: {source.family}, {exporter} exporter, "
           f"opset {opset}, input {batch}x3x{height}x{width}" + (" + pixel_mask" if detector.uses_pixel_mask else ""))
    try:
        session = onnxruntime.InferenceSession(str(out_path), providers=["CPUExecutionProvider"])
    except Exception as err:  # e.g. an op or type without an ONNX Runtime kernel
        raise ExportError(f"{out_path}: ONNX Runtime cannot load the exported file: {str(err).strip()}") from err
    fixed_batch = session.get_inputs()[0].shape[0]
    if dynamic_batch and not isinstance(fixed_batch, str):
        raise ExportError(f"{out_path}: --dynamic-batch asked, but the {exporter} exporter fixed the batch at "
                          f"{fixed_batch} (torch.export specialised it); use --exporter torchscript")
    try:
        parity = check_parity(graph, detector, source.family, session, values, masks, input_names, dynamic_batch)
    except Exception as err:  # onnxruntime's errors: a kernel or a shape the file cannot run
        raise ExportError(f"{out_path}: ONNX Runtime cannot run the exported file: {str(err).strip()}") from err
    figures = parity.figures()
    print_(f"parity on {len(values)} {'images' if files else 'random inputs'} (ONNX Runtime vs PyTorch, max |diff|): "
           f"logits {parity.logits:.2e}, pred_boxes {parity.pred_boxes:.2e}, scores {parity.scores:.2e}, "
           f"boxes {parity.boxes_px:.2e} px over {parity.detections} detections")
    info = describe(source.family, detector, height, width, resize, batch, class_names, source.config,
                    detector.model.config)
    failures = parity.failures(atol, float(max(height, width)))
    info["output_shapes"] = {output.name: output.shape for output in session.get_outputs()}
    info.update(source=str(source.model_dir), onnx=out_path.name, opset=opset, exporter=exporter,
                export_seconds=round(seconds, 2), size_mb=round(megabytes, 2),
                parity={**figures, "images": [str(f) for f in files], "atol": atol, "passed": not failures})
    json_path = out_path.with_suffix(".json")
    json_path.write_text(json.dumps(info, indent=1))
    print_(f"wrote {json_path}")
    if failures:
        raise ExportError(f"{out_path}: ONNX Runtime does not match PyTorch: {'; '.join(failures)}")
    return info


def export_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="hftrain export", description="Export a run's weights to ONNX and check "
                                     "the file against PyTorch with ONNX Runtime.")
    parser.add_argument("source", help="run directory (recipe.yaml + best/), or a model directory (config.json)")
    parser.add_argument("--format", default="onnx", choices=["onnx"], help="export format (onnx)")
    parser.add_argument("--weights", default="best", help="weights directory inside a run: best or model")
    parser.add_argument("--out", help="ONNX file (default: RUN_DIR/export/WEIGHTS.onnx; MODEL_DIR/model.onnx); "
                                      "the JSON goes beside it with the suffix .json")
    parser.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17; >= 16 for deformable attention)")
    parser.add_argument("--dynamic-batch", action="store_true", help="free batch dimension (default: batch 1)")
    parser.add_argument("--size", help="input HxW (default: the recipe's evaluation size)")
    parser.add_argument("--images", nargs="+", help="images for the parity check (default: the first "
                                                    f"{PARITY_IMAGES} of the recipe's validation images)")
    parser.add_argument("--atol", type=float, default=1e-3, help="parity tolerance on scores and normalised boxes "
                                                                 "(pixel boxes: atol x the longer side)")
    parser.add_argument("--exporter", default="torchscript", choices=["torchscript", "dynamo"],
                        help="torch.onnx exporter (default torchscript: every family, faster)")
    args = parser.parse_args(argv)
    try:
        export(args.source, args.out, args.weights, args.opset, args.dynamic_batch, args.size, args.images,
               args.atol, args.exporter)
    except ExportError as err:
        print(f"hftrain export: {err}", file=sys.stderr)
        return 1
    return 0
