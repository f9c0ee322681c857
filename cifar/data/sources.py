"""Where training data comes from: ``--data-dir`` -> :class:`~cifar.data.dataset.ImageData`.

``--data-dir`` may hold CIFAR-10's python files (``cifar-10-batches-py/``, downloaded when
missing) or a tree of labelled image folders (``train/<class>/...``); a smoke test generates
its own CIFAR-format set. The driver loads the data once and hands it to every worker.
"""

from __future__ import annotations

from cifar.data import cifar10, folders
from cifar.data.dataset import DataError, ImageData
from cifar.io import storage


def load_data(
    data_dir: str,
    download: bool = True,
    val_fraction: float = 0.1,
    synthetic: list[int] | None = None,
    size: int = cifar10.SIDE,
) -> ImageData:
    """The dataset named by the arguments, in memory (under a lock where it writes files), its
    images ``size`` pixels a side (CIFAR-format files hold 32x32 images: only that size)."""
    if size != cifar10.SIDE and (synthetic or not folders.is_folder_tree(data_dir)):
        raise DataError(
            f"CIFAR-format files hold {cifar10.SIDE}x{cifar10.SIDE} images; this model takes "
            f"{size}x{size}. Train it on image folders (DIR/train/<class>/...) instead."
        )
    if synthetic:
        from cifar.data.synthetic import ensure_synthetic

        n_train, n_test, seed = synthetic
        return cifar10.load_cifar10(ensure_synthetic(n_train, n_test, seed))
    if folders.is_folder_tree(data_dir):
        return folders.load_folders(data_dir, val_fraction, size)
    if storage.is_uri(data_dir):
        return cifar10.load_cifar10(_cifar_files_from(data_dir).parent)
    return cifar10.prepare_data(data_dir, download)


def _cifar_files_from(data_dir: str):
    """This node's copy of ``<data_dir>/cifar-10-batches-py`` from object storage (downloaded
    once under a lock, size-checked, re-used while the objects are unchanged)."""
    batches = storage.join(data_dir, cifar10.BATCH_DIR)
    if not storage.is_dir(batches):
        storage.check_bucket(data_dir)
        raise DataError(
            f"--data-dir {data_dir} holds neither image folders (train/<class>/...) nor "
            f"CIFAR-format files ({cifar10.BATCH_DIR}/). Upload one of them there, e.g. `aws s3 "
            f"sync data/{cifar10.BATCH_DIR} {batches}`."
        )
    return storage.local_tree(batches)


def check_data(
    data_dir: str,
    download: bool = True,
    synthetic: list[int] | None = None,
    size: int = cifar10.SIDE,
) -> tuple[str, int | None]:
    """For ``--dry-run``: what :func:`load_data` would read, checked without decoding or
    downloading -> (one line, training files found or None)."""
    if synthetic:
        return f"a generated CIFAR-format set ({synthetic[0]} train / {synthetic[1]} test)", (
            synthetic[0]
        )
    if folders.is_folder_tree(data_dir):
        tree = folders.scan(data_dir, size)
        n_train = sum(f.rel.startswith(f"{folders.TRAIN_DIR}/") for f in tree.files)
        split = tree.eval_dir + "/" if tree.eval_dir else "a hash split of train/"
        cached = "cached" if folders.cached(tree) else "not decoded yet"
        return (
            f"image folders {data_dir}: {len(tree.classes)} classes ({', '.join(tree.classes[:8])}"
            f"{', ...' if len(tree.classes) > 8 else ''}), {n_train} training files, evaluated "
            f"on {split} ({cached})",
            n_train,
        )
    if storage.is_uri(data_dir):
        batches = storage.join(data_dir, cifar10.BATCH_DIR)
        if not storage.is_dir(batches):
            load_data(data_dir, download)  # raises the error that says what to upload
        return f"CIFAR-format files in {batches} (copied to this node's cache)", 50000
    if cifar10.has_cifar10(data_dir):
        return f"CIFAR-format files in {cifar10.batch_dir(data_dir)}", 50000
    if download:
        return f"CIFAR-10 will be downloaded into {data_dir} ({cifar10.CIFAR10_URL})", 50000
    cifar10.load_cifar10(data_dir)  # raises the not-found error that says what to do
    raise AssertionError("unreachable")
