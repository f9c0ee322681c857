"""Where training data comes from: ``--data-dir`` -> :class:`~cifar.data.dataset.ImageData`.

``--data-dir`` may hold CIFAR-10's python files (``cifar-10-batches-py/``, downloaded when
missing) or a tree of labelled image folders (``train/<class>/...``); a smoke test generates
its own CIFAR-format set. The driver loads the data once and hands it to every worker; image
folders whose decoded pixels would not fit the memory budget are handed over as file lists
instead, for every worker to stream its shard (:mod:`cifar.data.streamed`).
"""

from __future__ import annotations

from dataclasses import dataclass

from cifar.data import cifar10, folders
from cifar.data.dataset import DataError, ImageData
from cifar.data.streamed import FileSplits
from cifar.io import storage

LOADINGS = ("auto", "memory", "stream")
# auto: hold decoded images in memory up to this share of the node's memory (the driver, the
# object store and every worker on a node hold them)
MEMORY_SHARE = 0.1


@dataclass(frozen=True)
class Loading:
    """How a run's training data reaches the workers, and why."""

    how: str  # "memory" (decoded once, shared) or "stream" (each worker decodes its shard)
    why: str

    def line(self) -> str:
        what = {"memory": "held in memory", "stream": "streamed from the files by every worker"}
        return f"[cifar] data loading: {what[self.how]}: {self.why}"


def memory_budget(mb: float | None) -> tuple[int, str]:
    """(bytes, what set it): ``--data-memory-mb``, else a share of this node's memory."""
    if mb is not None:
        return int(mb * 2**20), f"--data-memory-mb {mb:g}"
    import psutil

    total = psutil.virtual_memory().total
    return int(total * MEMORY_SHARE), f"{MEMORY_SHARE:.0%} of this node's {_size(total)}"


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError


def choose_loading(
    tree: folders.Tree | None, loading: str = "auto", budget_mb: float | None = None
) -> Loading:
    """Memory or streaming for a folder ``tree`` (None: CIFAR-format files, always in
    memory), as ``--data-loading`` asks; ``auto``: memory while the decoded pixels fit
    the budget (:func:`memory_budget`)."""
    if tree is None:
        if loading == "stream":
            raise DataError(
                "--data-loading stream streams image folders (DIR/train/<class>/...); CIFAR-format "
                "files are read into memory (150 MiB for CIFAR-10). Drop --data-loading stream."
            )
        return Loading("memory", "CIFAR-format files")
    need = len(tree.files) * 3 * tree.size * tree.size
    what = f"{len(tree.files)} files decoded at {tree.size}x{tree.size} take {_size(need)}"
    if loading != "auto":
        return Loading(loading, f"--data-loading {loading} ({what})")
    budget, set_by = memory_budget(budget_mb)
    if need > budget:
        return Loading(
            "stream",
            f"{what}, over the memory budget of {_size(budget)} ({set_by}); "
            "--data-loading memory holds them anyway",
        )
    return Loading("memory", f"{what}, within the memory budget of {_size(budget)} ({set_by})")


def load_training_data(
    data_dir: str,
    download: bool = True,
    val_fraction: float = 0.1,
    synthetic: list[int] | None = None,
    size: int = cifar10.SIDE,
    loading: str = "auto",
    budget_mb: float | None = None,
) -> tuple[ImageData | FileSplits, Loading]:
    """The training job's data: in memory (:func:`load_data`), or for image folders over the
    memory budget (or ``loading="stream"``) as file lists to stream; and the choice made."""
    tree = (
        None if synthetic or not folders.is_folder_tree(data_dir) else folders.scan(data_dir, size)
    )
    how = choose_loading(tree, loading, budget_mb)
    if tree is None:
        return load_data(data_dir, download, val_fraction, synthetic, size), how
    if how.how == "stream":
        return folders.list_tree(tree, val_fraction), how
    return folders.load_tree(tree, val_fraction), how


def load_data(
    data_dir: str,
    download: bool = True,
    val_fraction: float = 0.1,
    synthetic: list[int] | None = None,
    size: int = cifar10.SIDE,
) -> ImageData:
    """The dataset named by the arguments, in memory (under a lock where it writes files): image
    folders decoded at ``size`` pixels a side; CIFAR-format files as they are, 32x32 (a model
    at another size gets them resized batch by batch, on its device)."""
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
    loading: str = "auto",
    budget_mb: float | None = None,
) -> tuple[str, int | None]:
    """For ``--dry-run``: what :func:`load_training_data` would read and how, checked without
    decoding or downloading -> (one line, training files found or None)."""
    if synthetic:
        return f"a generated CIFAR-format set ({synthetic[0]} train / {synthetic[1]} test)", (
            synthetic[0]
        )
    if folders.is_folder_tree(data_dir):
        tree = folders.scan(data_dir, size)
        n_train = sum(f.rel.startswith(f"{folders.TRAIN_DIR}/") for f in tree.files)
        split = tree.eval_dir + "/" if tree.eval_dir else "a hash split of train/"
        how = choose_loading(tree, loading, budget_mb)
        cached = "cached" if folders.cached(tree) else "not decoded yet"
        cached = f"{how.how}: {how.why}" if how.how == "stream" else f"in memory, {cached}"
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
