"""Models saved as a training run saves them, for tests and benchmarks."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from cifar.data.cifar10 import CIFAR10_CLASSES
from cifar.models.checkpoint import model_meta, save_checkpoint
from cifar.models.registry import DEFAULT_ARCH, ModelSpec, build_model


def save_untrained(
    directory: str | os.PathLike,
    classes: Sequence[str] = CIFAR10_CLASSES,
    arch: str = DEFAULT_ARCH,
    **meta,
) -> Path:
    """A freshly initialised model of ``arch`` for ``classes`` saved as a checkpoint folder
    (``model.pt`` + ``meta.json``, what ``--model`` takes); ``meta`` adds keys to meta.json."""
    spec = ModelSpec.of(arch, classes)
    return save_checkpoint(directory, build_model(spec), model_meta(spec, **meta))
