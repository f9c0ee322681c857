"""The loaders that feed a dataset to the model, one rank's share at a time.

A batch is fetched with a single call (``Dataset.__getitems__``): one index operation for an
in-memory set, a batch of files decoded in a loader process for a streamed one
(:mod:`cifar.data.streamed`). Conversion to float, augmentation, resizing and normalization then
run per batch on the worker's device (:mod:`cifar.data.transforms`), except for a training set
whose ``loader_augments``: its loader processes crop and flip each sample as they decode it
(:mod:`cifar.data.augment`), so its samplers hand over ``(seed, epoch, index)`` keys instead of
indices (persistent loader processes never see ``set_epoch``). Training shards through a
``DistributedSampler`` (an elastic run: :class:`GlobalBatchSampler`); evaluation through
:class:`ShardSampler`, which pads nothing.
"""

from __future__ import annotations

import math

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from cifar.data.dataset import Fetch, Splits

IN_PROCESS = Fetch()  # no loader processes: an in-memory set, one index operation a batch


def first_images(dataset: Dataset, n: int) -> torch.Tensor:
    """The first ``n`` images of an in-memory or streamed dataset (uint8)."""
    return dataset.__getitems__(list(range(min(n, len(dataset)))))[0]


class ShardSampler(Sampler[int]):
    """Rank ``r`` of ``w`` gets indices ``r, r+w, r+2w, ...``: every index exactly once overall,
    no padding (unlike ``DistributedSampler``), so evaluation counts each image once."""

    def __init__(self, n: int, rank: int, world_size: int) -> None:
        self.n, self.rank, self.world_size = n, rank, world_size

    def __iter__(self):
        return iter(range(self.rank, self.n, self.world_size))

    def __len__(self) -> int:
        return len(range(self.rank, self.n, self.world_size))


def loader_augments(dataset: Dataset) -> bool:
    """Whether ``dataset`` augments its samples itself, in the loader processes."""
    return bool(getattr(dataset, "loader_augments", False))


class TrainLoader(DataLoader):
    """A training DataLoader that says whether its batches come augmented already
    (``loader_augments``: the training loop then only normalises them)."""

    @property
    def loader_augments(self) -> bool:
        return loader_augments(self.dataset)


class KeyedSampler(DistributedSampler):
    """``DistributedSampler`` yielding ``(seed, epoch, index)``: the key of a sample's crop and
    flip (:mod:`cifar.data.augment`), whichever loader process decodes it."""

    def __iter__(self):
        return ((self.seed, self.epoch, i) for i in super().__iter__())


def train_loader(
    dataset: Dataset,
    batch_size: int,
    rank: int,
    world_size: int,
    seed: int,
    how: Fetch = IN_PROCESS,
) -> DataLoader:
    """Shuffled shard of the training set for this rank; call ``loader.sampler.set_epoch(e)``."""
    kind = KeyedSampler if loader_augments(dataset) else DistributedSampler
    sampler = kind(
        dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=seed, drop_last=False
    )
    return TrainLoader(
        dataset, batch_size=batch_size, sampler=sampler, drop_last=False, **how.kwargs()
    )


class GlobalBatchSampler(Sampler[list[int]]):
    """This rank's share of every global batch. Each epoch shuffles all ``n`` indices (by seed +
    epoch, as ``DistributedSampler`` does) and cuts them into global batches of ``batch``; rank
    ``r`` of ``w`` takes positions ``r, r + w, ...`` of each. So step ``k`` of an epoch trains on
    the same images whatever the world size (an elastic run's recipe stays the recipe), every
    rank takes ``ceil(n / batch)`` steps, and no image is padded in or dropped. Where ``w``
    divides ``batch`` and ``n`` these are exactly ``DistributedSampler``'s batches of
    ``batch / w``; elsewhere ranks differ by one image at most (see :func:`train_one_epoch`).
    ``keyed``: ``(seed, epoch, index)`` keys instead of indices, as :class:`KeyedSampler`."""

    def __init__(
        self, n: int, batch: int, rank: int, world: int, seed: int, keyed: bool = False
    ) -> None:
        self.n, self.batch, self.rank, self.world, self.seed = n, batch, rank, world, seed
        self.epoch, self.keyed = 0, keyed

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        g = torch.Generator()
        g.manual_seed(self.seed + self.epoch)
        order = torch.randperm(self.n, generator=g).tolist()
        for start in range(0, self.n, self.batch):
            share = order[start : start + self.batch][self.rank :: self.world]
            yield [(self.seed, self.epoch, i) for i in share] if self.keyed else share

    def __len__(self) -> int:
        return math.ceil(self.n / self.batch)

    def global_size(self, step: int) -> int:
        """Images in global batch ``step`` (all ranks together): ``batch``, less in the last."""
        return min(self.batch, self.n - step * self.batch)


def global_batch_loader(
    dataset: Dataset,
    batch: int,
    rank: int,
    world: int,
    seed: int,
    how: Fetch = IN_PROCESS,
) -> DataLoader:
    """This rank's share of each shuffled global batch; ``loader.batch_sampler.set_epoch(e)``."""
    sampler = GlobalBatchSampler(len(dataset), batch, rank, world, seed, loader_augments(dataset))
    return TrainLoader(dataset, batch_sampler=sampler, **how.kwargs())


def eval_loader(
    dataset: Dataset,
    batch_size: int,
    rank: int,
    world_size: int,
    how: Fetch = IN_PROCESS,
) -> DataLoader:
    """This rank's share of the test set, each image in exactly one rank's share."""
    sampler = ShardSampler(len(dataset), rank, world_size)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, **how.kwargs())


EVAL_BATCH = 1024  # images per evaluation batch at 32x32; fewer at larger sizes (eval_batch)


def eval_batch(size: int) -> int:
    """Images per evaluation batch at ``size`` pixels: EVAL_BATCH at 32, the same pixels at
    larger sizes (at least 32 images)."""
    return max(32, EVAL_BATCH * 32 * 32 // (size * size))


def shard_loaders(
    data: Splits,
    batch: int,
    elastic: bool,
    seed: int,
    size: int,
    rank: int,
    world: int,
    device: torch.device,
    loader_workers: int = 0,
) -> tuple[DataLoader, DataLoader]:
    """This rank's training and evaluation loaders over ``data`` (in memory, or files streamed
    by ``loader_workers`` processes: ``data.fetch`` says how). ``batch`` is global: a fixed
    world splits it evenly, an elastic one (:class:`GlobalBatchSampler`) takes every rank's
    share of the same global batches."""
    train, test = data.datasets(device)
    how = data.fetch(loader_workers, device)
    if elastic:
        tl = global_batch_loader(train, batch, rank, world, seed, how)
    else:
        tl = train_loader(train, max(1, batch // world), rank, world, seed, how)
    return tl, eval_loader(test, eval_batch(size), rank, world, how)
