"""What a run trains and what it feeds it, decided once on the driver: the model's spec
(architecture, classes, image size, normalisation), the weights it starts from, and the
preprocessing record that ``config.json`` and every checkpoint's ``meta.json`` carry."""

from __future__ import annotations

import logging
from typing import Any

from cifar.data.augment import in_loader
from cifar.data.dataset import Loading, TrainingData
from cifar.data.transforms import augmentation
from cifar.models import vision
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
    cfg: TrainConfig, data: TrainingData, loading: Loading
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
        norm = {"mean": mean, "std": std, "from": data.stats_from}
    mean, std = (norm["mean"], norm["std"]) if norm else (None, None)
    # layers the --weights appended to the head (the tutorial's classifier.add_module): kept
    appended = pretrained.appended if pretrained is not None else saved_appended(saved)
    spec = ModelSpec.of(cfg.arch, data.classes, mean, std, size, appended)
    augmented = augmentation(size, loads_augmented(cfg, loading)) if cfg.augment else "none"
    record = {
        "image_size": size,
        "resize": RESIZE[data.resize],
        "normalize": norm,
        "augmentation": augmented,
        "data_loading": loading.how,
        "data_loading_why": loading.why,
        "weights": pretrained.describe() if pretrained else (saved or {}).get("weights"),
        "appended": [a.to_meta() for a in appended],
        "freeze_backbone": cfg.freeze_backbone,
        "backbone_lr": cfg.backbone_lr,
    }
    return spec, pretrained, record


def loads_augmented(cfg: TrainConfig, loading: Loading) -> bool:
    """Whether the run's training photos are augmented where they are decoded (streamed: the
    loader processes; ray: Ray Data's decode tasks)."""
    return loading.how in ("stream", "ray") and in_loader(cfg.augment, cfg.size)


def saved_appended(saved: dict[str, Any] | None) -> tuple[vision.Appended, ...]:
    """The appended layers a resumed run started with (its config.json's record)."""
    return tuple(vision.Appended.from_meta(d) for d in (saved or {}).get("appended") or ())


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
