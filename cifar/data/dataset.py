"""A labelled dataset in memory: one ``uint8 [N, 3, H, W]`` tensor per split.

Every source (CIFAR-format files, :mod:`cifar.data.cifar10`; labelled image folders,
:mod:`cifar.data.folders`; generated sets, :mod:`cifar.data.synthetic`) is read into
:class:`ImageData` on the driver, and handed to the workers through Ray's object store.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch


def class_counts(
    classes: list[str], train: torch.Tensor, test: torch.Tensor
) -> dict[str, dict[str, int]]:
    """Images per class in each split, in class-index order (in memory or streamed alike)."""
    out = {}
    for split, labels in (("train", train), ("test", test)):
        counts = torch.bincount(labels, minlength=len(classes)).tolist()
        out[split] = dict(zip(classes, counts, strict=True))
    return out


class DataError(RuntimeError):
    """The dataset is missing, corrupt or unsafe; the message says what and how to fix it."""


@dataclass
class ImageData:
    """A labelled dataset in memory: training split and the split evaluated every epoch."""

    train_images: torch.Tensor  # uint8 [N, 3, 32, 32]
    train_labels: torch.Tensor  # int64 [N]
    test_images: torch.Tensor  # uint8 [M, 3, 32, 32]
    test_labels: torch.Tensor  # int64 [M]
    classes: tuple[str, ...]
    kind: str  # "cifar10" (official files), "synthetic" (cifar.data.synthetic), "custom", "folder"
    root: str
    info: dict[str, Any] = field(default_factory=dict)  # what the reader wants reported

    def channel_stats(self) -> tuple[list[float], list[float]]:
        """Per-channel mean/std of the training images on the [0, 1] scale."""
        return channel_stats(self.train_images)

    def class_counts(self) -> dict[str, dict[str, int]]:
        return class_counts(self.classes, self.train_labels, self.test_labels)

    def tensors(self) -> dict[str, torch.Tensor]:
        """The splits by name, as :func:`cifar.train.engine.build` takes them."""
        return {
            "train_images": self.train_images,
            "train_labels": self.train_labels,
            "test_images": self.test_images,
            "test_labels": self.test_labels,
        }

    def arrays(self) -> dict[str, np.ndarray]:
        """The tensors as numpy arrays, for Ray's object store (zero-copy on a node)."""
        return {k: v.numpy() for k, v in self.tensors().items()}


def channel_stats(x: torch.Tensor) -> tuple[list[float], list[float]]:
    """Per-channel mean/std of uint8 ``[N, 3, H, W]`` images on the [0, 1] scale: exact (from
    a count of each of the 256 values per channel), in slices of at most 64 MiB, so a set of
    large images needs no float copy of itself."""
    counts = torch.zeros(3, 256, dtype=torch.float64)
    rows = max(1, STATS_SLICE_BYTES // max(1, x[0].numel())) if len(x) else 1
    for chunk in x.split(rows):
        for c in range(3):
            counts[c] += torch.bincount(chunk[:, c].reshape(-1), minlength=256).double()
    value = torch.arange(256, dtype=torch.float64) / 255.0
    n = counts.sum(dim=1).clamp_min(1)
    mean = (counts * value).sum(dim=1) / n
    std = ((counts * value * value).sum(dim=1) / n - mean * mean).clamp_min(1e-12).sqrt()
    return [round(float(v), 6) for v in mean], [round(float(v), 6) for v in std]


STATS_SLICE_BYTES = 64 * 2**20


def tensors_from_arrays(arrays: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """Inverse of :meth:`ImageData.arrays`; copies, because arrays from Ray's object store are
    read-only."""
    return {k: torch.from_numpy(np.array(v)) for k, v in arrays.items()}
