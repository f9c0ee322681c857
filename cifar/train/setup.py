"""What a run trains and what it feeds it, decided once on the driver: the model's spec
(architecture, classes, image size, normalisation), the weights it starts from, and the
preprocessing record that ``config.json`` and every checkpoint's ``meta.json`` carry."""

from __future__ import annotations

import logging
from typing import Any

from cifar.data.dataset import ImageData
from cifar.data.sources import Loading
from cifar.data.streamed import STATS_SAMPLE, FileSplits
from cifar.data.transforms import augmentation
from cifar.models.loading import Pretrained, load_pretrained
from cifar.models.registry import ModelSpec
from cifar.train.config import TrainConfig

progress = logging.getLogger("cifar.progress")

RESIZE = {
    "files": "decoded, EXIF-rotated, converted to RGB and resized to the square size with PIL "
    "bilinear (the aspect ratio is not kept), as prediction does",
    "arrays": "CIFAR-format 32x32 arrays are resized on the device (bilinear, antialiased)",
}


def model_setup(
    cfg: TrainConfig, data: ImageData | FileSplits, loading: Loading
) -> tuple[ModelSpec, Pretrained | None, dict[str, Any]]:
    """(spec, the ``--weights`` to start from or None, the preprocessing record). A resumed run
    keeps the normalisation it started with (its checkpoint holds the weights)."""
    size = cfg.size
    base = ModelSpec.of(cfg.arch, data.classes, input_size=size)
    pretrained = load_pretrained(cfg.weights, base) if cfg.weights and not cfg.resume else None
    if pretrained is not None:
        progress.info(pretrained.message)
    saved = cfg.preprocess if cfg.resume else None
    if saved is not None:
        norm = saved.get("normalize")
    elif not cfg.normalize:
        norm = None
    elif pretrained is not None:
        norm = pretrained_norm(cfg, pretrained)
    else:
        mean, std = data.channel_stats()
        sample = f"a sample of {STATS_SAMPLE} " if isinstance(data, FileSplits) else "the "
        norm = {"mean": mean, "std": std, "from": f"{sample}training images"}
    mean, std = (norm["mean"], norm["std"]) if norm else (None, None)
    spec = ModelSpec.of(cfg.arch, data.classes, mean, std, size)
    arrays = isinstance(data, ImageData) and data.kind != "folder"  # CIFAR-format: 32x32
    record = {
        "image_size": size,
        "resize": RESIZE["arrays" if arrays else "files"],
        "normalize": norm,
        "augmentation": augmentation(size) if cfg.augment else "none",
        "data_loading": loading.how,
        "data_loading_why": loading.why,
        "weights": pretrained.describe() if pretrained else (saved or {}).get("weights"),
        "freeze_backbone": cfg.freeze_backbone,
        "backbone_lr": cfg.backbone_lr,
    }
    return spec, pretrained, record


def pretrained_norm(cfg: TrainConfig, pretrained: Pretrained) -> dict[str, Any] | None:
    """The normalisation the ``--weights`` were trained with: ImageNet's for a torchvision
    state_dict file, an earlier run's own (None: that run had none)."""
    if pretrained.mean is None or pretrained.std is None:
        return None
    return {
        "mean": list(pretrained.mean),
        "std": list(pretrained.std),
        "from": "the --weights' run" if pretrained.from_run else "ImageNet (torchvision's weights)",
    }
