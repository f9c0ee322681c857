"""Image folders too large to decode into memory: each training worker streams its shard from
the files.

The driver lists and splits the tree exactly as :func:`cifar.data.folders.load_folders` does
(classes, evaluation split, labels) but decodes nothing: it hands the workers :class:`FileSplits`,
two lists of paths and labels. A worker's DataLoader reads, decodes and resizes its batches in
worker processes (:class:`FileDataset`, the prediction job's own decode), local paths and object
storage alike; its sampler (``DistributedSampler``, :class:`~cifar.data.loaders.ShardSampler`)
splits the file list as it would split an in-memory set. Training photos (``size >=
PHOTO_SIZE``, augmentation on) are cropped and flipped there too, from the original file
(:mod:`cifar.data.augment`); the device then only normalises them. Memory is a few batches per
loader process, whatever the number of files. A file that cannot be decoded is dropped from its
batch and counted (the batch says which), never fatal; a store that cannot be reached ends the
run (``--resume`` continues it).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from cifar.data.augment import Key, LoaderAugment, in_loader
from cifar.data.dataset import Fetch, channel_stats, class_counts
from cifar.io import storage
from cifar.io.faults import CONNECTION_KINDS, StorageError
from cifar.io.images import decode_batch, load_image_file

STATS_SAMPLE = 512  # training files decoded on the driver for the mean/std
_CHUNK = 256  # files per decode task


@dataclass
class FileSplits:
    """A labelled image-folder dataset as file lists (the streamed counterpart of
    :class:`~cifar.data.dataset.ImageData`: same ``classes``, ``kind``, ``root``, ``info``,
    labels and counts)."""

    train_paths: list[str]
    train_labels: torch.Tensor  # int64 [N]
    test_paths: list[str]
    test_labels: torch.Tensor  # int64 [M]
    classes: tuple[str, ...]
    size: int  # pixels a side, decoded
    kind: str = "folder"
    root: str = ""
    info: dict[str, Any] = field(default_factory=dict)
    resize: str = "files"
    stats_from: str = f"a sample of {STATS_SAMPLE} training images"
    augment: bool = False  # training augments: at photo sizes, in the loader processes

    @property
    def n_train(self) -> int:
        return len(self.train_labels)

    def class_counts(self) -> dict[str, dict[str, int]]:
        return class_counts(self.classes, self.train_labels, self.test_labels)

    def for_workers(self) -> FileSplits:
        return self  # file lists: every worker decodes its own shard

    def facts(self) -> FileSplits:
        return self

    def datasets(self, device: torch.device) -> tuple[Dataset, Dataset]:
        return self.dataset("train"), self.dataset("test")

    def fetch(self, loader_workers: int, device: torch.device) -> Fetch:
        """``loader_workers`` processes: ``fork`` for local files (instant), ``spawn`` for
        object storage (the S3 client is not safe to fork)."""
        context = "spawn" if storage.is_uri(self.root) else None
        return Fetch(loader_workers, context, pin_memory=device.type == "cuda")

    def channel_stats(self, n: int = STATS_SAMPLE) -> tuple[list[float], list[float]]:
        """Per-channel mean/std of an evenly spread sample of ``n`` training files (decoded in
        Ray tasks when Ray is up); unreadable ones are left out."""
        step = max(1, len(self.train_paths) // n)
        paths = self.train_paths[::step][:n]
        images, errors = decode_files(paths, self.size)
        good = torch.from_numpy(images[[not e for e in errors]])
        return channel_stats(good)

    def dataset(self, split: str) -> FileDataset:
        paths = self.train_paths if split == "train" else self.test_paths
        labels = self.train_labels if split == "train" else self.test_labels
        augment = split == "train" and in_loader(self.augment, self.size)
        return FileDataset(paths, labels, self.size, LoaderAugment() if augment else None)


class FileDataset(Dataset):
    """Image files decoded on demand, a batch at a time (``__getitems__``): ``(uint8 [B, 3, S,
    S], int64 [B], [(path, reason), ...] for files left out of the batch)``. With ``augment``,
    each file is randomly cropped and flipped as it is decoded, from its ``(seed, epoch,
    index)`` key (:mod:`cifar.data.augment`), and ``loader_augments`` tells the training loop
    not to augment again."""

    def __init__(
        self,
        paths: Sequence[str],
        labels: torch.Tensor,
        size: int,
        augment: LoaderAugment | None = None,
    ) -> None:
        # numpy, not a list: forked loader processes would touch (and copy) every list item's
        # reference count, a numpy array of fixed-width strings is never copied
        self.paths = np.array(paths, dtype=np.str_)
        self.labels = labels
        self.size = size
        self.augment = augment

    @property
    def loader_augments(self) -> bool:
        return self.augment is not None

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        return self.__getitems__([i])

    def __getitems__(self, indices: Sequence[Key]):
        images, labels, skipped = [], [], []
        for key in indices:
            i, view = self.augment.split(key) if self.augment else (key, None)
            path = str(self.paths[i])
            try:
                images.append(load_image_file(path, self.size, view))
                labels.append(int(self.labels[i]))
            except ValueError as e:
                skipped.append((path, str(e)))
            except OSError as e:
                if isinstance(e, StorageError) and e.kind in CONNECTION_KINDS:
                    raise  # the store is gone, not this file
                skipped.append((path, f"cannot read file: {e.strerror or e}"))
        side = self.size
        batch = (
            torch.from_numpy(np.stack(images))
            if images
            else torch.zeros((0, 3, side, side), dtype=torch.uint8)
        )
        return batch, torch.tensor(labels, dtype=torch.int64), skipped


def decode_files(paths: list[str], size: int) -> tuple[np.ndarray, list[str]]:
    """uint8 ``[N, 3, size, size]`` pixels and one error per file (``""`` when it decoded).

    In parallel Ray tasks (one CPU each, a chunk of files per task) when this process is
    connected to Ray, else in this process."""
    images = np.zeros((len(paths), 3, size, size), dtype=np.uint8)
    errors = [""] * len(paths)
    starts = list(range(0, len(paths), _CHUNK))

    def put(start: int, out: dict[str, np.ndarray]) -> None:
        images[start : start + len(out["image"])] = out["image"]
        errors[start : start + len(out["error"])] = [str(e) for e in out["error"]]

    def chunk(start: int) -> dict[str, np.ndarray]:
        return {"path": np.array(paths[start : start + _CHUNK], dtype=object)}

    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized() or len(starts) < 2:
        for s in starts:
            put(s, decode_batch(chunk(s), size))
        return images, errors
    task = ray.remote(num_cpus=1)(decode_batch)
    window = max(2, 2 * int(ray.cluster_resources().get("CPU", 1)))  # bounded memory
    pending: dict[Any, int] = {}
    queue = list(starts)
    while queue or pending:
        while queue and len(pending) < window:
            s = queue.pop(0)
            pending[task.remote(chunk(s), size)] = s
        done, _ = ray.wait(list(pending), num_returns=1)
        for ref in done:
            put(pending.pop(ref), ray.get(ref))
    return images, errors
