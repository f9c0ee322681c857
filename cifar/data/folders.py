"""Labelled image folders -> :class:`~cifar.data.dataset.ImageData` (the tutorial's ``MyData``
layout).

    DIR/train/<class>/**/<image>    training images; the class is the folder right below train/
    DIR/val/<class>/**/<image>      evaluated every epoch (``DIR/test/`` if there is no val/);
                                    without either, ``val_fraction`` of each class's training
                                    files is held out, chosen by a hash of the file's path

Every file is decoded once by :func:`cifar.io.images.decode_batch`, the prediction job's own decode
(RGB, EXIF rotation, bilinear resize to the model's input size), so training and prediction see
identical pixels.
Decoding runs in parallel Ray tasks when Ray is up. The pixels are cached next to the data (or,
for URIs and read-only trees, in this node's cache folder) under a key made of every file's
path, size and mtime: the next run starts from the cache, and a changed, added or removed file
makes a new one. A file that cannot be decoded is skipped, counted and listed, never fatal.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from filelock import FileLock

from cifar.data.cifar10 import SIDE
from cifar.data.dataset import DataError, DataRequest, ImageData, Loading
from cifar.data.loading import choose_loading
from cifar.data.streamed import FileSplits, decode_files
from cifar.env import cache_root
from cifar.io import storage

log = logging.getLogger(__name__)
progress = logging.getLogger("cifar.progress")

TRAIN_DIR = "train"
EVAL_DIRS = ("val", "test")  # the first one present is evaluated
CACHE_DIR = ".cifar-ray-cache"
GENERATED_MARKER = ".cifar-ray-generated"  # written by cifar.data.synthetic.write_folders
_CACHE_VERSION = 1  # bump when decoding changes what pixels a file gives
_LISTED_SKIPS = 1000  # skipped files listed by name in summary.json (all are counted)


def is_folder_tree(root: str) -> bool:
    """True if ``root`` has a ``train/`` folder (local path or URI)."""
    return storage.is_dir(storage.join(root, TRAIN_DIR))


@dataclass
class Tree:
    """What a folder tree holds, before any file is opened."""

    root: str
    classes: tuple[str, ...]
    eval_dir: str | None  # "val", "test" or None (split from train/)
    files: list[storage.FileEntry]  # under train/ and eval_dir, rel to root, sorted
    size: int  # pixels a side, decoded

    def paths(self) -> list[str]:
        return [storage.join(self.root, f.rel) for f in self.files]

    def cache_key(self) -> str:
        h = hashlib.sha256(f"v{_CACHE_VERSION} size={self.size}\n".encode())
        for f in self.files:
            h.update(f"{f.rel}\0{f.size}\0{f.mtime_ns}\n".encode())
        return h.hexdigest()[:20]


def scan(root: str, size: int = SIDE) -> Tree:
    """List the tree and check its shape; fails with :class:`DataError` before decoding."""
    train = storage.join(root, TRAIN_DIR)
    if not storage.is_dir(train):
        raise DataError(
            f"{root} has no {TRAIN_DIR}/ folder. An image-folder dataset is laid out as "
            f"{root}/train/<class>/<image> (plus {root}/val/<class>/<image> to evaluate on)."
        )
    classes = tuple(storage.list_dirs(train))
    if len(classes) < 2:
        raise DataError(
            f"{train} holds {len(classes)} class folder(s) ({', '.join(classes) or 'none'}); "
            "training needs at least two: one folder per class, named after it, each holding "
            "that class's images."
        )
    eval_dir = next((d for d in EVAL_DIRS if storage.is_dir(storage.join(root, d))), None)
    files = [
        storage.FileEntry(f"{TRAIN_DIR}/{e.rel}", e.size, e.mtime_ns)
        for e in storage.list_files(train)
    ]
    if eval_dir is not None:
        unknown = sorted(set(storage.list_dirs(storage.join(root, eval_dir))) - set(classes))
        if unknown:
            raise DataError(
                f"{root}/{eval_dir}/ has class folders that {TRAIN_DIR}/ lacks: "
                f"{', '.join(unknown)}. The classes are the folders in {TRAIN_DIR}/ "
                f"({', '.join(classes)}); rename or remove the others."
            )
        files += [
            storage.FileEntry(f"{eval_dir}/{e.rel}", e.size, e.mtime_ns)
            for e in storage.list_files(storage.join(root, eval_dir))
        ]
    return Tree(root, classes, eval_dir, files, size)


# --------------------------------------------------------------------------- decoding + cache


def _cache_dir(root: str) -> Path:
    """``<root>/.cifar-ray-cache`` for a writable local tree, else a folder of this node's cache
    named after the tree."""
    if not storage.is_uri(root):
        d = Path(root).expanduser().resolve() / CACHE_DIR
        try:
            d.mkdir(exist_ok=True)
            if os.access(d, os.W_OK):
                return d
        except OSError:
            pass
    name = hashlib.sha1(root.encode()).hexdigest()[:16]
    d = cache_root() / "folders" / name
    d.mkdir(parents=True, exist_ok=True)
    return d


def cached(tree: Tree) -> bool:
    """True if the tree's pixels are in the cache (the next load decodes nothing)."""
    return (_cache_dir(tree.root) / f"decoded-{tree.cache_key()}.npz").is_file()


def decoded_pixels(tree: Tree) -> tuple[np.ndarray, list[str], dict[str, Any]]:
    """Pixels and errors for every file of ``tree``, from the cache or decoded (and cached).

    Concurrent callers (several jobs, or nodes sharing the folder) decode once: the others wait
    on a file lock and then read the cache. Returns (images, errors, decode stats)."""
    d = _cache_dir(tree.root)
    target = d / f"decoded-{tree.cache_key()}.npz"  # cached() looks here too
    with FileLock(str(d / ".lock")):
        t0 = time.perf_counter()
        if target.is_file():
            with np.load(target, allow_pickle=False) as z:
                images, errors = z["images"], [str(e) for e in z["errors"]]
            if len(errors) == len(tree.files):
                return images, errors, _stats("hit", target, len(errors), t0)
        images, errors = decode_files(tree.paths(), tree.size)
        stats = _stats("miss", target, len(errors), t0)
        fd, tmp = tempfile.mkstemp(dir=d, suffix=".npz.part")
        with os.fdopen(fd, "wb") as f:
            np.savez(f, images=images, errors=np.array(errors, dtype=str))
        os.replace(tmp, target)
        for old in d.glob("decoded-*.npz"):  # one cache per tree: drop stale ones
            if old != target:
                old.unlink(missing_ok=True)
    return images, errors, stats


def _stats(cache: str, target: Path, n: int, t0: float) -> dict[str, Any]:
    seconds = time.perf_counter() - t0
    return {
        "files": n,
        "cache": cache,
        "cache_file": str(target),
        "seconds": round(seconds, 3),
        "images_per_s": round(n / seconds) if seconds > 0 else None,
    }


# --------------------------------------------------------------------------- the dataset


def split_rank(rel: str) -> str:
    """Sort key that puts a class's files in a fixed pseudo-random order (hash of the path
    below train/), so a held-out split is the same on every run, worker and machine."""
    return hashlib.sha1(rel.encode()).hexdigest()


def held_out_count(n: int, fraction: float) -> int:
    """How many of a class's ``n`` readable training files to evaluate on: ``round(n *
    fraction)``, at least 1 and at most ``n - 1`` (a class keeps a training image)."""
    if n < 2 or fraction <= 0:
        return 0
    return min(n - 1, max(1, round(n * fraction)))


def assign(
    tree: Tree, errors: list[str], val_fraction: float
) -> tuple[dict[int, list[int]], dict[int, list[int]], list[dict[str, str]]]:
    """(training files, evaluated files, skipped files): indices into ``tree.files`` per class
    index, and the files that cannot be used with the reason (``errors``: one per file, ``""``
    for a readable one). Fails with what to do when a class or the evaluation split is empty."""
    root = tree.root
    index = {c: i for i, c in enumerate(tree.classes)}
    train: dict[int, list[int]] = {i: [] for i in range(len(tree.classes))}
    held: dict[int, list[int]] = {i: [] for i in range(len(tree.classes))}
    failed: dict[str, int] = {}
    skipped = []
    for i, f in enumerate(tree.files):
        parts = f.rel.split("/")
        reason = errors[i] or ("" if len(parts) > 2 else "not inside a class folder")
        if reason:
            skipped.append({"path": storage.join(root, f.rel), "error": reason})
            if len(parts) > 2 and parts[0] == TRAIN_DIR:
                failed[parts[1]] = failed.get(parts[1], 0) + 1
            continue
        (train if parts[0] == TRAIN_DIR else held)[index[parts[1]]].append(i)
    empty = [c for c, i in index.items() if not train[i]]
    if empty:
        raise DataError(
            "no readable training image in the class folder(s) "
            + ", ".join(f"{root}/{TRAIN_DIR}/{c} ({failed.get(c, 0)} unreadable)" for c in empty)
            + ". Each class needs at least one image PIL can open; add images or remove the "
            "folder."
        )
    if tree.eval_dir is None:
        for c, members in train.items():
            members.sort(key=lambda i: split_rank(tree.files[i].rel))
            k = held_out_count(len(members), val_fraction)
            held[c], train[c] = sorted(members[:k]), sorted(members[k:])
    if not any(held.values()):
        where = (
            f"{root}/{tree.eval_dir}/ has no readable image"
            if tree.eval_dir
            else f"--val-fraction {val_fraction:g} holds out no image"
        )
        raise DataError(
            f"the evaluation split is empty: {where}. Put images in {root}/val/<class>/, or "
            "pass a --val-fraction such as 0.1 to hold out part of each class's training files."
        )
    return train, held, skipped


def list_tree(tree: Tree, val_fraction: float = 0.1, augment: bool = False) -> FileSplits:
    """Label by folder and split, decoding nothing: the dataset as file lists for the workers
    to stream. The split is :func:`load_tree`'s, except that files no decoder can read are only
    found (and skipped) while training."""
    root = tree.root
    train, held, skipped = assign(tree, [""] * len(tree.files), val_fraction)

    def split(groups: dict[int, list[int]]) -> tuple[list[str], torch.Tensor]:
        pairs = sorted((i, c) for c, members in groups.items() for i in members)
        paths = [storage.join(root, tree.files[i].rel) for i, _ in pairs]
        return paths, torch.tensor([c for _, c in pairs], dtype=torch.int64)

    train_paths, train_labels = split(train)
    test_paths, test_labels = split(held)
    return FileSplits(
        train_paths,
        train_labels,
        test_paths,
        test_labels,
        tree.classes,
        tree.size,
        root=root,
        info=_info(tree, val_fraction, skipped),
        augment=augment,
    )


def _info(tree: Tree, val_fraction: float, skipped: list[dict[str, str]]) -> dict[str, Any]:
    """What the job reports about a tree: its evaluation split, whether it was generated, the
    files skipped (all counted, the first ones listed)."""
    return {
        "eval_split": tree.eval_dir or f"{val_fraction:g} of train/ by path hash",
        "generated": storage.exists(storage.join(tree.root, GENERATED_MARKER)),
        "skipped": len(skipped),
        "skipped_files": skipped[:_LISTED_SKIPS],
    }


def load_folders(root: str, val_fraction: float = 0.1, size: int = SIDE) -> ImageData:
    """Scan, decode at ``size`` (or read the cache), label by folder, split: the dataset in
    memory."""
    return load_tree(scan(root, size), val_fraction)


def load_tree(tree: Tree, val_fraction: float = 0.1) -> ImageData:
    """:func:`load_folders` of a scanned tree."""
    root = tree.root
    images, errors, decode = decoded_pixels(tree)
    train, held, skipped = assign(tree, errors, val_fraction)

    def split(groups: dict[int, list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        pairs = sorted((i, c) for c, members in groups.items() for i in members)
        idx = np.array([i for i, _ in pairs], dtype=np.int64)
        labels = np.array([c for _, c in pairs], dtype=np.int64)
        return torch.from_numpy(images[idx]), torch.from_numpy(labels)

    train_x, train_y = split(train)
    test_x, test_y = split(held)
    return ImageData(
        train_images=train_x,
        train_labels=train_y,
        test_images=test_x,
        test_labels=test_y,
        classes=tree.classes,
        kind="folder",
        root=root,
        info={**_info(tree, val_fraction, skipped), "decode": decode},
        resize="files",
    )


class FolderSource:
    """``--data-dir`` holding ``train/<class>/...``: decoded into memory (cached) while the
    pixels fit the memory budget, else streamed by every worker (:func:`choose_loading`)."""

    def __init__(self, request: DataRequest) -> None:
        self.request = request
        self.tree = scan(request.data_dir, request.size)

    def loading(self) -> Loading:
        r = self.request
        return choose_loading(len(self.tree.files), self.tree.size, r.loading, r.budget_mb)

    def describe(self) -> tuple[str, int | None]:
        tree = self.tree
        n_train = sum(f.rel.startswith(f"{TRAIN_DIR}/") for f in tree.files)
        split = tree.eval_dir + "/" if tree.eval_dir else "a hash split of train/"
        how = self.loading()
        state = "cached" if cached(tree) else "not decoded yet"
        state = f"{how.how}: {how.why}" if how.how != "memory" else f"in memory, {state}"
        names = ", ".join(tree.classes[:8]) + (", ..." if len(tree.classes) > 8 else "")
        return (
            f"image folders {tree.root}: {len(tree.classes)} classes ({names}), {n_train} "
            f"training files, evaluated on {split} ({state})",
            n_train,
        )

    def load(self) -> tuple[ImageData | FileSplits, Loading]:
        how = self.loading()
        if how.how == "memory":
            return load_tree(self.tree, self.request.val_fraction), how
        return list_tree(self.tree, self.request.val_fraction, self.request.augment), how
