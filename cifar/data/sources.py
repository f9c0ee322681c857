"""Where training data comes from: one table, :data:`SOURCES`, picks the :class:`Source` for
what ``--data-dir`` holds; everything after that (the dry run, loading, the workers' loaders)
goes through the protocols of :mod:`cifar.data.dataset`.

A new kind of training data is a module with a class that takes a
:class:`~cifar.data.dataset.DataRequest` and has ``describe()`` and ``load()``, plus a row here.
"""

from __future__ import annotations

from collections.abc import Callable

from cifar.data import folders
from cifar.data.cifar10 import CifarSource
from cifar.data.dataset import DataRequest, Loading, Source, TrainingData
from cifar.data.folders import FolderSource
from cifar.data.shard_index import is_shard_tree
from cifar.data.shards import ShardSource
from cifar.data.synthetic import GeneratedSource

# (what it is, does the request name it, the source): the first row that matches is used
SOURCES: list[tuple[str, Callable[[DataRequest], bool], Callable[[DataRequest], Source]]] = [
    ("a generated set", lambda r: bool(r.synthetic), GeneratedSource),
    ("shards", lambda r: is_shard_tree(r.data_dir), ShardSource),  # train/*.tar | *.parquet
    ("image folders", lambda r: folders.is_folder_tree(r.data_dir), FolderSource),
    # local (downloaded when missing) or in object storage; says what to do when neither
    ("CIFAR-format files", lambda r: True, CifarSource),
]


def open_source(request: DataRequest) -> Source:
    """The source for what ``request.data_dir`` holds (its first matching row)."""
    return next(make(request) for _, matches, make in SOURCES if matches(request))


def load_training_data(request: DataRequest) -> tuple[TrainingData, Loading]:
    """The training job's data, in memory or as file lists to stream, and the choice made."""
    return open_source(request).load()


def check_data(request: DataRequest) -> tuple[str, int | None]:
    """For ``--dry-run``: what :func:`load_training_data` would read and how, checked without
    decoding or downloading -> (one line, training items found or None)."""
    return open_source(request).describe()


def load_data(
    data_dir: str,
    download: bool = True,
    val_fraction: float = 0.1,
    synthetic: list[int] | None = None,
    size: int = 32,
) -> TrainingData:
    """The dataset in memory (image folders decoded at ``size``; CIFAR-format files as they
    are, 32x32): for benchmarks and tests that want the pixels."""
    request = DataRequest(data_dir, download, val_fraction, size, "memory", None, synthetic)
    return load_training_data(request)[0]
