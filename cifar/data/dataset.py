"""The training-data seam's two faces, and the in-memory kind of both.

- :class:`TrainingData`: what the driver knows of a loaded dataset (classes, labels, counts,
  normalisation statistics, what to hand the workers). Made by a :class:`Source`
  (:mod:`cifar.data.sources` picks one from what ``--data-dir`` holds).
- :class:`Splits`: what a training worker gets (put once in Ray's object store): the datasets of
  its loaders and how they fetch (:mod:`cifar.data.loaders`).

:class:`ImageData` (one ``uint8 [N, 3, H, W]`` tensor per split) is the in-memory TrainingData;
its Splits are :class:`TensorSplits`. The streamed kind is :mod:`cifar.data.streamed`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch
from torch.utils.data import Dataset


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


@dataclass(frozen=True)
class DataRequest:
    """What a run asks of its data (the training config's data flags, resolved)."""

    data_dir: str
    download: bool = True
    val_fraction: float = 0.1
    size: int = 32  # pixels a side the model sees
    loading: str = "auto"  # --data-loading
    budget_mb: float | None = None  # --data-memory-mb
    synthetic: list[int] | None = None  # a generated set: train / test sizes, seed
    image_column: str | None = None  # shards in Parquet: the image column (default: by its type)
    label_column: str = "label"  # shards in Parquet: the label column
    augment: bool = False  # training augments: streamed photos in the loader processes


@dataclass(frozen=True)
class Loading:
    """How a run's training data reaches the workers, and why."""

    how: str  # "memory" (decoded once, shared), "stream" (each worker decodes its shard), "ray"
    why: str

    def line(self) -> str:
        what = {
            "memory": "held in memory",
            "stream": "streamed from the files by every worker",
            "ray": "decoded by Ray Data on the cluster's CPUs, streamed into the workers",
        }
        return f"[cifar] data loading: {what[self.how]}: {self.why}"


@dataclass(frozen=True)
class Fetch:
    """How a loader fetches: in this process (``workers=0``, an in-memory set) or in
    ``workers`` loader processes started by ``context`` (a streamed set), and whether batches
    are pinned for a GPU."""

    workers: int = 0
    context: str | None = None
    pin_memory: bool = False

    def kwargs(self) -> dict[str, Any]:
        kw: dict[str, Any] = {"collate_fn": _keep_batch, "pin_memory": self.pin_memory}
        if self.workers:
            kw.update(
                num_workers=self.workers,
                multiprocessing_context=self.context,
                persistent_workers=True,  # started once per run, not once per epoch
                prefetch_factor=2,
            )
        return kw


def _keep_batch(batch):
    """collate_fn: ``__getitems__`` already returns a stacked batch."""
    return batch


class Splits(Protocol):
    """What every training worker reads its shard from."""

    n_train: int

    def datasets(self, device: torch.device) -> tuple[Dataset, Dataset]:
        """(training, evaluation) datasets; a batch is one ``__getitems__`` call returning
        ``(uint8 [B, 3, S, S], int64 [B])`` plus, for data read as it trains, the
        ``[(item, reason), ...]`` it had to skip."""
        ...

    def fetch(self, loader_workers: int, device: torch.device) -> Fetch: ...


class TrainingData(Protocol):
    """What the driver knows of a loaded dataset, whatever its kind."""

    classes: tuple[str, ...]
    kind: str  # "cifar10", "synthetic", "custom" (CIFAR-format files), "folder", ...
    root: str
    info: dict[str, Any]  # what the reader wants reported (eval split, skips, decode stats)
    train_labels: torch.Tensor
    test_labels: torch.Tensor
    stats_from: str  # what the normalisation statistics are computed over
    resize: str  # how images reach the model's size: "files" (decoded at it) or "arrays"

    def class_counts(self) -> dict[str, dict[str, int]]: ...

    def channel_stats(self) -> tuple[list[float], list[float]]: ...

    def for_workers(self) -> Splits:
        """What is put in the object store once and read by every worker."""
        ...

    def facts(self) -> TrainingData:
        """This data less its pixels: what a summary needs, cheap to hand around."""
        ...


class Source(Protocol):
    """One kind of training data (a row of :data:`cifar.data.sources.SOURCES`)."""

    def describe(self) -> tuple[str, int | None]:
        """For ``--dry-run``, reading nothing heavy: (one line, training items or None)."""
        ...

    def load(self) -> tuple[TrainingData, Loading]:
        """The data, in memory or ready to stream, and why it is loaded so."""
        ...


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
    resize: str = "arrays"  # CIFAR-format arrays are resized on the device; "files": decoded at it
    stats_from: str = "the training images"

    def channel_stats(self) -> tuple[list[float], list[float]]:
        """Per-channel mean/std of the training images on the [0, 1] scale."""
        return channel_stats(self.train_images)

    def class_counts(self) -> dict[str, dict[str, int]]:
        return class_counts(self.classes, self.train_labels, self.test_labels)

    def tensors(self) -> dict[str, torch.Tensor]:
        """The splits by name."""
        return {
            "train_images": self.train_images,
            "train_labels": self.train_labels,
            "test_images": self.test_images,
            "test_labels": self.test_labels,
        }

    def splits(self) -> TensorSplits:
        """The splits as a worker reads them, in this process."""
        return TensorSplits(self.tensors())

    def for_workers(self) -> TensorSplits:
        """numpy arrays for Ray's object store (zero-copy on a node)."""
        return TensorSplits({k: v.numpy() for k, v in self.tensors().items()})

    def facts(self) -> ImageData:
        return dataclasses.replace(
            self, train_images=self.train_images[:0], test_images=self.test_images[:0]
        )


class TensorImageDataset(Dataset):
    """Images held as one uint8 tensor; a whole batch is one index operation.

    ``images`` may live on the GPU: then batches come out on the GPU too.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        assert images.shape[0] == labels.shape[0]
        self.images = images
        self.labels = labels

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images[i], self.labels[i]

    def __getitems__(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.as_tensor(indices, dtype=torch.long, device=self.images.device)
        return self.images.index_select(0, idx), self.labels.index_select(0, idx)


@dataclass
class TensorSplits:
    """In-memory :class:`Splits`: ``train_images`` / ``train_labels`` / ``test_images`` /
    ``test_labels`` as tensors, or as numpy arrays read from Ray's object store."""

    parts: dict[str, Any]

    @property
    def n_train(self) -> int:
        return len(self.parts["train_labels"])

    def datasets(self, device: torch.device) -> tuple[Dataset, Dataset]:
        """Kept on the GPU where there is one (they are small)."""
        store = device if device.type == "cuda" else torch.device("cpu")
        t = {k: _tensor(v).to(store) for k, v in self.parts.items()}
        return (
            TensorImageDataset(t["train_images"], t["train_labels"]),
            TensorImageDataset(t["test_images"], t["test_labels"]),
        )

    def fetch(self, loader_workers: int, device: torch.device) -> Fetch:
        return Fetch()  # one index operation a batch: no loader processes


def _tensor(v: Any) -> torch.Tensor:
    """A tensor of ``v``; arrays from Ray's object store are read-only: copied."""
    return v if isinstance(v, torch.Tensor) else torch.from_numpy(np.array(v))


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
