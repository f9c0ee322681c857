"""Shards as training data: ``--data-dir`` holding WebDataset tars or Parquet files in ``train/``
and ``val/`` (or ``test/``); the layout, the index and the split are
:mod:`cifar.data.shard_index`, the formats :mod:`cifar.io.shards`.

The driver indexes every shard first: every sample as (shard, where its image lies, class),
from tar headers and labels or Parquet label columns. Then it is the folder tree's two ways:

- in memory, while the decoded pixels fit the budget (:func:`~cifar.data.loading.choose_loading`):
  every shard read once and its samples decoded on the driver (a shard per Ray task when Ray is
  up), the set held as :class:`~cifar.data.dataset.ImageData`;
- streamed: :class:`ShardSplits`, a map-style dataset over the index. The training loop's
  samplers (``DistributedSampler``, the elastic ``GlobalBatchSampler``, the padding-free
  ``ShardSampler`` of evaluation) index datasets, so an index keeps what they give unchanged:
  the same shuffle as in memory, every evaluation sample exactly once across ranks, bit-exact
  resume, elastic resizes. A loader process reads a batch by grouping its indices per shard: a
  ranged read per tar member (a seek on local disk), a read of the image column per Parquet row
  group. An ``IterableDataset`` over each worker's own shards would read in order, but with
  uneven shards it cannot evaluate every sample exactly once, and its shuffle and resume would
  be new code; reading shards in order across the cluster is ``--data-loading ray``'s part.

Pixels are those of :func:`cifar.io.images.decode_image`, the folder trees' and prediction's
decode; training photos are cropped and flipped as they are decoded, as image files are
(:mod:`cifar.data.augment`). A sample that does not decode is skipped and named
``<shard>#<key>``; never fatal.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from cifar.data.augment import Key, LoaderAugment, in_loader
from cifar.data.dataset import (
    DataRequest,
    Fetch,
    ImageData,
    Loading,
    channel_stats,
    class_counts,
)
from cifar.data.loading import choose_loading
from cifar.data.shard_index import ShardSet, Table, assign, index, info, parallel, scan
from cifar.io import shards as fmt
from cifar.io import storage
from cifar.io.images import decode_into

progress = logging.getLogger("cifar.progress")

STATS_SAMPLE = 512  # training samples decoded on the driver for a streamed set's mean/std


def decode_shard(
    path: str,
    at: np.ndarray,
    size: np.ndarray,
    column: str | None,
    side: int,
    views: list[Any] | None = None,
) -> tuple[np.ndarray, list[str]]:
    """uint8 ``[n, 3, side, side]`` pixels of indexed samples of one shard (each through its
    ``views`` entry where given), and one error per sample (``""`` when it decoded). A shard
    that cannot be read fails each of its samples."""
    images = np.zeros((len(at), 3, side, side), dtype=np.uint8)
    errors = [""] * len(at)
    try:
        datas = fmt.read_images(path, at.tolist(), size.tolist(), column)
    except fmt.ShardError as e:
        return images, [f"cannot read the shard: {e.reason}"] * len(at)
    decode_into(images, errors, range(len(at)), datas, side, views)
    return images, errors


def decode_all(s: ShardSet, side: int) -> tuple[np.ndarray, list[str]]:
    """Every sample of ``s`` decoded, a shard per Ray task when Ray is up."""
    images = np.zeros((len(s), 3, side, side), dtype=np.uint8)
    errors = [""] * len(s)
    groups = [g for g in (np.flatnonzero(s.shard == k) for k in range(len(s.shards))) if len(g)]
    calls = [(str(s.shards[s.shard[g[0]]]), s.at[g], s.size[g], s.column, side) for g in groups]
    for g, (pixels, errs) in zip(groups, parallel(decode_shard, calls), strict=True):
        images[g] = pixels
        for i, e in zip(g.tolist(), errs, strict=True):
            errors[i] = e
    return images, errors


class ShardDataset(Dataset):
    """Indexed shard samples decoded on demand, a batch at a time (``__getitems__``): ``(uint8
    [B, 3, S, S], int64 [B], [(shard#key, reason), ...] for samples left out of the batch)``;
    with ``augment``, cropped and flipped as they are decoded, as
    :class:`~cifar.data.streamed.FileDataset` does."""

    def __init__(self, samples: ShardSet, side: int, augment: LoaderAugment | None = None) -> None:
        self.samples, self.side, self.augment = samples, side, augment

    @property
    def loader_augments(self) -> bool:
        return self.augment is not None

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        return self.__getitems__([i])

    def __getitems__(self, indices: Sequence[Key]):
        keyed = [self.augment.split(k) for k in indices] if self.augment else None
        if keyed is not None:
            indices = [i for i, _ in keyed]
        s, idx = self.samples, np.asarray(indices, dtype=np.int64)
        images = np.zeros((len(idx), 3, self.side, self.side), dtype=np.uint8)
        errors = [""] * len(idx)
        for k in np.unique(s.shard[idx]):
            where = np.flatnonzero(s.shard[idx] == k)
            rows = idx[where]
            views = [keyed[w][1] for w in where.tolist()] if keyed is not None else None
            pixels, errs = decode_shard(
                str(s.shards[k]), s.at[rows], s.size[rows], s.column, self.side, views
            )
            images[where] = pixels
            for w, e in zip(where.tolist(), errs, strict=True):
                errors[w] = e
        ok = np.array([not e for e in errors], dtype=bool)
        skipped = [(s.name(int(i)), e) for i, e in zip(idx, errors, strict=True) if e]
        labels = s.labels[torch.from_numpy(idx[ok])]
        return torch.from_numpy(images[ok]), labels, skipped


@dataclass
class ShardSplits:
    """A shard tree as an index to stream (the counterpart of
    :class:`~cifar.data.streamed.FileSplits` for shards)."""

    train: ShardSet
    test: ShardSet
    classes: tuple[str, ...]
    size: int  # pixels a side, decoded
    kind: str = "shards"
    root: str = ""
    info: dict[str, Any] = field(default_factory=dict)
    resize: str = "files"
    stats_from: str = f"a sample of {STATS_SAMPLE} training images"
    augment: bool = False  # training augments: at photo sizes, in the loader processes

    @property
    def train_labels(self) -> torch.Tensor:
        return self.train.labels

    @property
    def test_labels(self) -> torch.Tensor:
        return self.test.labels

    @property
    def n_train(self) -> int:
        return len(self.train)

    def class_counts(self) -> dict[str, dict[str, int]]:
        return class_counts(self.classes, self.train_labels, self.test_labels)

    def for_workers(self) -> ShardSplits:
        return self  # an index: every worker reads its own samples

    def facts(self) -> ShardSplits:
        return self

    def datasets(self, device: torch.device) -> tuple[Dataset, Dataset]:
        augment = LoaderAugment() if in_loader(self.augment, self.size) else None
        return ShardDataset(self.train, self.size, augment), ShardDataset(self.test, self.size)

    def fetch(self, loader_workers: int, device: torch.device) -> Fetch:
        """As for image files: ``spawn`` for object storage (its client is not fork-safe)."""
        context = "spawn" if storage.is_uri(self.root) else None
        return Fetch(loader_workers, context, pin_memory=device.type == "cuda")

    def channel_stats(self, n: int = STATS_SAMPLE) -> tuple[list[float], list[float]]:
        """Per-channel mean/std of an evenly spread sample of ``n`` training samples."""
        step = max(1, len(self.train) // n)
        images, _, _ = ShardDataset(self.train, self.size).__getitems__(
            list(range(0, len(self.train), step))[:n]
        )
        return channel_stats(images)


def load_memory(table: Table, val_fraction: float, size: int) -> ImageData:
    """Every sample decoded (once, on the driver), labelled, split: the set in memory."""
    t0 = time.perf_counter()
    images, errors = decode_all(table.samples, size)
    seconds = time.perf_counter() - t0
    progress.info(
        "[cifar] %d samples of %d shards decoded in %.1fs (%.0f img/s)",
        len(images),
        len(table.layout.shards),
        seconds,
        len(images) / max(seconds, 1e-9),
    )
    train, held, skipped = assign(table, errors, val_fraction)
    labels = table.samples.labels
    return ImageData(
        train_images=torch.from_numpy(images[train]),
        train_labels=labels[torch.from_numpy(train)],
        test_images=torch.from_numpy(images[held]),
        test_labels=labels[torch.from_numpy(held)],
        classes=table.classes,
        kind="shards",
        root=table.layout.root,
        info=info(table, val_fraction, skipped),
        resize="files",
    )


def list_samples(
    table: Table, val_fraction: float, size: int, augment: bool = False
) -> ShardSplits:
    """Labelled and split, decoding nothing: the index for the workers to stream. Samples that
    do not decode are found (and skipped) while training."""
    train, held, skipped = assign(table, [""] * len(table.samples), val_fraction)
    return ShardSplits(
        table.samples.take(train),
        table.samples.take(held),
        table.classes,
        size,
        root=table.layout.root,
        info=info(table, val_fraction, skipped),
        augment=augment,
    )


class ShardSource:
    """``--data-dir`` whose ``train/`` holds ``*.tar`` or ``*.parquet`` shards: decoded into
    memory while the pixels fit the memory budget, else streamed by every worker."""

    def __init__(self, request: DataRequest) -> None:
        self.request = request
        self.layout = scan(request.data_dir)
        self._table: Table | None = None

    def table(self) -> Table:
        """Every shard indexed (once per source)."""
        if self._table is None:
            r = self.request
            self._table = index(self.layout, r.image_column, r.label_column)
        return self._table

    def loading(self) -> Loading:
        r = self.request
        return choose_loading(
            len(self.table().samples), r.size, r.loading, r.budget_mb, unit="samples"
        )

    def describe(self) -> tuple[str, int | None]:
        t, r = self.table(), self.request
        n_train = len(assign(t, [""] * len(t.samples), r.val_fraction)[0])
        split = f"{t.layout.eval_dir}/" if t.layout.eval_dir else "a hash split of train/"
        how = self.loading()
        state = f"{how.how}: {how.why}" if how.how != "memory" else "in memory, decoded at start"
        names = ", ".join(t.classes[:8]) + (", ..." if len(t.classes) > 8 else "")
        skipped = f", {len(t.skipped)} skipped" if t.skipped else ""
        return (
            f"{t.formats} shards {t.layout.root}: {len(t.layout.shards)} shards, "
            f"{len(t.classes)} classes ({names}), {n_train} training samples{skipped}, "
            f"evaluated on {split} ({state})",
            n_train,
        )

    def load(self) -> tuple[ImageData | ShardSplits, Loading]:
        how, r = self.loading(), self.request
        if how.how != "memory":  # stream or ray: an index to decode as it trains
            return list_samples(self.table(), r.val_fraction, r.size, r.augment), how
        return load_memory(self.table(), r.val_fraction, r.size), how
