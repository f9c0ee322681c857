"""The loaders that feed an in-memory dataset to the model, one rank's share at a time.

A batch is fetched with a single index operation (``Dataset.__getitems__``); conversion to
float, random crop, flip and normalization then run per batch on the worker's device
(:mod:`cifar.data.transforms`). Training shards through a ``DistributedSampler`` (an elastic run:
:class:`GlobalBatchSampler`); evaluation through :class:`ShardSampler`, which pads nothing.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler


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
