"""The recipe schema: typed dataclasses, one per section, each field with its type, default and
docstring. YAML only supplies values (:mod:`hftrain.recipe.load`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal


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
    """Image directory (COCO, VOC folder, FRED root, VOCdevkit), a YOLO dataset's data.yaml, or a converted
    dataset directory."""
    labels: str | None = None
    """Annotation file (COCO JSON, BDD100K JSON), or VOC's folder of XML files (LabelImg, CVAT, Roboflow:
    then ``images`` is the image folder; without it ``images`` is a VOCdevkit)."""
    sets: list[str] = field(default_factory=list)
    """Format-specific split names: VOCdevkit ``2007/trainval``; for a VOC folder (``labels`` set), files
    listing the image ids (XML stems) of this split, one per line; FRED ``train`` or ``test`` (a folder
    under the root) or a split file (``challenging/train``, or a ``.txt`` path); the data.yaml sets
    of a YOLO dataset (``[train]``, ``[val]``; required for yolo)."""
    subset: int | None = None
    """Use only this many images (a seeded random subset)."""
    from_train: float | None = None
    """data.val only: hold this fraction (in (0, 1)) of the training split's images out as the validation
    split, for datasets without one; ``images``/``labels``/``sets`` stay unset. Chosen per image from its
    path and ``data.seed`` (``hftrain.data.holdout``): the same in every run and process, before the
    blacklist; the held-out images are never trained on. null: the validation split is read as given."""


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
    """Training augmentation beyond the flip (``hftrain.data.augment``, ``photometric``, ``geometric``,
    ``multiscale``), on uint8 tensors. Every random choice comes from the sample's (train.seed, epoch,
    index) generator, so a sample is the same in any worker or process and after a resume. Order: mosaic,
    mixup, photometric distort, zoom-out, IoU crop, random resize / size crop, affine (one resample for
    all the geometric ones, to the batch's multi-scale size when there is one), HSV, scale jitter, then
    ``data.hflip``. Validation is never augmented.

    A field left null takes its value from ``preset`` (:data:`hftrain.recipe.presets.AUGMENT_PRESETS`); a value in the recipe
    wins over the preset's."""

    preset: Literal["none", "rtdetr", "detr", "yolo"] = "none"
    """Which official pipeline the null fields below follow. none: nothing beyond ``data.hflip`` (and what
    the recipe sets), hftrain's behaviour before presets; rtdetr: RT-DETR/RT-DETRv2's (photometric distort
    0.5, zoom-out 0.5, IoU crop 0.8, multi-scale 480-800 per batch); detr: DETR/Deformable DETR's
    ``make_coco_transforms`` (random resize 480-800, or with probability 0.5 resize 400/500/600 + size crop
    384-600 + random resize); yolo: ultralytics' (mosaic 1.0, HSV 0.015/0.7/0.4, affine translate 0.1
    scale 0.5, mixup 0). The multi-scale and resize lists are the official ones at RT-DETR's 640 and
    DETR's 800, scaled by data.min_size / 640 (rtdetr) or / 800 (detr) and rounded to multiples of 32."""
    mosaic: float | None = None
    """Probability that a training sample is a mosaic: this image and three drawn at random, cut around a
    random centre (uniform in the middle half of each axis) onto one canvas of this image's resized size
    (``data.resize: square``: min_size x min_size; shortest_edge: this image's min_size/max_size size, so
    mosaics keep the size distribution of plain samples). Each image keeps its resized scale; gray (114)
    where none reaches. Boxes are clipped to the visible part of their image (see ``min_box_size``).
    null: the preset's (yolo 1.0, others 0)."""
    mixup: float | None = None
    """Probability that a sample is blended with another one built the same way (itself a mosaic with
    probability ``mosaic``): pixels r * this + (1 - r) * other, r ~ Beta(32, 32) as in ultralytics, the
    boxes of both kept. The other is resized to this sample's size when they differ. null: the preset's (0:
    ultralytics' default)."""
    scale_jitter: float = 0.0
    """Probability that a sample (after everything but the flip) is rescaled by a factor drawn uniformly
    from ``scale_range``, boxes with it; the collate pads each batch to its largest image."""
    scale_range: list[float] = field(default_factory=lambda: [0.75, 1.25])
    """[low, high] of the scale-jitter factor. Above 1, images (and memory) grow past data.min_size/max_size."""
    close_mosaic_epoch: int | None = None
    """The first epoch with mosaic and mixup off; they stay off to the end. An absolute epoch number as the
    loop counts and logs them (from 1, across phases), so it does not depend on knowing the run's length:
    ultralytics' ``close_mosaic: 10`` (off for the last 10 epochs) in a 150-epoch run is 141. null: never.
    The other operations go on (as in ultralytics); ``stop_epoch`` stops them all."""
    stop_epoch: int | None = None
    """The first epoch with every operation of this section off (mosaic, mixup, photometric, zoom-out, IoU
    crop, random resize and size crop, affine, HSV, scale jitter, multi-scale): the samples are the resized
    images, flipped with ``data.hflip``, to the end. RT-DETR's ``stop_epoch`` (0-based there: its 71 of 72
    epochs is 72 here). An absolute epoch number like close_mosaic_epoch; null: never."""
    photometric: float | None = None
    """RT-DETR's RandomPhotometricDistort (torchvision v2's): each of brightness (x0.875-1.125), contrast
    (0.5-1.5), saturation (0.5-1.5), hue (+-0.05 turn) and a channel permutation is applied with this
    probability, contrast before or after saturation and hue at random. Composed into one 3x3 colour matrix
    (hue: a rotation about the gray axis in YIQ) applied once and clamped once. null: the preset's (rtdetr 0.5)."""
    zoom_out: float | None = None
    """Probability of torchvision's RandomZoomOut: the image placed at a random spot of a canvas
    ``zoom_out_range`` times its sides, filled with 0; boxes kept. null: the preset's (rtdetr 0.5)."""
    zoom_out_range: list[float] = field(default_factory=lambda: [1.0, 4.0])
    """[low, high] of the zoom-out canvas side factor (torchvision's side_range)."""
    iou_crop: float | None = None
    """Probability of torchvision v2's RandomIoUCrop (min_scale 0.3, aspect 0.5-2, minimum IoU drawn from
    0, 0.1, 0.3, 0.5, 0.7, 0.9 or leave as is, 40 trials; boxes whose centre falls outside are dropped,
    the others clipped, then those under 1 pixel). null: the preset's (rtdetr 0.8)."""
    random_resize: list[int] | None = None
    """DETR's RandomResize: each sample's shorter side drawn from this list (longer side at most
    data.max_size; data.resize: square gives side x side). Empty: off. null: the preset's (detr 480, 512,
    ..., 800)."""
    size_crop: float | None = None
    """DETR's RandomSelect: with this probability, resize the shorter side to one of ``size_crop_resize``,
    crop a random region of ``size_crop_range`` sides (RandomSizeCrop), then the random resize. null: the
    preset's (detr 0.5)."""
    size_crop_resize: list[int] | None = None
    """Shorter sides of the resize before the size crop. null: the preset's (detr 400, 500, 600)."""
    size_crop_range: list[int] | None = None
    """[min, max] side of DETR's RandomSizeCrop. null: the preset's (detr [384, 600])."""
    hsv: float | None = None
    """Probability of ultralytics' HSV jitter: hue, saturation and value multiplied by 1 + U(-g, g) with
    the ``hsv_gains`` g (hue modulo the circle, the others clipped). null: the preset's (yolo 1.0)."""
    hsv_gains: list[float] = field(default_factory=lambda: [0.015, 0.7, 0.4])
    """[h, s, v] gains (ultralytics' hsv_h, hsv_s, hsv_v)."""
    affine: float | None = None
    """Probability of ultralytics' random_perspective without rotation, shear or perspective: scale by
    U(1 - affine_scale, 1 + affine_scale) about the centre, translate by U(-translate, translate) of each
    side, same output size, gray (114) where the image does not reach. Boxes are clipped and kept by
    ultralytics' box_candidates (over 2 pixels each side, over 10% of their scaled area, aspect under 100).
    null: the preset's (yolo 1.0)."""
    translate: float = 0.1
    """Affine translation, a fraction of each side (ultralytics' translate)."""
    affine_scale: float = 0.5
    """Affine scale range (ultralytics' scale)."""
    multiscale: list[int] | None = None
    """RT-DETR's multi-scale training: each batch's images are made this many pixels (square resize: side x
    side; shortest_edge: the shorter side, longer at most data.max_size) with a side drawn per batch from
    (train.seed, epoch, step): the same on every process for a given step and after a resume. The resize
    is the sample's one resample (with its zoom-out and crop), not a second pass in the collate. Empty:
    off. null: the preset's (rtdetr 480, 512, ..., 800 with 640 thrice)."""
    min_box_size: float = 2.0
    """Mosaic: a box cut by the canvas edge or the centre lines is dropped when its visible part is narrower
    or lower than this many pixels..."""
    min_visible: float = 0.1
    """...or shows less than this fraction of the box's area. Dropped boxes are counted, never silent
    (``boxes_dropped`` in the train records of metrics.jsonl); so are the boxes that the crops, the
    zoom-out and the affine drop."""


@dataclass
class DataConfig:
    format: str = "coco"
    """Source format: coco | voc | bdd100k | fred | yolo (ultralytics data.yaml) | hf (a folder from
    ``hftrain convert``, or any dataset in the Hub detection schema: a save_to_disk folder, an
    imagefolder with metadata.jsonl, a Hub id; ``sets: [NAME]`` picks its split, by default train /
    validation)."""
    train: SplitConfig = field(default_factory=SplitConfig)
    """Training split."""
    val: SplitConfig = field(default_factory=SplitConfig)
    """Validation split."""
    test: SplitConfig = field(default_factory=SplitConfig)
    """A further split, read only by ``hftrain eval RUN_DIR --split test`` (never during training); unset
    (no ``images``): the run has none. Described like train and val, in the same format and classes."""
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
    """Training augmentation: a preset (rtdetr | detr | yolo | none, the default: only the flip) and its
    individual operations and probabilities."""
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
    class_names: list[str] = field(default_factory=list)
    """VOC (both layouts): the classes, in this order; an object of another class is an error naming its
    file (unless ``category_map`` renames or drops it). Empty: a VOC folder uses the names found in its
    XML files sorted by name, a VOCdevkit the 20 PASCAL classes. The other formats name their classes in
    their label files (COCO categories, BDD100K's list, FRED's drone classes, a converted dataset's
    ClassLabel), so it does not apply to them."""
    max_missing: float = 0.0
    """Fraction of missing image files tolerated before loading fails."""
    max_bad_fraction: float = 0.01
    """Fraction of images that may fail to decode (or whose decoded size is not their annotated
    size, e.g. turned by EXIF orientation) during training before the run stops."""
    blacklist: str | None = None
    """Blacklist JSON from ``hftrain scan`` (or ``auto``) whose images are left out. auto: every image
    is decoded once, with ``num_workers`` processes, by the main process of each machine (the others
    wait and read its result), and the result is cached under ``cache_dir`` (or ~/.cache/hftrain)."""
    cache_dir: str | None = None
    """Where converted datasets (and the ``auto`` blacklist) are cached; null converts every run."""
    modality: Literal["rgb", "event"] = "rgb"
    """FRED: which stream to read."""
    drone_classes: Literal["single", "models"] = "single"
    """FRED: one ``drone`` class, or the five drone models where the labels name them."""
    fred_boxes: Literal["extended", "rgb"] = "extended"
    """FRED: which box file of each sequence labels the frames: extended reads ``coordinates.txt``
    (boxes in the padded coordinate space both streams share, as the FRED README recommends), rgb
    reads ``coordinates_rgb.txt`` (the boxes without the padding)."""
    read_image_sizes: bool = False
    """BDD100K: read each image's size instead of assuming 1280 x 720."""
    seed: int = 0
    """Seed for subsets and for the images ``data.val.from_train`` holds out."""
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
    fused: bool | Literal["auto"] = "auto"
    """The fused (single-kernel) implementation of AdamW/Adam: auto uses it on CUDA devices and the
    default (for-each) one elsewhere; true forces it (CPU has one too), false never."""


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
class EarlyStopConfig:
    """``train.early_stop``: end the run when ``checkpoint.best_metric`` stops improving (off by default)."""

    patience: int | None = None
    """Evaluations in a row without improvement that end the run (counted in evaluations, not epochs:
    with eval.interval 5, patience 3 is 15 epochs); null: never stop early. ``best/`` is kept and
    ``model/`` is written as at any other end; the count is saved in each checkpoint, so a resumed run
    stops at the same evaluation as an uninterrupted one."""
    min_delta: float = 0.0
    """An evaluation improves when ``checkpoint.best_metric`` beats the value of the last improvement by
    more than this (in the direction of ``checkpoint.best_mode``); smaller gains add up until they do."""


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
    compile: bool = False
    """Compile the model with ``torch.compile`` (Accelerate's ``dynamo_backend: inductor``). Off by
    default: untested on GPU here, and images of varying sizes (resize: shortest_edge) recompile;
    see the README for the families that compiled on CPU."""
    early_stop: EarlyStopConfig = field(default_factory=EarlyStopConfig)
    """Early stopping on ``checkpoint.best_metric`` (``patience`` evaluations without improvement)."""


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
    tf32: bool = True
    """On CUDA devices of compute capability 8.0 and newer (Ampere, Hopper...): fp32 matrix products and
    convolutions use TF32 tensor cores (``torch.backends.cuda.matmul.allow_tf32`` and
    ``torch.backends.cudnn.allow_tf32``); about 10 mantissa bits in the products, fp32 accumulation.
    false keeps full fp32 products. Nothing changes on a CPU."""


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
    confusion_threshold: float | None = None
    """Confidence threshold of ``plots/confusion_matrix*.png``; null uses the recommended threshold (the confidence
    maximising the mean F1 over classes at IoU 0.5, saved as ``hftrain_score_threshold`` in the model's config)."""


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
    """Also log to TensorBoard when tensorboard is installed (the switch from before ``trackers``, kept):
    true adds tensorboard to ``trackers`` if the package imports, and says so in the log if it does
    not; false leaves TensorBoard out unless ``trackers`` names it."""
    trackers: list[str] = field(default_factory=list)
    """Experiment trackers, through Accelerate's ``log_with``: any of tensorboard, wandb, mlflow,
    comet_ml, aim, clearml, dvclive, swanlab, trackio. Each gets the same scalars as metrics.jsonl,
    the resolved recipe as hyper-parameters (dotted keys) and, where it takes them, the plots. A
    named tracker whose package is missing is a recipe error (with the pip command). mlflow: a file
    store in RUN_DIR/mlruns unless MLFLOW_TRACKING_URI is set."""
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
    train_batch: bool = True
    """With ``enabled``: draw ``plots/train_batch.png`` at the start of training (PIL only, in the background):
    the first 16 training images of the epoch the run starts in, exactly as the model receives them (augmented,
    padded, uint8 before normalisation) with the boxes the loss gets and their class names, taken from a
    loader of its own with the run's seed and epoch (the run's order is untouched).
    ``hftrain check-sampler RECIPE --pictures`` draws it without training."""


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
    """CUDA memory settings (``hftrain.health.cuda_memory``); all do nothing without a CUDA device. The CPU thread
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
    cudnn_benchmark: bool | Literal["auto"] = "auto"
    """``torch.backends.cudnn.benchmark``: cuDNN times its convolution algorithms for each new input shape
    and keeps the fastest. auto: on when every batch has the same shape (data.resize: square without
    scale jitter or multi-scale augmentation), off otherwise (each new shape would be timed again)."""
    channels_last: bool = False
    """Store the model's 4-D weights (and feed images) in channels-last memory order, which tensor-core
    convolutions prefer. Off by default: its gain for these detectors has not been measured (no GPU here)."""


@dataclass
class HubConfig:
    """Publishing ``model/`` (and ``best/``) on the Hugging Face Hub with ``huggingface_hub``
    (``hftrain.report.hub_push``); ``hftrain push RUN_DIR REPO_ID`` does the same after a run. Only the main
    process uploads; a failed upload (no token, no network, no write access) is logged and the run goes on,
    the local folders untouched."""

    push: bool = False
    """Upload ``model/`` (weights, image processor, model card README.md, plots/) to ``repo_id`` at the end
    of training."""
    repo_id: str | None = None
    """The Hub model repository, ``user-or-org/name``; created when missing. Required by push and push_best."""
    private: bool = False
    """Create the repository as private (an existing repository keeps its visibility)."""
    revision: str | None = None
    """Branch to upload to (created from the default branch when missing); null: the default branch (main)."""
    push_best: bool = False
    """Also upload ``best/`` each time it improves, so the Hub holds the best weights while training goes
    on; the end-of-training upload of ``model/`` (push: true) then replaces them."""
    license: str | None = None
    """License written in the model card's metadata (a Hub license id such as apache-2.0); null leaves it out
    (the license of pretrained weights is theirs to check)."""


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
    hub: HubConfig = field(default_factory=HubConfig)
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
