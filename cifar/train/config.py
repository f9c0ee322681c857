"""The training job's config: every setting on one line, the recipes, and what may change on
``--resume``. The command line (``python -m jobs.train --help``) is generated from it."""

from __future__ import annotations

import dataclasses
import importlib.util
import math
from dataclasses import dataclass
from functools import partial
from typing import Any

from cifar.config import STALL_TIMEOUT_S, Config, ConfigError, fields_where, make_config, opt
from cifar.data.dataset import DataRequest
from cifar.data.loading import LOADINGS
from cifar.device import PRECISIONS, parse_precision
from cifar.models.registry import DEFAULT_ARCH, MIN_SIZE, get_arch, is_torchvision

SCHEDULES = ("onecycle", "cosine", "constant")
PLACEMENTS = ("PACK", "SPREAD", "STRICT_SPREAD")
RECIPES = ("default", "tutorial")
# `--recipe tutorial`: the tutorial's training exactly (SGD 0.01, batch 64, 10 epochs, raw
# ToTensor inputs). Flags typed on the command line still win over the preset.
RECIPE_PRESETS: dict[str, dict[str, Any]] = {
    "default": {},
    "tutorial": {
        "epochs": 10,
        "batch_size": 64,
        "lr": 0.01,
        "momentum": 0.0,
        "nesterov": False,
        "weight_decay": 0.0,
        "schedule": "constant",
        "label_smoothing": 0.0,
        "grad_clip": 0.0,
        "augment": False,
        "normalize": False,
        "relu": False,
    },
}
SMOKE_PRESET = {"epochs": 1, "num_workers": 2, "use_gpu": False, "batch_size": 128}
SMOKE_DATA = [1024, 512, 0]  # generated train / test images, seed


# One helper per flag group: --help lists the flags under these headings.
data_opt, model_opt, recipe_opt, scale_opt, run_opt, speed_opt = (
    partial(opt, group=g) for g in ("data", "model", "recipe", "scale", "run", "speed")
)
# --weights: the backbone learns at the head's lr. A tenth of it (the usual advice) adapted
# hardly at all to a new domain in a short run: 0.25 vs 0.46 (benchmarks/finetune.py)
BACKBONE_LR = 1.0


def parse_workers(text: str) -> int | list[int] | str:
    """``--num-workers``: ``N`` (a fixed size) or ``MIN-MAX`` (elastic; ``N-N`` is N). What does
    not parse is kept as typed, for :meth:`TrainConfig.checks` to refuse with the fix."""
    lo, dash, hi = text.strip().partition("-")
    try:
        lo_n, hi_n = int(lo), int(hi if dash else lo)
    except ValueError:
        return text
    return lo_n if lo_n == hi_n else [lo_n, hi_n]


def workers_text(num_workers: int | list[int] | str) -> str:
    """``num_workers`` as typed: ``4`` or ``2-4``."""
    if isinstance(num_workers, list | tuple):
        return "-".join(map(str, num_workers))
    return str(num_workers)


@dataclass
class TrainConfig(Config):
    # fmt: off
    data_dir: str = data_opt("data", "CIFAR-10 (a folder holding or to hold cifar-10-batches-py), labelled images: DIR/train/<class>/..., DIR/val/<class>/..., or shards: DIR/train/*.tar|*.parquet, DIR/val/... (path or URI)", resumable=True)  # noqa: E501
    download: bool = data_opt(True, "download CIFAR-10 (MD5-checked) if it is not there", resumable=True)  # noqa: E501
    val_fraction: float = data_opt(0.1, "image folders without val/ or test/: evaluate on this share of each class, picked by a hash of the path")  # noqa: E501
    data_loading: str = data_opt("auto", "image folders and shards: 'memory' decodes them once and shares the pixels, 'stream' has every worker decode its shard from the files as it trains (memory stays a few batches), 'ray' has Ray Data decode them on any CPU of the cluster (CPU-only nodes too) and stream them into the workers; auto: memory while the decoded images fit --data-memory-mb, else stream", choices=LOADINGS, resumable=True)  # noqa: E501
    data_memory_mb: float | None = data_opt(None, "the memory budget of --data-loading auto (default: 10%% of the node's memory)", resumable=True, metavar="MB")  # noqa: E501
    image_column: str | None = data_opt(None, "shards in Parquet: the image column (default: the first binary or struct{bytes, path} column)", metavar="NAME")  # noqa: E501
    label_column: str = data_opt("label", "shards in Parquet: the label column (integers, with names from classes.txt or the file's ClassLabel metadata, or names)", metavar="NAME")  # noqa: E501
    loader_workers: int | None = data_opt(None, "streaming: DataLoader processes decoding for each training worker (default: its CPUs)", resumable=True, metavar="N")  # noqa: E501
    arch: str = model_opt(DEFAULT_ARCH, "cifar10_quick (the tutorial's), cifar10_quick_relu, or any torchvision classification model by its builder name: resnet18, resnet50, vgg16, mobilenet_v3_small, efficientnet_b0, convnext_tiny, ... (its last layer replaced for the data's classes)", metavar="NAME")  # noqa: E501
    weights: str | None = model_opt(None, "fine-tune from these weights: a state_dict file or URI for --arch (e.g. torch.save(torchvision.models.resnet18(weights=...).state_dict(), FILE), or a file from torch hub's cache), or an earlier run; its head is replaced. Nothing is downloaded", metavar="FILE|URI|RUN")  # noqa: E501
    freeze_backbone: bool = model_opt(False, "with --weights: train only the new head")
    backbone_lr: float | None = model_opt(None, "learning rate of everything but the head, as a share of --lr (default: 1; 0.1 keeps pretrained features closer)", metavar="SHARE")  # noqa: E501
    image_size: int | None = model_opt(None, "side of the square images the model sees (default: 32 for CIFAR10-quick, 224 for torchvision models); files are resized to it", metavar="PIXELS")  # noqa: E501
    relu: bool = model_opt(False, "CIFAR10-quick with ReLUs (the Caffe original): --arch cifar10_quick_relu")  # noqa: E501
    recipe: str = recipe_opt("default", "preset; 'tutorial' reproduces the tutorial exactly", choices=RECIPES)  # noqa: E501
    epochs: int = recipe_opt(20, "training epochs")
    batch_size: int | None = recipe_opt(None, "GLOBAL batch, split across the workers, the same whatever their number (default: from the data and epochs, about 1,000 optimizer steps per run, 4..256)")  # noqa: E501
    lr: float | None = recipe_opt(None, "peak learning rate (default: scaled with the batch)")
    momentum: float = recipe_opt(0.9, "SGD momentum")
    nesterov: bool = recipe_opt(True, "Nesterov momentum")
    weight_decay: float = recipe_opt(5e-4, "L2 weight decay")
    schedule: str = recipe_opt("onecycle", "learning-rate schedule", choices=SCHEDULES)
    label_smoothing: float = recipe_opt(0.1, "cross-entropy smoothing")
    grad_clip: float = recipe_opt(2.0, "clip the gradient norm (0: off); keeps the ReLU-less model from diverging")  # noqa: E501
    augment: bool = recipe_opt(True, "random crop (4px padding) + horizontal flip")
    normalize: bool = recipe_opt(True, "normalize inputs by the training set's mean/std (fine-tuning: the mean/std the --weights were trained with)")  # noqa: E501
    seed: int = recipe_opt(0, "random seed (offset by rank per worker)")
    num_workers: int | list[int] = scale_opt(1, "Ray Train workers: N, or MIN-MAX for elastic training (starts with what the cluster has room for, grows as nodes join, goes on smaller from the last checkpoint when one is lost)", resumable=True, metavar="N|MIN-MAX", convert=parse_workers)  # noqa: E501, RUF009 (scale_opt is opt)
    resize_interval: float = scale_opt(60.0, "elastic runs: seconds between looks for room for more workers (a resize restarts the workers from the latest checkpoint)", resumable=True, metavar="SECONDS")  # noqa: E501
    use_gpu: bool | None = scale_opt(None, "one GPU per worker (default: if the cluster has GPUs)", resumable=True, flag="--gpu")  # noqa: E501
    cpus_per_worker: int | None = scale_opt(None, "CPUs (and torch threads) per worker (default: CPU runs share the CPUs free when the run starts, elastic CPU runs take a node's CPUs, GPU runs take 2; CPU runs with --data-loading ray take half, leaving the rest to Ray Data's decoding)", resumable=True)  # noqa: E501
    placement: str = scale_opt("PACK", "worker placement (STRICT_SPREAD: one per node)", choices=PLACEMENTS, resumable=True)  # noqa: E501
    storage_path: str = run_opt("~/ray_results", "where runs go (local path or s3://, gs://)", resumable=True)  # noqa: E501
    name: str | None = run_opt(None, "run name (default: time-stamped)", resumable=True)
    resume: bool = run_opt(False, "continue run --name from its latest checkpoint", resumable=True)
    max_failures: int = run_opt(2, "worker failures to recover from", resumable=True)
    keep_checkpoints: int = run_opt(2, "checkpoints kept (best by test accuracy, plus the latest)", resumable=True)  # noqa: E501
    log_every: int = run_opt(50, "train/loss every N steps", resumable=True)
    mlflow_uri: str | None = run_opt(None, "also log the run to this MLflow tracking server, e.g. http://host:5000 (default: $MLFLOW_TRACKING_URI; the mlflow extra)", resumable=True, metavar="URI")  # noqa: E501
    stall_timeout: float = run_opt(STALL_TIMEOUT_S, "end the run, saying what it waited for, after this many seconds without progress (waiting for workers included; 0: wait for ever)", resumable=True)  # noqa: E501
    smoke_test: bool = run_opt(False, "tiny generated set, 1 epoch, 2 CPU workers")
    verbose: bool = run_opt(False, "also Ray Train's own INFO lines (worker group, checkpoints, reports)", resumable=True)  # noqa: E501
    precision: str = speed_opt("auto", "autocast precision (auto: bf16 on GPUs that have it, else fp16; on a CPU the fastest of fp32 and bf16, measured at the start)", choices=PRECISIONS)  # noqa: E501
    channels_last: bool | None = speed_opt(None, "channels_last memory format (default: on)")
    compile: bool = speed_opt(False, "torch.compile the model")
    # set by the program, not flags
    stop_after_epoch: int | None = opt(None, cli=False, resumable=True)  # test hook: fail after it
    synthetic: list[int] | None = opt(None, cli=False)  # generated train/test sizes, seed
    classes: list[str] | None = opt(None, cli=False)  # from the data; checked apart on resume
    preprocess: dict[str, Any] | None = opt(None, cli=False)  # size, normalisation, augmentation, loading, weights: as chosen  # noqa: E501
    # fmt: on

    @property
    def size(self) -> int:
        """The side of the images the model sees: ``--image-size``, else the arch's own."""
        return self.image_size or get_arch(self.arch).input_size

    def data_request(self) -> DataRequest:
        """What this run asks of its data (:mod:`cifar.data.sources`)."""
        return DataRequest(
            self.data_dir,
            self.download,
            self.val_fraction,
            self.size,
            self.data_loading,
            self.data_memory_mb,
            self.synthetic,
            self.image_column,
            self.label_column,
            self.augment,
        )

    @property
    def worker_range(self) -> tuple[int, int]:
        """(fewest, most) workers: equal for a fixed size."""
        n = self.num_workers
        return (n[0], n[1]) if isinstance(n, list | tuple) else (n, n)

    @property
    def elastic(self) -> bool:
        lo, hi = self.worker_range
        return lo < hi

    def checks(self) -> list[tuple[bool, str]]:
        n = self.num_workers
        form = isinstance(n, int) or (
            isinstance(n, list | tuple) and len(n) == 2 and all(isinstance(k, int) for k in n)
        )
        if not form:
            return [(False, f"--num-workers takes N or MIN-MAX, e.g. 4 or 2-4 (got {n!r})")]
        lo, hi = self.worker_range
        typed = workers_text(n)
        return [
            (self.epochs >= 1, f"--epochs must be at least 1 (got {self.epochs})"),
            (lo >= 1, f"--num-workers must be at least 1 (got {typed})"),
            (
                lo <= hi,
                f"--num-workers {typed}: the smaller count comes first (MIN-MAX, e.g. {hi}-{lo})",
            ),
            (self.resize_interval >= 0, "--resize-interval must be >= 0"),
            (
                self.batch_size is None or self.batch_size >= 1,
                f"--batch-size must be at least 1 (got {self.batch_size})",
            ),
            (
                self.batch_size is None or self.batch_size >= hi,
                f"--batch-size {self.batch_size} is the global batch and must be at least "
                f"--num-workers {typed if lo == hi else f'{typed} (its MAX)'}: every worker "
                "takes its share of each batch",
            ),
            (
                self.lr is None or (math.isfinite(self.lr) and self.lr > 0),
                f"--lr must be positive (got {self.lr})",
            ),
            (0 <= self.momentum < 1, f"--momentum must be in [0, 1) (got {self.momentum})"),
            (self.weight_decay >= 0, f"--weight-decay must be >= 0 (got {self.weight_decay})"),
            (
                0 <= self.label_smoothing < 1,
                f"--label-smoothing must be in [0, 1) (got {self.label_smoothing})",
            ),
            (
                self.cpus_per_worker is None or self.cpus_per_worker >= 1,
                f"--cpus-per-worker must be at least 1 (got {self.cpus_per_worker})",
            ),
            (self.max_failures >= -1, "--max-failures must be >= 0 (or -1 for unlimited)"),
            (self.keep_checkpoints >= 1, "--keep-checkpoints must be at least 1"),
            (self.log_every >= 1, "--log-every must be at least 1"),
            (self.stall_timeout >= 0, "--stall-timeout must be >= 0"),
            (self.grad_clip >= 0, f"--grad-clip must be >= 0 (got {self.grad_clip})"),
            (
                0 <= self.val_fraction < 1,
                f"--val-fraction must be in [0, 1) (got {self.val_fraction})",
            ),
            (not (self.resume and not self.name), "--resume needs --name of the run to continue"),
            *self.model_checks(),
            (
                not (self.nesterov and self.momentum == 0),
                "--nesterov needs --momentum > 0 (use --no-nesterov with --momentum 0)",
            ),
        ]

    def model_checks(self) -> list[tuple[bool, str]]:
        try:
            get_arch(self.arch)
        except ConfigError as e:
            return [(False, str(e))]
        return [
            (
                self.image_size is None or self.image_size >= MIN_SIZE,
                f"--image-size must be at least {MIN_SIZE} (got {self.image_size})",
            ),
            (
                not (self.freeze_backbone and not self.weights),
                "--freeze-backbone trains only the head on top of pretrained weights: pass "
                "--weights FILE too (or drop --freeze-backbone to train everything)",
            ),
            (
                self.backbone_lr is None or 0 <= self.backbone_lr <= 10,
                f"--backbone-lr is a share of --lr, 0..10 (got {self.backbone_lr})",
            ),
            (
                self.data_memory_mb is None or self.data_memory_mb > 0,
                f"--data-memory-mb must be positive (got {self.data_memory_mb})",
            ),
            (
                self.loader_workers is None or self.loader_workers >= 0,
                f"--loader-workers must be >= 0 (got {self.loader_workers})",
            ),
            (
                not self.mlflow_uri or importlib.util.find_spec("mlflow") is not None,
                "--mlflow-uri needs mlflow: pip install 'cifar-ray[mlflow]' (or drop the flag)",
            ),
        ]


# The default recipe thinks in optimizer steps, not epochs: a short run on a few hundred images
# needs small batches to learn at all, 50,000 images want large ones. Chosen on evaluation sets
# of several sizes and difficulties (benchmarks.recipe, docs/results.md): global batch ~ images
# x epochs / 1024, a power of two in 4..256; peak lr grows with the cube root of the batch.
RECIPE_STEPS = 1024  # optimizer steps a default run aims at
BATCH_RANGE = (4, 256)
VISION_MIN_BATCH = 32  # BatchNorm archs: a batch of 4 was 3x slower a step, no more accurate
LR_AT_128, LR_MAX = 0.1, 0.1


def default_batch(n_train: int, world: int, epochs: int, least: int = BATCH_RANGE[0]) -> int:
    """The global batch the default recipe picks: a power of two near
    ``n_train * epochs / RECIPE_STEPS`` in ``least..BATCH_RANGE[1]``, a multiple of the worker
    count (of the most workers, for an elastic run: any fewer split it as evenly as they can)."""
    want = max(1.0, n_train * epochs / RECIPE_STEPS)
    batch = min(max(2 ** round(math.log2(want)), least), BATCH_RANGE[1])
    return max(world, batch // world * world)


def default_lr(batch: int) -> float:
    """Peak learning rate for a global batch: ``0.1 * (batch / 128) ** (1/3)``, at most 0.1."""
    return round(min(LR_MAX, LR_AT_128 * (batch / 128) ** (1 / 3)), 4)


def resolve_recipe(cfg: TrainConfig, n_train: int, world: int) -> TrainConfig:
    """``cfg`` with the batch and learning rate the user did not type filled in for this data
    and world size (typed values stay). An elastic run resolves them once, on the driver, for
    its largest size: the global batch and the schedule then stay whatever the size."""
    least = VISION_MIN_BATCH if is_torchvision(cfg.arch) else BATCH_RANGE[0]
    batch = cfg.batch_size or default_batch(n_train, world, cfg.epochs, least)
    lr = cfg.lr if cfg.lr is not None else default_lr(batch)
    backbone = BACKBONE_LR if cfg.backbone_lr is None else cfg.backbone_lr
    return dataclasses.replace(
        cfg, batch_size=batch, lr=lr, backbone_lr=backbone, image_size=cfg.size
    )


# Settings that may change when a run is resumed; everything else must match the saved config.
RESUMABLE_FIELDS = fields_where(TrainConfig, "resumable")


# What a saved config.json (--config) does not carry over: a rerun is a new run.
NOT_RERUN = ("name", "resume", "classes", "stop_after_epoch", "preprocess")


def resolve_config(explicit: dict[str, Any], saved: dict[str, Any] | None = None) -> TrainConfig:
    """Dataclass defaults <- a saved config (``--config``) <- the recipe preset (if typed, or
    without a saved config) <- smoke-test preset <- flags the user typed."""
    saved = {k: v for k, v in (saved or {}).items() if k not in NOT_RERUN}
    if "amp" in saved:  # config.json written before --precision
        saved.setdefault("precision", parse_precision(saved.pop("amp")))
    preset = {}
    if "recipe" in explicit or not saved:
        preset = RECIPE_PRESETS[explicit.get("recipe", saved.get("recipe", "default"))]
    smoking = explicit.get("smoke_test", saved.get("smoke_test"))
    smoke = {**SMOKE_PRESET, "synthetic": SMOKE_DATA} if smoking else {}
    cfg = make_config(TrainConfig, saved, preset, smoke, explicit)
    if cfg.relu and cfg.arch == DEFAULT_ARCH:  # --relu (and config.json before --arch)
        cfg = dataclasses.replace(cfg, arch="cifar10_quick_relu")
    return cfg
