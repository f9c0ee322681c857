"""Datasets in memory and the loaders that feed them to the model.

A dataset (CIFAR-format files, :mod:`cifar.cifar10`; labelled image folders,
:mod:`cifar.folders`) is read into :class:`ImageData`: one ``uint8 [N, 3, 32, 32]`` tensor per
split. A batch is fetched with a single index operation (``Dataset.__getitems__``), and
conversion to float, random crop, flip and normalization run per batch on the worker's device.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler


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
    kind: str  # "cifar10" (official files), "synthetic" (cifar.synthetic), "custom", "folder"
    root: str
    info: dict[str, Any] = field(default_factory=dict)  # what the reader wants reported

    def channel_stats(self) -> tuple[list[float], list[float]]:
        """Per-channel mean/std of the training images on the [0, 1] scale."""
        x = self.train_images
        n = x.shape[0] * x.shape[2] * x.shape[3]
        s = torch.zeros(3, dtype=torch.float64)
        ss = torch.zeros(3, dtype=torch.float64)
        for chunk in x.split(8192):
            c = chunk.to(torch.float64) / 255.0
            s += c.sum(dim=(0, 2, 3))
            ss += (c * c).sum(dim=(0, 2, 3))
        mean = s / n
        std = (ss / n - mean * mean).clamp_min(1e-12).sqrt()
        return [round(float(v), 6) for v in mean], [round(float(v), 6) for v in std]

    def class_counts(self) -> dict[str, dict[str, int]]:
        """Images per class in each split, in class-index order."""
        out = {}
        for split, labels in (("train", self.train_labels), ("test", self.test_labels)):
            counts = torch.bincount(labels, minlength=len(self.classes)).tolist()
            out[split] = dict(zip(self.classes, counts, strict=True))
        return out

    def tensors(self) -> dict[str, torch.Tensor]:
        """The splits by name, as :func:`cifar.engine.build` takes them."""
        return {
            "train_images": self.train_images,
            "train_labels": self.train_labels,
            "test_images": self.test_images,
            "test_labels": self.test_labels,
        }

    def arrays(self) -> dict[str, np.ndarray]:
        """The tensors as numpy arrays, for Ray's object store (zero-copy on a node)."""
        return {k: v.numpy() for k, v in self.tensors().items()}


def tensors_from_arrays(arrays: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """Inverse of :meth:`ImageData.arrays`; copies, because arrays from Ray's object store are
    read-only."""
    return {k: torch.from_numpy(np.array(v)) for k, v in arrays.items()}


# --------------------------------------------------------------------------- loaders


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


def _keep_batch(batch):
    """collate_fn: ``__getitems__`` already returns a stacked batch."""
    return batch


class ShardSampler(Sampler[int]):
    """Rank ``r`` of ``w`` gets indices ``r, r+w, r+2w, ...``: every index exactly once overall,
    no padding (unlike ``DistributedSampler``), so evaluation counts each image once."""

    def __init__(self, n: int, rank: int, world_size: int) -> None:
        self.n, self.rank, self.world_size = n, rank, world_size

    def __iter__(self):
        return iter(range(self.rank, self.n, self.world_size))

    def __len__(self) -> int:
        return len(range(self.rank, self.n, self.world_size))


def train_loader(
    dataset: TensorImageDataset,
    batch_size: int,
    rank: int,
    world_size: int,
    seed: int,
    pin_memory: bool = False,
) -> DataLoader:
    """Shuffled shard of the training set for this rank; call ``loader.sampler.set_epoch(e)``."""
    sampler = DistributedSampler(
        dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=seed, drop_last=False
    )
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        collate_fn=_keep_batch,
        pin_memory=pin_memory and dataset.images.device.type == "cpu",
        drop_last=False,
    )


class GlobalBatchSampler(Sampler[list[int]]):
    """This rank's share of every global batch. Each epoch shuffles all ``n`` indices (by seed +
    epoch, as ``DistributedSampler`` does) and cuts them into global batches of ``batch``; rank
    ``r`` of ``w`` takes positions ``r, r + w, ...`` of each. So step ``k`` of an epoch trains on
    the same images whatever the world size (an elastic run's recipe stays the recipe), every
    rank takes ``ceil(n / batch)`` steps, and no image is padded in or dropped. Where ``w``
    divides ``batch`` and ``n`` these are exactly ``DistributedSampler``'s batches of
    ``batch / w``; elsewhere ranks differ by one image at most (see :func:`train_one_epoch`)."""

    def __init__(self, n: int, batch: int, rank: int, world: int, seed: int) -> None:
        self.n, self.batch, self.rank, self.world, self.seed = n, batch, rank, world, seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        g = torch.Generator()
        g.manual_seed(self.seed + self.epoch)
        order = torch.randperm(self.n, generator=g).tolist()
        for start in range(0, self.n, self.batch):
            yield order[start : start + self.batch][self.rank :: self.world]

    def __len__(self) -> int:
        return math.ceil(self.n / self.batch)

    def global_size(self, step: int) -> int:
        """Images in global batch ``step`` (all ranks together): ``batch``, less in the last."""
        return min(self.batch, self.n - step * self.batch)


def global_batch_loader(
    dataset: TensorImageDataset,
    batch: int,
    rank: int,
    world: int,
    seed: int,
    pin_memory: bool = False,
) -> DataLoader:
    """This rank's share of each shuffled global batch; ``loader.batch_sampler.set_epoch(e)``."""
    return DataLoader(
        dataset,
        batch_sampler=GlobalBatchSampler(len(dataset), batch, rank, world, seed),
        collate_fn=_keep_batch,
        pin_memory=pin_memory and dataset.images.device.type == "cpu",
    )


def eval_loader(
    dataset: TensorImageDataset,
    batch_size: int,
    rank: int,
    world_size: int,
    pin_memory: bool = False,
) -> DataLoader:
    """This rank's share of the test set, each image in exactly one rank's share."""
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=ShardSampler(len(dataset), rank, world_size),
        collate_fn=_keep_batch,
        pin_memory=pin_memory and dataset.images.device.type == "cpu",
    )


# --------------------------------------------------------------------------- batch transforms


def random_crop_flip(
    x: torch.Tensor, padding: int = 4, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Per-image random crop (zero padding ``padding``) and horizontal flip of a ``[B, C, H, W]``
    batch, on whatever device it lives on; same distribution as torchvision's
    ``RandomCrop(H, padding)`` + ``RandomHorizontalFlip()``."""
    b, c, h, w = x.shape
    dev = x.device
    padded = torch.nn.functional.pad(x, (padding, padding, padding, padding))
    dy = torch.randint(0, 2 * padding + 1, (b,), device=dev, generator=generator)
    dx = torch.randint(0, 2 * padding + 1, (b,), device=dev, generator=generator)
    flip = torch.rand(b, device=dev, generator=generator) < 0.5
    rows = dy[:, None] + torch.arange(h, device=dev)  # [B, H]
    cols = dx[:, None] + torch.arange(w, device=dev)  # [B, W]
    cols = torch.where(flip[:, None], cols.flip(1), cols)
    bi = torch.arange(b, device=dev)[:, None, None, None]
    ci = torch.arange(c, device=dev)[None, :, None, None]
    return padded[bi, ci, rows[:, None, :, None], cols[:, None, None, :]]


def normalize(
    x: torch.Tensor,
    mean: Sequence[float] | None,
    std: Sequence[float] | None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """uint8 ``[B, 3, H, W]`` -> float ``(x / 255 - mean) / std``; no mean/std: ``x / 255``
    (what the tutorial's ``ToTensor()`` gives)."""
    out = x.to(dtype).div_(255.0)
    if mean is not None and std is not None:
        m = torch.tensor(mean, dtype=dtype, device=x.device).view(1, -1, 1, 1)
        s = torch.tensor(std, dtype=dtype, device=x.device).view(1, -1, 1, 1)
        out = out.sub_(m).div_(s)
    return out


def to_device_batch(
    images: torch.Tensor,
    labels: torch.Tensor,
    device: torch.device,
    mean: Sequence[float] | None,
    std: Sequence[float] | None,
    augment: bool = False,
    generator: torch.Generator | None = None,
    channels_last: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Move a uint8 batch to ``device``, augment it there (uint8), then normalize."""
    images = images.to(device, non_blocking=True)
    labels = labels.to(device, non_blocking=True)
    if augment:
        images = random_crop_flip(images, generator=generator)
    x = normalize(images, mean, std)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, labels


def make_grid_sample(images: torch.Tensor, n: int = 64) -> torch.Tensor:
    """First ``n`` uint8 images as one float ``[3, H, W]`` grid for TensorBoard."""
    from torchvision.utils import make_grid

    return make_grid(images[:n].float() / 255.0, nrow=8)
