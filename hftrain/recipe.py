"""Recipes: typed dataclasses are the schema, YAML only supplies values.

A recipe file may name one ``base:`` file (relative to itself) whose values it overrides;
command-line ``key=value`` overrides come last. Every problem (unknown key, wrong type,
missing path) is collected and reported at once, before any model or dataset is built.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml


# ---------------------------------------------------------------------------- schema


@dataclass
class ModelConfig:
    name: str = "rt_detr"
    """Registry key of the model family (see ``hftrain.models.registry.MODELS``)."""
    pretrained: str | None = None
    """Hub id or local directory of pretrained weights; None builds from ``config``."""
    config: dict[str, Any] = field(default_factory=dict)
    """Overrides for the family's transformers config (architecture sizes, loss weights...)."""
    norm: str = "default"
    """Normalization layers: default | bn | syncbn | frozenbn | gn | cbn (RetinaNet)."""
    norm_scope: list[str] = field(default_factory=lambda: ["backbone", "fpn", "head"])
    """Which parts the ``norm`` swap applies to."""


@dataclass
class SplitConfig:
    images: str | None = None
    """Image directory (COCO, FRED root, VOCdevkit) or a converted dataset directory."""
    labels: str | None = None
    """Annotation file (COCO JSON, BDD100K JSON); unused by folder formats."""
    sets: list[str] = field(default_factory=list)
    """Format-specific split names, e.g. VOC ``2007/trainval`` or a FRED split file."""
    subset: int | None = None
    """Use only this many images (a seeded random subset)."""


@dataclass
class SyntheticConfig:
    """The embedded shapes dataset, generated into ``data.train``/``data.val`` paths' parent."""

    kind: Literal["shapes"] = "shapes"
    """Generator name."""
    out_dir: str = "data/shapes"
    """Where the images and COCO files are written."""
    train_images: int = 1000
    """Number of training images."""
    val_images: int = 200
    """Number of validation images."""
    image_size: int = 128
    """Side of the square images."""
    seed: int = 0
    """Generator seed."""


@dataclass
class AugmentConfig:
    """Training augmentation beyond the flip (``hftrain.data.augment``), on uint8 tensors. Every random
    choice comes from the sample's (train.seed, epoch, index) generator, so a sample is the same in any
    worker or process and after a resume. Order: mosaic, mixup, scale jitter, then ``data.hflip``.
    Validation is never augmented."""

    mosaic: float = 0.0
    """Probability that a training sample is a mosaic: this image and three drawn at random, cut around a
    random centre (uniform in the middle half of each axis) onto one canvas of this image's resized size
    (``data.resize: square``: min_size x min_size; shortest_edge: this image's min_size/max_size size, so
    mosaics keep the size distribution of plain samples). Each image keeps its resized scale; gray (114)
    where none reaches. Boxes are clipped to the visible part of their image (see ``min_box_size``)."""
    mixup: float = 0.0
    """Probability that a sample is blended with another one built the same way (itself a mosaic with
    probability ``mosaic``): pixels r * this + (1 - r) * other, r ~ Beta(32, 32) as in ultralytics, the
    boxes of both kept. The other is resized to this sample's size when they differ."""
    scale_jitter: float = 0.0
    """Probability that a sample (after mosaic and mixup) is rescaled by a factor drawn uniformly from
    ``scale_range``, boxes with it; the collate pads each batch to its largest image."""
    scale_range: list[float] = field(default_factory=lambda: [0.75, 1.25])
    """[low, high] of the scale-jitter factor. Above 1, images (and memory) grow past data.min_size/max_size."""
    close_mosaic_epoch: int | None = None
    """The first epoch with mosaic and mixup off; they stay off to the end. An absolute epoch number as the
    loop counts and logs them (from 1, across phases), so it does not depend on knowing the run's length:
    ultralytics' ``close_mosaic: 10`` (off for the last 10 epochs) in a 150-epoch run is 141. null: never."""
    min_box_size: float = 2.0
    """Mosaic: a box cut by the canvas edge or the centre lines is dropped when its visible part is narrower
    or lower than this many pixels..."""
    min_visible: float = 0.1
    """...or shows less than this fraction of the box's area. Dropped boxes are counted, never silent
    (``boxes_dropped`` in the train records of metrics.jsonl)."""


@dataclass
class DataConfig:
    format: str = "coco"
    """Source format: coco | voc | bdd100k | fred | hf (a directory from ``hftrain convert``)."""
    train: SplitConfig = field(default_factory=SplitConfig)
    """Training split."""
    val: SplitConfig = field(default_factory=SplitConfig)
    """Validation split."""
    synthetic: SyntheticConfig | None = None
    """Generate the shapes demo dataset first (its COCO files become train/val)."""
    min_size: int = 800
    """Resize so the shortest edge is this many pixels..."""
    max_size: int = 1333
    """...unless the longest edge would exceed this."""
    resize: Literal["shortest_edge", "square"] = "shortest_edge"
    """shortest_edge keeps the aspect ratio (min_size/max_size); square resizes every image to
    min_size x min_size, as RT-DETR's official training does (640 x 640)."""
    hflip: float = 0.5
    """Probability of a horizontal flip during training."""
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    """Mosaic, mixup, scale jitter and when mosaic stops (all off by default)."""
    jpeg_draft: bool = True
    """Decode a JPEG at 1/2, 1/4 or 1/8 scale (libjpeg DCT scaling) when the resized image is at
    most half its size on both axes, then resize from there: several times less decoding work.
    Pixels then differ from a full decode + bilinear resize (the transformers processor's) by
    at most 0.1 in normalised units on average (about 5 uint8 levels; more at sharp edges, the
    DCT filter being sharper); false decodes fully (1 uint8 level from the processor). No effect
    on upscales such as BDD100K's 1280x720 at 800/1333."""
    num_workers: int = 2
    """DataLoader worker processes per training process."""
    prefetch_factor: int = 2
    """Batches each worker prepares ahead."""
    pin_memory: bool = True
    """Pin host memory for faster copies to a CUDA device (ignored on CPU)."""
    category_map: dict[str, str | None] = field(default_factory=dict)
    """Rename source categories; a null value drops that category (counted)."""
    max_missing: float = 0.0
    """Fraction of missing image files tolerated before loading fails."""
    max_bad_fraction: float = 0.01
    """Fraction of images that may fail to decode during training before the run stops."""
    blacklist: str | None = None
    """Blacklist JSON from ``hftrain scan`` (or ``auto``) whose images are left out."""
    cache_dir: str | None = None
    """Where converted datasets (and the ``auto`` blacklist) are cached; null converts every run."""
    modality: Literal["rgb", "event"] = "rgb"
    """FRED: which stream to read."""
    drone_classes: Literal["single", "models"] = "single"
    """FRED: one ``drone`` class, or the five drone models where the labels name them."""
    read_image_sizes: bool = False
    """BDD100K: read each image's size instead of assuming 1280 x 720."""
    seed: int = 0
    """Seed for subsets."""
    sampler: Literal["random", "repeat_factor"] = "random"
    """Training order: random (a seeded shuffle), or repeat_factor (LVIS class-balanced repeat factor
    sampling: an image repeats max over its classes of max(1, sqrt(repeat_threshold / f(c))) times per
    epoch, f(c) the fraction of images holding class c, with stochastic rounding each epoch)."""
    repeat_threshold: float = 0.001
    """repeat_factor: classes in fewer than this fraction of the images are repeated (LVIS uses 0.001)."""
    group_by_aspect_ratio: bool = False
    """Batch landscape and portrait images separately (less padding)."""
    cache: Literal["none", "ram"] = "none"
    """ram: keep the decoded, resized uint8 training images in RAM (``hftrain.data.ram_cache``): the
    first epoch decodes each image once, later epochs (and mosaic tiles) read it from memory. One copy
    per machine, shared by every dataloader worker and every training process there. Its exact size
    (sum of 3 x H x W of the resized images) is checked against the available memory before any
    worker starts, and the run is refused when it does not fit (see ``cache_margin_gb``)."""
    cache_val: bool = False
    """With cache: ram, cache the validation images too (decoded only every eval.interval epochs
    otherwise; their size is added to the estimate)."""
    cache_margin_gb: float = 4.0
    """GiB of memory that must stay available once the cache is full (model, workers, batches in flight)."""


@dataclass
class OptimConfig:
    name: Literal["adamw", "adam"] = "adamw"
    """Optimizer: adamw (decoupled weight decay) or adam (weight decay added to the gradient, as L2)."""
    lr: float = 1e-4
    """Peak learning rate of AdamW."""
    backbone_lr_mult: float = 0.1
    """The backbone's learning rate is ``lr`` times this."""
    weight_decay: float = 1e-4
    """AdamW weight decay (not applied to norms and biases)."""
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    """AdamW betas."""
    eps: float = 1e-8
    """AdamW epsilon."""


@dataclass
class ScheduleConfig:
    name: Literal["cosine", "step", "constant"] = "cosine"
    """Learning-rate schedule after warm-up."""
    warmup_steps: int = 0
    """Linear warm-up length in optimizer steps."""
    warmup_start_lr: float = 0.0
    """Learning rate at the first warm-up step (scaled per parameter group)."""
    min_lr: float = 0.0
    """Final learning rate of the cosine schedule (scaled per parameter group)."""
    milestones: list[int] = field(default_factory=list)
    """Epochs after which the step schedule multiplies the learning rate by ``gamma``."""
    gamma: float = 0.1
    """Step-schedule factor."""


@dataclass
class TrainConfig:
    epochs: int = 10
    """Number of epochs."""
    batch_size: int | Literal["auto"] = 2
    """Images per device per micro-batch; auto probes the largest that fits before training and sets
    gradient_accumulation_steps to reach train.effective_batch."""
    effective_batch: int | None = None
    """Images per optimizer step over all processes; needed by batch_size: auto."""
    gradient_accumulation_steps: int = 1
    """Micro-batches per optimizer step."""
    clip_max_norm: float | None = 0.1
    """Clip the total gradient norm to this; null disables clipping."""
    seed: int = 42
    """Seed for model init, shuffling and augmentation."""
    cpu_threads: int | None = None
    """torch intra-op threads per process; null: the cores this process may use divided by the
    processes on this machine (``accelerate launch`` sets OMP_NUM_THREADS=1 otherwise, which
    leaves a lone CPU process on one core)."""
    max_steps: int | None = None
    """Stop after this many optimizer steps (for smoke tests); null trains all epochs."""


@dataclass
class PhaseConfig:
    """One training phase (``hftrain.phases``): consecutive epochs with their own batch, lr and frozen modules."""

    name: str = ""
    """Shown in the log (default phase1, phase2...)."""
    epochs: int = 1
    """Epochs in this phase; the phases' epochs add up to ``train.epochs``."""
    batch_size: int | None = None
    """Images per device per micro-batch in this phase; null: ``train.batch_size``."""
    gradient_accumulation_steps: int | None = None
    """Micro-batches per optimizer step in this phase; null: ``train.gradient_accumulation_steps``."""
    lr: float | None = None
    """Peak learning rate of this phase (the schedule's curve is rescaled to it); null: ``optim.lr``."""
    freeze: list[str] = field(default_factory=list)
    """Parameters frozen in this phase: module or parameter names (``model.backbone`` freezes everything
    under it) or glob patterns (``*.backbone.*``). BatchNorm layers whose parameters are all frozen stay in
    eval mode."""


@dataclass
class PrecisionConfig:
    mode: Literal["auto", "bf16", "fp16", "no"] = "auto"
    """auto: bf16 on CUDA devices that support it, fp16 on other CUDA devices, none on CPU."""
    fp32_criterion: bool = True
    """Run the loss and Hungarian matching in fp32 (autocast off)."""


@dataclass
class EvalConfig:
    interval: int = 1
    """Evaluate every this many epochs (and always after the last)."""
    during_training: bool = True
    """false: no evaluation before the last epoch (FRED's ``--no_eval_map``: faster epochs; ``best/`` is then the
    final model); the last epoch is always evaluated."""
    batch_size: int | None = None
    """Per-device evaluation batch; null uses train.batch_size."""
    max_detections: int = 100
    """Detections per image kept for COCO evaluation."""
    backend: Literal["pycocotools", "faster_coco_eval"] = "faster_coco_eval"
    """COCO evaluation implementation: faster_coco_eval (the 12 statistics identical to pycocotools on
    5,000 images x 100 detections, 7x less time in bench/bench_eval.py) or pycocotools (the reference)."""
    voc: bool = False
    """Also compute PASCAL VOC AP at IoU 0.5 (voc07_map: 11-point, voc_map: all-point; difficult ignored)."""


@dataclass
class CheckpointConfig:
    interval: int = 1
    """Save a checkpoint every this many epochs (and after the last)."""
    every_steps: int | None = None
    """Also save a checkpoint every this many optimizer steps (a multiple of log.interval)."""
    keep: int = 2
    """How many checkpoints to keep (the newest complete one is never deleted; best/ is separate)."""
    best_metric: str = "map"
    """Evaluation metric that selects ``best/``."""
    best_mode: Literal["max", "min"] = "max"
    """Whether a larger or smaller ``best_metric`` is better."""


@dataclass
class LogConfig:
    interval: int = 10
    """Optimizer steps between log lines (console, metrics.jsonl, TensorBoard)."""
    tensorboard: bool = True
    """Log to TensorBoard through Accelerate when tensorboard is installed."""
    loss_window: int = 50
    """Optimizer steps over which loss variance, trend, clipped fraction and gradient norm are summarised."""


@dataclass
class GuardConfig:
    """What a step whose loss or gradients are NaN/Inf does (see ``hftrain.guard``)."""

    nonfinite: Literal["skip", "rollback", "abort"] = "skip"
    """skip: drop the step (no update); rollback: skip, and after ``consecutive`` bad steps in a row reload
    the last good checkpoint with the learning rate times ``lr_factor``; abort: stop at the first one."""
    consecutive: int = 3
    """rollback: bad steps in a row that trigger a rollback."""
    lr_factor: float = 0.5
    """rollback: the learning rate is multiplied by this at each rollback."""
    max_rollbacks: int = 3
    """rollback: the run aborts when it would need more rollbacks than this."""


@dataclass
class PlotsConfig:
    """Pictures in the run directory (``plots/``); ``train.log``, ``metrics.jsonl`` and ``results.csv`` are always written."""

    enabled: bool = True
    """Draw the label statistics at the start and, after each evaluation, the curves (needs matplotlib)
    and the prediction grid (PIL only)."""
    images: int = 8
    """Validation images in the prediction grid: the first this many of the validation set (0: no grid)."""
    score_threshold: float = 0.3
    """Predictions drawn in the grid score at least this."""


@dataclass
class EmaConfig:
    """An exponential moving average of the weights (``hftrain.ema``), as RT-DETR's official training keeps."""

    enabled: bool = False
    """Keep the average; evaluation during training, ``best/`` and ``model/`` then use the averaged weights."""
    decay: float = 0.9999
    """The decay the average approaches: after each optimizer step, ema = d * ema + (1 - d) * weights."""
    warmup_updates: int = 2000
    """d = decay * (1 - exp(-updates / warmup_updates)): small for the first updates (the average follows the
    weights), near ``decay`` after a few times this many optimizer steps (RT-DETR: 2000)."""


@dataclass
class CudaConfig:
    """CUDA memory settings (``hftrain.cuda_memory``); all do nothing without a CUDA device. The CPU thread
    count is ``train.cpu_threads``."""

    alloc_conf: str | None = None
    """Caching-allocator settings, e.g. ``max_split_size_mb:64`` or
    ``max_split_size_mb:512,garbage_collection_threshold:0.7,expandable_segments:True``: set as
    PYTORCH_ALLOC_CONF and PYTORCH_CUDA_ALLOC_CONF (torch 2.13 reads both) before CUDA initialises. null
    leaves the environment as it is."""
    memory_fraction: float | None = None
    """Cap this process's GPU memory at this fraction of the device's
    (``torch.cuda.set_per_process_memory_fraction``); null: no cap."""
    empty_cache_every: int | None = None
    """Call ``torch.cuda.empty_cache()`` after every this many micro-batches of an epoch; null: never."""


@dataclass
class Recipe:
    output_dir: str = "runs/default"
    """Run directory: checkpoints, logs, metrics.jsonl, recipe.yaml, model/."""
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    precision: PrecisionConfig = field(default_factory=PrecisionConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    log: LogConfig = field(default_factory=LogConfig)
    plots: PlotsConfig = field(default_factory=PlotsConfig)
    guard: GuardConfig = field(default_factory=GuardConfig)
    ema: EmaConfig = field(default_factory=EmaConfig)
    cuda: CudaConfig = field(default_factory=CudaConfig)
    phases: list[PhaseConfig] = field(default_factory=list)
    """Training phases in order (e.g. a frozen-backbone phase, then an unfrozen one); empty: one phase of
    ``train.epochs`` with the ``train``/``optim`` values. With phases, ``train.epochs`` is set to their sum."""
    debug: bool = False
    """Debug mode: batch class histograms, gradient and update checks, NaN/Inf hooks, warm-up lr (``hftrain.debug``)."""
    debug_batches: int = 5
    """Debug mode: how many micro-batches get histograms and optimizer steps get gradient/update checks."""


# ---------------------------------------------------------------------------- errors


class RecipeError(Exception):
    """One or more problems with a recipe; ``problems`` lists them all."""

    def __init__(self, problems: list[str], source: str = "recipe"):
        self.problems = problems
        super().__init__(f"{source}: {len(problems)} problem(s)\n" + "\n".join(f"  - {p}" for p in problems))


# ---------------------------------------------------------------------------- loading


def load_recipe(path: str | Path, overrides: list[str] | tuple[str, ...] = (), check_paths: bool = True) -> Recipe:
    """Read ``path`` (with its ``base:``), apply ``key=value`` overrides, type-check everything."""
    path = Path(path)
    raw = _read_with_base(path)
    problems: list[str] = []
    for item in expand_override_files(overrides, problems):
        key, sep, text = item.partition("=")
        if not sep or not key:
            problems.append(f"override {item!r} is not of the form key=value")
            continue
        _set_dotted(raw, key.strip(), yaml.safe_load(text) if text.strip() else None)
    recipe = _build(Recipe, raw, "", problems)
    if recipe.phases and not problems:  # the phases define the run's length
        recipe.train.epochs = sum(phase.epochs for phase in recipe.phases)
    if not problems:
        _check_values(recipe, problems)
        if check_paths:
            problems.extend(missing_paths(recipe))
    if problems:
        raise RecipeError(problems, str(path))
    return recipe


def expand_override_files(overrides, problems: list[str]) -> list[str]:
    """``@FILE.yaml`` in the overrides stands for the ``key: value`` lines of that file (dotted keys,
    e.g. a stability profile), in its place among the other overrides."""
    out: list[str] = []
    for item in overrides:
        if not item.startswith("@"):
            out.append(item)
            continue
        path = Path(item[1:])
        try:
            values = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError) as err:
            problems.append(f"override file {path}: {err}")
            continue
        if not isinstance(values, dict):
            problems.append(f"override file {path}: expected a mapping of dotted keys to values")
            continue
        out.extend(f"{key}={yaml.safe_dump(value, default_flow_style=True).strip().removesuffix('...').strip()}"
                   for key, value in values.items())
    return out


def _read_with_base(path: Path) -> dict:
    if not path.is_file():
        raise RecipeError([f"recipe file {path} not found"], str(path))
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise RecipeError([f"not valid YAML: {err}"], str(path)) from None
    if not isinstance(raw, dict):
        raise RecipeError(["the top level must be a mapping of sections"], str(path))
    base = raw.pop("base", None)
    if base is None:
        return raw
    base_path = (path.parent / base).resolve()
    if not base_path.is_file():
        raise RecipeError([f"base: {base_path} not found"], str(path))
    base_raw = yaml.safe_load(base_path.read_text()) or {}
    if "base" in base_raw:
        raise RecipeError([f"base: {base_path} has a base of its own; one level of inclusion only"], str(path))
    return _merge(base_raw, raw)


def _merge(base: dict, top: dict) -> dict:
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict) and key not in _FREEFORM:
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


_FREEFORM = {"config", "category_map"}
"""dict-typed fields whose keys are free (not schema keys)."""


def _set_dotted(raw: dict, key: str, value: Any) -> None:
    """``a.b.c=value``; a number indexes an existing list (``phases.1.batch_size=8``)."""
    parts = key.split(".")
    node = raw
    for part in parts[:-1]:
        if isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
            continue
        if not isinstance(node.get(part), (dict, list)):
            node[part] = {}
        node = node[part]
    if isinstance(node, list) and parts[-1].isdigit() and int(parts[-1]) < len(node):
        node[int(parts[-1])] = value
    else:
        node[parts[-1]] = value


def all_keys(cls: type = Recipe, prefix: str = "") -> list[str]:
    """Every valid dotted key of the schema."""
    keys = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        full = prefix + f.name
        keys.append(full)
        inner = _dataclass_in(hints[f.name])
        if inner is not None:
            keys.extend(all_keys(inner, full + "."))
    return keys


def _dataclass_in(hint) -> type | None:
    if dataclasses.is_dataclass(hint):
        return hint
    for arg in typing.get_args(hint):
        if dataclasses.is_dataclass(arg):
            return arg
    return None


def _build(cls: type, raw: Any, prefix: str, problems: list[str]):
    if not isinstance(raw, dict):
        problems.append(f"{prefix.rstrip('.') or 'recipe'}: expected a mapping, got {raw!r}")
        return cls()
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    valid = all_keys()
    for key in raw:
        if key not in names:
            full = prefix + str(key)
            near = difflib.get_close_matches(full, valid, n=1, cutoff=0.6)
            hint = f" (did you mean {near[0]!r}?)" if near else ""
            problems.append(f"unknown key {full!r}{hint}")
    values = {}
    for name in names & set(raw):
        values[name] = _coerce(raw[name], hints[name], prefix + name, problems)
    return cls(**values)


def _coerce(value: Any, hint: Any, key: str, problems: list[str]) -> Any:
    """Check ``value`` against the type ``hint``; record a problem naming ``key`` if it fails."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        candidates = [a for a in args if a is not type(None)]
        if len(candidates) == 1:
            return _coerce(value, candidates[0], key, problems)
        for candidate in candidates:
            trial: list[str] = []
            result = _coerce(value, candidate, key, trial)
            if not trial:
                return result
        problems.append(f"{key}: expected {_type_name(hint)}, got {value!r}")
        return None
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, key + ".", problems)
    if origin is Literal:
        if value not in args:
            problems.append(f"{key}: expected one of {list(args)}, got {value!r}")
        return value
    if origin is list:
        if not isinstance(value, list):
            problems.append(f"{key}: expected a list of {_type_name(args[0])}, got {value!r}")
            return []
        return [_coerce(v, args[0], f"{key}[{i}]", problems) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            problems.append(f"{key}: expected a mapping, got {value!r}")
            return {}
        if args and args[1] is not Any:
            return {k: _coerce(v, args[1], f"{key}.{k}", problems) for k, v in value.items()}
        return dict(value)
    if hint is Any:
        return value
    if hint is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, str):
        try:  # YAML 1.1 reads 5e-5 as a string; accept it as a float
            return float(value)
        except ValueError:
            pass
    if hint in (int, str, bool) and isinstance(value, hint) and not (hint is int and isinstance(value, bool)):
        return value
    problems.append(f"{key}: expected {_type_name(hint)}, got {value!r} ({type(value).__name__})")
    return value


def _type_name(hint: Any) -> str:
    if isinstance(hint, type):
        return hint.__name__
    if typing.get_origin(hint) in (typing.Union, types.UnionType):  # int | Literal["auto"] -> int or 'auto'
        return " or ".join(_type_name(a) for a in typing.get_args(hint))
    if typing.get_origin(hint) is Literal:
        return " or ".join(repr(a) for a in typing.get_args(hint))
    return str(hint).replace("typing.", "")


def _check_values(recipe: Recipe, problems: list[str]) -> None:
    """Range checks that a type alone cannot express."""
    positive = {
        "train.epochs": recipe.train.epochs,
        "train.batch_size": 1 if recipe.train.batch_size == "auto" else recipe.train.batch_size,
        "train.effective_batch": 1 if recipe.train.effective_batch is None else recipe.train.effective_batch,
        "guard.consecutive": recipe.guard.consecutive,
        "log.loss_window": recipe.log.loss_window,
        "debug_batches": recipe.debug_batches,
        "train.gradient_accumulation_steps": recipe.train.gradient_accumulation_steps,
        "eval.interval": recipe.eval.interval,
        "checkpoint.interval": recipe.checkpoint.interval,
        "checkpoint.keep": recipe.checkpoint.keep,
        "log.interval": recipe.log.interval,
        "data.min_size": recipe.data.min_size,
        "data.max_size": recipe.data.max_size,
    }
    for key, value in positive.items():
        if value < 1:
            problems.append(f"{key}: must be at least 1, got {value}")
    for i, phase in enumerate(recipe.phases):
        for key in ("epochs", "batch_size", "gradient_accumulation_steps"):
            value = getattr(phase, key)
            if value is not None and value < 1:
                problems.append(f"phases[{i}].{key}: must be at least 1, got {value}")
        if phase.lr is not None and phase.lr <= 0:
            problems.append(f"phases[{i}].lr: must be positive, got {phase.lr}")
    if recipe.phases and recipe.train.batch_size == "auto":
        problems.append("train.batch_size: auto cannot be combined with phases; give each phase a batch_size")
    if recipe.train.batch_size == "auto" and recipe.train.effective_batch is None:
        problems.append("train.batch_size: auto needs train.effective_batch (images per optimizer step)")
    if not 0.0 < recipe.guard.lr_factor <= 1.0:
        problems.append(f"guard.lr_factor: must be in (0, 1], got {recipe.guard.lr_factor}")
    if recipe.guard.max_rollbacks < 0:
        problems.append(f"guard.max_rollbacks: must be 0 or more, got {recipe.guard.max_rollbacks}")
    if recipe.data.repeat_threshold <= 0:
        problems.append(f"data.repeat_threshold: must be positive, got {recipe.data.repeat_threshold}")
    if recipe.optim.lr <= 0:
        problems.append(f"optim.lr: must be positive, got {recipe.optim.lr}")
    if recipe.train.clip_max_norm is not None and recipe.train.clip_max_norm <= 0:
        problems.append(f"train.clip_max_norm: must be positive or null, got {recipe.train.clip_max_norm}")
    if recipe.plots.images < 0:
        problems.append(f"plots.images: must be 0 or more, got {recipe.plots.images}")
    if not 0.0 <= recipe.plots.score_threshold <= 1.0:
        problems.append(f"plots.score_threshold: must be in [0, 1], got {recipe.plots.score_threshold}")
    from hftrain.coco_eval import STAT_NAMES

    best = recipe.checkpoint.best_metric
    voc_names = ("voc07_map", "voc_map")
    if not (best in STAT_NAMES or best.startswith("ap_") or (recipe.eval.voc and (best in voc_names or best.startswith("voc")))):
        hint = " (VOC metrics need eval.voc: true)" if best.startswith("voc") else ""
        problems.append(f"checkpoint.best_metric: {best!r} is not an evaluation metric{hint}; "
                        f"choose one of {list(STAT_NAMES)}" + (f" or {list(voc_names)}" if recipe.eval.voc else "")
                        + " or ap_<class name>")
    every = recipe.checkpoint.every_steps
    if every is not None and (every < 1 or every % recipe.log.interval):
        problems.append(f"checkpoint.every_steps: must be a positive multiple of log.interval "
                        f"({recipe.log.interval}) so a resumed run logs the same windows, got {every}")
    if recipe.data.num_workers < 0:
        problems.append(f"data.num_workers: must be 0 or more, got {recipe.data.num_workers}")
    if not 0.0 <= recipe.data.hflip <= 1.0:
        problems.append(f"data.hflip: must be a probability in [0, 1], got {recipe.data.hflip}")
    augment = recipe.data.augment
    for key in ("mosaic", "mixup", "scale_jitter", "min_visible"):
        if not 0.0 <= getattr(augment, key) <= 1.0:
            problems.append(f"data.augment.{key}: must be in [0, 1], got {getattr(augment, key)}")
    if len(augment.scale_range) != 2 or not 0.0 < augment.scale_range[0] <= augment.scale_range[1]:
        problems.append(f"data.augment.scale_range: must be [low, high] with 0 < low <= high, got {augment.scale_range}")
    if augment.close_mosaic_epoch is not None and augment.close_mosaic_epoch < 1:
        problems.append(f"data.augment.close_mosaic_epoch: must be an epoch number (from 1) or null, "
                        f"got {augment.close_mosaic_epoch}")
    if augment.min_box_size < 0:
        problems.append(f"data.augment.min_box_size: must be 0 or more, got {augment.min_box_size}")
    if recipe.data.cache_margin_gb < 0:
        problems.append(f"data.cache_margin_gb: must be 0 or more, got {recipe.data.cache_margin_gb}")
    if not 0.0 < recipe.ema.decay < 1.0:
        problems.append(f"ema.decay: must be in (0, 1), got {recipe.ema.decay}")
    if recipe.ema.warmup_updates < 1:
        problems.append(f"ema.warmup_updates: must be at least 1, got {recipe.ema.warmup_updates}")
    cuda = recipe.cuda
    if cuda.memory_fraction is not None and not 0.0 < cuda.memory_fraction <= 1.0:
        problems.append(f"cuda.memory_fraction: must be in (0, 1] or null, got {cuda.memory_fraction}")
    if cuda.empty_cache_every is not None and cuda.empty_cache_every < 1:
        problems.append(f"cuda.empty_cache_every: must be at least 1 or null, got {cuda.empty_cache_every}")
    if cuda.alloc_conf is not None:
        from hftrain.cuda_memory import check_alloc_conf

        problems.extend(check_alloc_conf(cuda.alloc_conf))
    from hftrain.models.registry import MODELS  # the registry is the schema of model names

    if recipe.model.name not in MODELS:
        near = difflib.get_close_matches(recipe.model.name, list(MODELS), n=1)
        hint = f" (did you mean {near[0]!r}?)" if near else ""
        problems.append(f"model.name: unknown model {recipe.model.name!r}{hint}; known: {sorted(MODELS)}")


def missing_paths(recipe: Recipe) -> list[str]:
    """Data paths named by the recipe that do not exist (generated data is exempt)."""
    if recipe.data.synthetic is not None:
        return []
    problems = []
    for split_name in ("train", "val"):
        split: SplitConfig = getattr(recipe.data, split_name)
        for attr in ("images", "labels"):
            value = getattr(split, attr)
            if value is not None and not Path(value).exists():
                problems.append(f"data.{split_name}.{attr}: path {value} does not exist")
        if split.images is None:
            problems.append(f"data.{split_name}.images: not set")
    if recipe.model.pretrained and _looks_local(recipe.model.pretrained) and not Path(recipe.model.pretrained).exists():
        problems.append(f"model.pretrained: local path {recipe.model.pretrained} does not exist")
    return problems


def _looks_local(name: str) -> bool:
    return name.startswith((".", "/", "~")) or name.count("/") > 1


# ---------------------------------------------------------------------------- saving


def to_dict(recipe: Recipe) -> dict:
    return dataclasses.asdict(recipe)


def save_recipe(recipe: Recipe, path: str | Path) -> None:
    """Write the fully resolved recipe: repeating a run needs this file alone."""
    Path(path).write_text(yaml.safe_dump(to_dict(recipe), sort_keys=False))
