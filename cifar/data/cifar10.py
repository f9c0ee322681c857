"""CIFAR-10 in its python format on disk: the safe reader and the checksummed download.

The reader understands the standard ``cifar-10-batches-py`` layout (``data_batch_1..5``,
``test_batch``, ``batches.meta``). Its pickles are read with an unpickler that only builds plain
containers and numpy arrays, so a tampered batch file cannot run code.
"""

from __future__ import annotations

import hashlib
import logging
import os
import pickle
import tarfile
import tempfile
import urllib.request
from pathlib import Path

import numpy as np
import torch
from filelock import FileLock

from cifar.data.dataset import DataError, DataRequest, ImageData, Loading
from cifar.data.loading import memory_only
from cifar.io import storage

log = logging.getLogger(__name__)

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_ARCHIVE = "cifar-10-python.tar.gz"
CIFAR10_ARCHIVE_MD5 = "c58f30108f718f92721af3b95e74349a"
BATCH_DIR = "cifar-10-batches-py"
CIFAR10_CLASSES: tuple[str, ...] = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)
SIDE = 32  # CIFAR rows are 3 x 32 x 32 pixels
TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILE = "test_batch"
META_FILE = "batches.meta"
# MD5s of the official files, to tell the real CIFAR-10 from other CIFAR-format sets.
OFFICIAL_MD5 = {
    "data_batch_1": "c99cafc152244af753f735de768cd75f",
    "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
    "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
    "data_batch_4": "634d18415352ddfa80567beed471001a",
    "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
    "test_batch": "40351d587109b95175f43aff81a1287e",
}
SYNTHETIC_MARKER = "cifar.synthetic"  # written into generated sets: never rename


# --------------------------------------------------------------------------- safe reading


class _RefusedGlobal(pickle.UnpicklingError):
    pass


class _SafeUnpickler(pickle.Unpickler):
    """Builds dicts, lists, strings, numbers and numpy arrays; refuses every other global."""

    _ALLOWED: frozenset[tuple[str, str]] = frozenset(
        {
            ("numpy.core.multiarray", "_reconstruct"),
            ("numpy._core.multiarray", "_reconstruct"),
            ("numpy.core.multiarray", "scalar"),
            ("numpy._core.multiarray", "scalar"),
            ("numpy", "ndarray"),
            ("numpy", "dtype"),
            ("_codecs", "encode"),  # how protocol-2 pickles from Python 3 store raw bytes
        }
    )

    def find_class(self, module: str, name: str):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise _RefusedGlobal(
            f"refusing to load global '{module}.{name}': CIFAR batch files hold only "
            "plain containers and numpy arrays"
        )


def safe_unpickle(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            obj = _SafeUnpickler(f, encoding="latin1").load()
    except _RefusedGlobal as e:
        raise DataError(
            f"{path} is not a plain CIFAR batch file and was not loaded ({e}). It may have been "
            "tampered with: delete it and re-download with --download, or regenerate it with "
            "`cifar-data synthetic DIR`."
        ) from e
    except (
        pickle.UnpicklingError,
        EOFError,
        ValueError,
        OSError,
        IndexError,
        KeyError,
        TypeError,
    ) as e:
        raise DataError(
            f"{path} is corrupt or truncated ({type(e).__name__}: {e}). Delete the folder "
            f"{path.parent} and download again with --download."
        ) from e
    if not isinstance(obj, dict):
        raise DataError(f"{path} holds a {type(obj).__name__}, expected a CIFAR batch dict.")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in obj.items()}


def read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One batch file -> (uint8 images [N, 3, 32, 32], int64 labels [N])."""
    d = safe_unpickle(path)
    try:
        data = np.asarray(d["data"])
        labels = np.asarray(d["labels"], dtype=np.int64)
    except KeyError as e:
        raise DataError(f"{path} has no {e} entry: not a CIFAR-10 batch file.") from e
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise DataError(
            f"{path}: 'data' is {data.dtype} {data.shape}, expected uint8 [N, 3072] "
            "(CIFAR-10 python format)."
        )
    if labels.shape != (data.shape[0],):
        raise DataError(f"{path}: {labels.shape[0]} labels for {data.shape[0]} images.")
    return data.reshape(-1, 3, 32, 32), labels


def _md5(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def batch_dir(data_dir: str | os.PathLike) -> Path:
    return Path(data_dir).expanduser() / BATCH_DIR


def has_cifar10(data_dir: str | os.PathLike) -> bool:
    d = batch_dir(data_dir)
    return all((d / f).is_file() for f in (*TRAIN_FILES, TEST_FILE, META_FILE))


def load_cifar10(data_dir: str | os.PathLike) -> ImageData:
    """Read ``<data_dir>/cifar-10-batches-py`` into memory (no code in the pickles runs)."""
    d = batch_dir(data_dir)
    missing = [f for f in (*TRAIN_FILES, TEST_FILE, META_FILE) if not (d / f).is_file()]
    if missing:
        raise DataError(
            f"CIFAR-10 not found: {d} lacks {', '.join(missing)}. Pass --download to fetch the "
            f"official archive ({CIFAR10_URL}) into {Path(data_dir).expanduser()}, place an "
            f"extracted '{BATCH_DIR}' folder there, or generate a stand-in with "
            f"`cifar-data synthetic {Path(data_dir).expanduser()}`. To train on your own "
            "images instead, lay them out as DIR/train/<class>/<image> (and DIR/val/<class>/) "
            "and pass --data-dir DIR."
        )
    meta = safe_unpickle(d / META_FILE)
    classes = tuple(str(c) for c in meta.get("label_names", ()))
    if not classes:
        raise DataError(f"{d / META_FILE} has no 'label_names'.")
    parts = [read_batch(d / f) for f in TRAIN_FILES]
    train_x = np.concatenate([p[0] for p in parts])
    train_y = np.concatenate([p[1] for p in parts])
    test_x, test_y = read_batch(d / TEST_FILE)
    for name, y in (("training", train_y), ("test", test_y)):
        if y.size and (y.min() < 0 or y.max() >= len(classes)):
            raise DataError(f"{d}: {name} labels outside 0..{len(classes) - 1}.")
    if meta.get("generator") == SYNTHETIC_MARKER:
        kind = "synthetic"
    elif all(_md5(d / f) == m for f, m in OFFICIAL_MD5.items()):
        kind = "cifar10"
    else:
        kind = "custom"
    return ImageData(
        train_images=torch.from_numpy(np.ascontiguousarray(train_x)),
        train_labels=torch.from_numpy(train_y),
        test_images=torch.from_numpy(np.ascontiguousarray(test_x)),
        test_labels=torch.from_numpy(test_y),
        classes=classes,
        kind=kind,
        root=str(d),
    )


# --------------------------------------------------------------------------- download


def _safe_extract(archive: Path, dest: Path) -> None:
    with tarfile.open(archive, "r:gz") as tar:
        for m in tar.getmembers():
            target = (dest / m.name).resolve()
            if not target.is_relative_to(dest.resolve()) or m.issym() or m.islnk():
                raise DataError(f"{archive} contains an unsafe member '{m.name}'; not extracted.")
        tar.extractall(dest, filter="data")


def download_cifar10(
    data_dir: str | os.PathLike, url: str = CIFAR10_URL, md5: str = CIFAR10_ARCHIVE_MD5
) -> Path:
    """Download, verify (MD5) and extract the official archive into ``data_dir``.

    Safe to call from many workers at once: a file lock in ``data_dir`` makes one of them
    download while the others wait and then find the files in place.
    """
    root = Path(data_dir).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    with FileLock(str(root / ".cifar10.lock")):
        if has_cifar10(root):
            return batch_dir(root)
        archive = root / CIFAR10_ARCHIVE
        if not (archive.is_file() and _md5(archive) == md5):
            log.info("downloading %s -> %s", url, archive)
            fd, tmp = tempfile.mkstemp(dir=root, suffix=".part")
            try:
                with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=60) as r:
                    _copy_with_progress(r, out, int(r.headers.get("Content-Length") or 0))
                got = _md5(Path(tmp))
                if got != md5:
                    raise DataError(
                        f"downloaded {url} but its MD5 is {got}, expected {md5}: the download is "
                        f"corrupt or was intercepted. Nothing was extracted; try again, or place "
                        f"a verified {CIFAR10_ARCHIVE} in {root}."
                    )
                os.replace(tmp, archive)
            except OSError as e:
                raise DataError(
                    f"could not download CIFAR-10 from {url} ({e}). If this machine is offline, "
                    f"copy {CIFAR10_ARCHIVE} (MD5 {md5}) or an extracted '{BATCH_DIR}' folder "
                    f"into {root}, or train on a generated set: `cifar-data synthetic "
                    f"{root}`."
                ) from e
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
        _safe_extract(archive, root)
        if not has_cifar10(root):
            raise DataError(f"{archive} did not contain {BATCH_DIR}/ with all batch files.")
        return batch_dir(root)


def _copy_with_progress(src, dst, total: int) -> None:
    """Copy a response to a file with a progress bar (tqdm writes it only to a terminal)."""
    from tqdm import tqdm

    with tqdm(total=total or None, unit="B", unit_scale=True, desc="CIFAR-10", disable=None) as bar:
        while block := src.read(1 << 20):
            dst.write(block)
            bar.update(len(block))


def prepare_data(data_dir: str | os.PathLike, download: bool) -> ImageData:
    """Load the dataset, downloading it first (once per node, under a lock) when asked."""
    if download and not has_cifar10(data_dir):
        download_cifar10(data_dir)
    return load_cifar10(data_dir)


class CifarSource:
    """``--data-dir`` holding (or to hold) CIFAR-format python files: a local folder (CIFAR-10
    downloaded into it when missing and allowed) or a URI (copied to this node's cache once)."""

    def __init__(self, request: DataRequest) -> None:
        self.request = request
        self.uri = storage.is_uri(request.data_dir)

    def describe(self) -> tuple[str, int | None]:
        d = self.request.data_dir
        if self.uri:
            batches = self._batches()
            return f"CIFAR-format files in {batches} (copied to this node's cache)", 50000
        if has_cifar10(d):
            return f"CIFAR-format files in {batch_dir(d)}", 50000
        if self.request.download:
            return f"CIFAR-10 will be downloaded into {d} ({CIFAR10_URL})", 50000
        load_cifar10(d)  # raises the not-found error that says what to do
        raise AssertionError("unreachable")

    def load(self) -> tuple[ImageData, Loading]:
        how = memory_only(self.request.loading, "CIFAR-format files")
        if self.uri:
            return load_cifar10(storage.local_tree(self._batches()).parent), how
        return prepare_data(self.request.data_dir, self.request.download), how

    def _batches(self) -> str:
        """``<data_dir>/cifar-10-batches-py`` in object storage, or the error naming what to
        upload there."""
        d = self.request.data_dir
        batches = storage.join(d, BATCH_DIR)
        if not storage.is_dir(batches):
            storage.check_bucket(d)
            raise DataError(
                f"--data-dir {d} holds neither image folders (train/<class>/...) nor "
                f"CIFAR-format files ({BATCH_DIR}/). Upload one of them there, e.g. `aws s3 "
                f"sync data/{BATCH_DIR} {batches}`."
            )
        return batches
