"""``--data-loading ray``: Ray Data decodes the training samples on any CPU of the cluster and
streams them into the Train workers (``TorchTrainer(datasets={"train": ...})``, read in each
worker through ``ray.train.get_dataset_shard("train")``).

The pipeline, built once on the driver and run again by Ray Train every epoch:

    rows of sample indices (8 bytes each)      ray.data.range(n), one block
      -> shuffled, a new order every epoch     random_shuffle(RandomSeedConfig(seed, reseed))
      -> cut into one block per decode task    repartition(target_num_rows_per_block=...)
      -> decoded, ROWS_PER_TASK a task, 1 CPU  map_batches(decode_rows): the streamed datasets'
                                               own __getitems__ (files or shards), so the pixels
                                               and the bad-sample skips are the stream path's;
                                               photos are cropped + flipped there too (fresh
                                               draws), the device only normalises; a block out
                                               every ROWS_PER_BLOCK rows
      -> split evenly over the workers         DataConfig: streaming_split(world, equal=True)

Small rows are shuffled, not images: the all-to-all moves 8 bytes a sample, in one block (one map
and one reduce task, whatever ``n``). The blocks are cut after it, not before: Ray's default
blocks for ``range(n)`` were 1-2 whatever ``n``, so one task decoded a whole epoch on one CPU and
the trainer waited for all of it (20,000 rows: first batch after the last row was decoded); cut
into as many blocks before the shuffle, the all-to-all ran two tasks a block every epoch.

Ray Data's own readers (``read_images``, ``read_webdataset``, ``read_parquet``) are not used:
the driver has already indexed every sample with its class and split
(:mod:`cifar.data.shard_index`, :mod:`cifar.data.folders`), which keeps the counts exact and the
held-out samples out of training; an index row decoded through the existing datasets does both
for folders and shards.

A sample that does not decode stays a row (label -1 and its reason), so every rank knows its
row count, hence its steps, before the epoch (the schedule needs them; DDP needs them equal);
the worker drops such rows from its batch and counts them as skipped. ``equal=True`` leaves out
at most ``world - 1`` samples of an epoch's shuffle (different ones every epoch). Evaluation
does not go through Ray Data: the workers keep their exact ``ShardSampler`` loaders.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from cifar.data.dataset import Splits
from cifar.data.loaders import loader_augments

# Samples a decode task takes, and how often it hands a block on (pipelined: the trainer starts on
# a task's first rows while it decodes the rest). A task costs ~25-30 ms of Ray Data's scheduling
# (docs/results.md, Ray Data feeding the trainers): under a tenth of 256 photos' decode at 600 px.
ROWS_PER_TASK = 256
ROWS_PER_BLOCK = 64


def per_rank_batch(batch: int, world: int) -> int:
    """Each rank's share of the global batch (as a fixed-size run's ``DistributedSampler``)."""
    return max(1, batch // world)


def steps_per_epoch(n: int, batch: int, world: int) -> int:
    """Steps every rank takes: ``streaming_split(equal=True)`` hands each ``n // world`` rows."""
    return max(1, -(-(n // world) // per_rank_batch(batch, world)))


def decode_rows(rows: dict[str, np.ndarray], dataset: Dataset) -> dict[str, np.ndarray]:
    """A Ray Data batch of sample indices -> the same rows decoded: ``image`` uint8 [B, 3, S, S],
    ``label`` (-1 where the sample could not be decoded) and ``error`` (``"name\\treason"``).

    A dataset that augments as it decodes (photo sizes, augmentation on) crops and flips each
    sample here, on the cluster's CPUs, from a ``(0, draw, index)`` key whose ``draw`` is fresh
    OS entropy every call: Ray Data runs the pipeline again every epoch without saying which,
    so the crops are new draws every epoch, not the stream path's function of (seed, epoch)."""
    idx = [int(i) for i in rows["id"]]
    keys = idx
    if loader_augments(dataset):
        draw = secrets.randbits(63)  # one per decode task's batch; the index varies within it
        keys = [(0, draw, i) for i in idx]
    images, labels, skipped = dataset.__getitems__(keys)  # the good ones, in order
    error = np.array([""] * len(idx), dtype=object)
    if skipped:
        reasons = dict(skipped)
        for row, i in enumerate(idx):
            name = sample_name(dataset, i)
            if name in reasons:
                error[row] = f"{name}\t{reasons[name]}"
    good = error == ""
    out = np.zeros((len(idx), *images.shape[1:]), dtype=np.uint8)
    out[good] = images.numpy()
    label = np.full(len(idx), -1, dtype=np.int64)
    label[good] = labels.numpy()
    return {"image": out, "label": label, "error": error}


def sample_name(dataset: Dataset, i: int) -> str:
    """How the streamed datasets name sample ``i`` when they skip it: its path, or shard#key."""
    if hasattr(dataset, "paths"):
        return str(dataset.paths[i])
    return dataset.samples.name(i)


def train_dataset(splits: Splits, seed: int):
    """The training samples of streamed ``splits`` (files or shards) as a Ray Dataset: shuffled
    anew every epoch (reproducibly from ``seed``), decoded in 1-CPU tasks."""
    import ray.data
    from ray.data import RandomSeedConfig

    train = splits.datasets(torch.device("cpu"))[0]

    ds = ray.data.range(len(train), override_num_blocks=1)
    ds = ds.random_shuffle(seed=RandomSeedConfig(seed=seed, reseed_after_execution=True))
    ds = ds.repartition(target_num_rows_per_block=ROWS_PER_TASK)
    ds = ds.map_batches(
        decode_rows,
        fn_kwargs={"dataset": train},
        batch_size=ROWS_PER_BLOCK,
        batch_format="numpy",
        num_cpus=1,
    )
    # a block out of every decoded batch (Ray's default holds a task's output to 128 MiB)
    ds.context.target_max_block_size = ROWS_PER_BLOCK * 3 * splits.size * splits.size
    ds.context.enable_progress_bars = False  # the job prints its own lines, not Ray's bars
    ds.context.print_on_execution_start = False
    return ds


def data_config():
    """Ray Train's DataConfig for the training set: split evenly over the workers (Ray Train
    leaves the workers' own CPUs out of what Ray Data may use)."""
    from ray.train import DataConfig

    return DataConfig(datasets_to_split=["train"])


def collate(rows: dict[str, np.ndarray]) -> tuple[torch.Tensor, torch.Tensor, list]:
    """A streamed batch as the loaders give it: ``(uint8 images, int64 labels, [(name,
    reason), ...] of the rows that did not decode)``."""
    ok = rows["label"] >= 0
    skipped = [tuple(str(e).split("\t", 1)) for e in rows["error"][~ok]]
    images = torch.from_numpy(np.ascontiguousarray(rows["image"][ok]))
    return images, torch.from_numpy(rows["label"][ok]), skipped


class RayBatches:
    """The training 'loader' of ``--data-loading ray``: this rank's shard of the Ray Dataset,
    ``steps`` batches of ``batch`` rows an epoch. Ray Data reshuffles on every pass, so
    ``set_epoch`` has nothing to do; ``dataset`` is the streamed dataset (for a grid of
    samples)."""

    batch_sampler = None

    def __init__(self, shard: Any, batch: int, steps: int, dataset: Dataset) -> None:
        self.shard, self.batch, self.steps, self.dataset = shard, batch, steps, dataset
        self.sampler = self

    @property
    def loader_augments(self) -> bool:
        """The decode tasks cropped and flipped the photos: the device only normalises them."""
        return loader_augments(self.dataset)

    def set_epoch(self, epoch: int) -> None:
        """Nothing: the dataset is executed again, in a new order, every epoch."""

    def __len__(self) -> int:
        return self.steps

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, list]]:
        # numpy batches, made torch here (zero-copy): iter_torch_batches' collate_fn does the
        # same, but Ray 2.60 deprecates a plain function there for a class of ray.data's own;
        # 8 batches ahead, not 2: the trainer waited on blocks from the other node at 2
        batches = self.shard.iter_batches(
            batch_size=self.batch, batch_format="numpy", drop_last=False, prefetch_batches=8
        )
        for step, batch in enumerate(batches):
            if step == self.steps:  # never more steps than the schedule was built for
                break
            yield collate(batch)
