"""Where training data comes from: ``--data-dir`` -> :class:`~cifar.data.ImageData`.

``--data-dir`` may hold CIFAR-10's python files (``cifar-10-batches-py/``, downloaded when
missing) or a tree of labelled image folders (``train/<class>/...``); a smoke test generates
its own CIFAR-format set. The driver loads the data once and hands it to every worker.
"""

from __future__ import annotations

from cifar import cifar10, folders, storage
from cifar.data import DataError, ImageData


def load_data(
    data_dir: str,
    download: bool = True,
    val_fraction: float = 0.1,
    synthetic: list[int] | None = None,
) -> ImageData:
    """The dataset named by the arguments, in memory (under a lock where it writes files)."""
    if synthetic:
        from cifar.synthetic import ensure_synthetic

        n_train, n_test, seed = synthetic
        return cifar10.load_cifar10(ensure_synthetic(n_train, n_test, seed))
    if folders.is_folder_tree(data_dir):
        return folders.load_folders(data_dir, val_fraction)
    if storage.is_uri(data_dir):
        raise DataError(
            f"--data-dir {data_dir} has no train/ folder. From object storage the training job "
            "reads image-folder trees (train/<class>/..., val/<class>/...); copy CIFAR-10's "
            "python files to a local --data-dir instead."
        )
    return cifar10.prepare_data(data_dir, download)
