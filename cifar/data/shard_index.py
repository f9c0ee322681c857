"""Shard trees, before any pixel: their layout, an index of every sample with its class, and the
split (:mod:`cifar.data.shards` reads the pixels).

    DIR/train/*.tar | *.parquet     training samples (no class folders: the labels are inside)
    DIR/val/... (or DIR/test/...)   evaluated every epoch; without either, ``val_fraction`` of
                                    each class's training samples, chosen by a hash of shard+key
    DIR/classes.txt                 optional: the class names, one a line, in label order

What a sample is, and how a shard is read, is :mod:`cifar.io.shards`. Class names come from
``classes.txt``, else from the Parquet files' ``ClassLabel`` metadata, else from the labels
themselves (integers sorted numerically, or names sorted). A sample without a usable image or
label is skipped and named ``<shard>#<key>``; a shard that breaks off gives the samples before
the break and is named.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow.fs
import torch

from cifar.data.dataset import DataError
from cifar.data.folders import EVAL_DIRS, TRAIN_DIR, held_out_count, split_rank
from cifar.io import shards as fmt
from cifar.io import storage

log = logging.getLogger(__name__)

LISTED_SKIPS = 1000  # skipped samples and shards listed by name in summary.json (all counted)


def is_shard_tree(root: str) -> bool:
    """True if ``root/train/`` holds shard files (``*.tar``, ``*.parquet``) and no folders."""
    entries = storage.listing(storage.join(root, TRAIN_DIR))
    folders = [e for e in entries if e.type == pyarrow.fs.FileType.Directory]
    shards = [e for e in entries if e.type == pyarrow.fs.FileType.File and fmt.is_shard(e.path)]
    return bool(shards) and not [f for f in folders if not f.base_name.startswith(".")]


@dataclass
class Layout:
    """What a shard tree holds, before any shard is opened."""

    root: str
    eval_dir: str | None  # "val", "test" or None (split from train/)
    shards: list[str]  # relative to root: train/... then eval_dir/..., each sorted
    classes: tuple[str, ...] | None  # classes.txt

    def path(self, rel: str) -> str:
        return storage.join(self.root, rel)


def scan(root: str) -> Layout:
    eval_dir = next((d for d in EVAL_DIRS if storage.is_dir(storage.join(root, d))), None)
    rels = []
    for split in (TRAIN_DIR, eval_dir) if eval_dir else (TRAIN_DIR,):
        found = storage.list_files(storage.join(root, split))
        rels += [f"{split}/{e.rel}" for e in found if fmt.is_shard(e.rel)]
    listed = storage.join(root, fmt.CLASSES_FILE)
    names = None
    if storage.is_file(listed):
        names = tuple(n.strip() for n in storage.read_text(listed).splitlines() if n.strip())
    return Layout(root, eval_dir, rels, names)


# --------------------------------------------------------------------------- the index


@dataclass
class ShardSet:
    """Samples and where their images lie, as numpy arrays (cheap to pickle, never copied by
    forked loader processes)."""

    shards: np.ndarray  # str [K]: shard paths
    shard: np.ndarray  # int32 [N]: the shard of each sample
    at: np.ndarray  # int64 [N]: tar: image offset; Parquet: row group
    size: np.ndarray  # int64 [N]: tar: image bytes; Parquet: row in its group
    keys: np.ndarray  # bytes [N]: tar key or Parquet row, utf-8
    labels: torch.Tensor  # int64 [N]: class index
    column: str | None = None  # Parquet: the image column

    def __len__(self) -> int:
        return len(self.labels)

    def take(self, idx: np.ndarray) -> ShardSet:
        return ShardSet(
            self.shards,
            self.shard[idx],
            self.at[idx],
            self.size[idx],
            self.keys[idx],
            self.labels[torch.from_numpy(idx)],
            self.column,
        )

    def name(self, i: int) -> str:
        return f"{self.shards[self.shard[i]]}#{self.keys[i].decode()}"


@dataclass
class Table:
    """Every sample of a shard tree that has a class, train/ first."""

    layout: Layout
    classes: tuple[str, ...]
    samples: ShardSet
    in_train: np.ndarray  # bool [N]
    skipped: list[dict[str, str]]  # samples without a usable label or image; broken shards
    formats: str  # "webdataset", "parquet" or both


def index(layout: Layout, image_column: str | None, label_column: str) -> Table:
    """Index every shard (in parallel Ray tasks when Ray is up) and give every sample a class."""
    paths = [layout.path(r) for r in layout.shards]
    try:
        found = parallel(fmt.index_shard, [(p, image_column, label_column) for p in paths])
    except fmt.ColumnError as e:
        raise DataError(str(getattr(e, "cause", e))) from None  # from a Ray task: its cause
    columns = sorted({f.column for f in found if f.column})
    if len(columns) > 1:
        raise DataError(
            f"the Parquet files in {layout.root} keep their images in different columns "
            f"({', '.join(columns)}); name the one to read with --image-column."
        )
    in_train = [r.startswith(f"{TRAIN_DIR}/") for r in layout.shards]
    classes, lookup, said = class_names(
        layout, [f for f, t in zip(found, in_train, strict=True) if t]
    )
    rows: list[tuple[int, int, int, bytes, int, bool]] = []
    skipped = []
    for k, (ix, train) in enumerate(zip(found, in_train, strict=True)):
        for s in ix.samples:
            c = lookup.get(s.label) if s.label is not None else None
            problem = s.problem or (
                "no label" if s.label is None else f"label {s.label!r} is not one of {said}"
            )
            if c is None or s.problem:
                skipped.append({"path": f"{ix.path}#{s.key}", "error": problem})
            else:
                rows.append((k, s.at, s.size, s.key.encode(), c, train))
        if ix.error:
            log.warning("%s: read %d sample(s), then: %s", ix.path, len(ix.samples), ix.error)
            skipped.append({"path": ix.path, "error": f"read {len(ix.samples)}, then {ix.error}"})
    cols = list(zip(*rows, strict=True)) if rows else [()] * 6
    samples = ShardSet(
        np.array(paths, dtype=np.str_),
        np.array(cols[0], dtype=np.int32),
        np.array(cols[1], dtype=np.int64),
        np.array(cols[2], dtype=np.int64),
        np.array(cols[3], dtype=np.bytes_),
        torch.tensor(cols[4], dtype=torch.int64),
        columns[0] if columns else None,
    )
    kinds = sorted({"parquet" if p.lower().endswith(fmt.PARQUET) else "webdataset" for p in paths})
    return Table(layout, classes, samples, np.array(cols[5], dtype=bool), skipped, "+".join(kinds))


def class_names(
    layout: Layout, train: list[fmt.ShardIndex]
) -> tuple[tuple[str, ...], dict[Any, int], str]:
    """(class names, label as stored -> class index, what named them)."""
    said, names = "the classes in classes.txt", layout.classes
    if names is None:
        meta = {f.names for f in train if f.names}
        if len(meta) > 1:
            raise DataError(
                f"the Parquet files in {layout.root}/train/ name different classes in their "
                "ClassLabel metadata; write the names to use, one a line, in "
                f"{layout.root}/{fmt.CLASSES_FILE}."
            )
        said, names = "the Parquet files' ClassLabel names", next(iter(meta), None)
    if names is not None:
        lookup: dict[Any, int] = {i: i for i in range(len(names))}
        lookup.update({n: i for i, n in enumerate(names)})
    else:
        raw = {s.label for f in train for s in f.samples if s.label is not None and not s.problem}
        ints = sorted(v for v in raw if isinstance(v, int))
        if ints and len(ints) < len(raw):
            raise DataError(
                f"the training shards in {layout.root} label some samples by number and some by "
                f"name; write the class names, one a line, in label order, in "
                f"{layout.root}/{fmt.CLASSES_FILE}."
            )
        said = "the labels of the training shards"
        values = ints or sorted(raw)
        names = tuple(str(v) for v in values)
        lookup = {v: i for i, v in enumerate(values)} | {n: i for i, n in enumerate(names)}
    if len(names) < 2:
        raise DataError(
            f"{layout.root}: {said} give {len(names)} class(es); training needs at least two. "
            f"Label the samples (.cls, .txt or .json; a Parquet label column) or list the "
            f"classes in {layout.root}/{fmt.CLASSES_FILE}."
        )
    return tuple(names), lookup, f"the {len(names)} classes ({said})"


def assign(
    table: Table, errors: Sequence[str], val_fraction: float
) -> tuple[np.ndarray, np.ndarray, list[dict[str, str]]]:
    """(training, evaluated, skipped): sample indices of ``table`` and the samples that cannot
    be used (``errors``: one per sample, ``""`` when usable). As folder trees do: the hash split
    when there is no evaluation folder, an error that says what to do for an empty class or an
    empty evaluation split."""
    s, n = table.samples, len(table.samples)
    bad = np.array([bool(e) for e in errors], dtype=bool).reshape(n)
    skipped = table.skipped + [{"path": s.name(i), "error": errors[i]} for i in np.flatnonzero(bad)]
    labels = s.labels.numpy()
    train = np.flatnonzero(table.in_train & ~bad)
    held = np.flatnonzero(~table.in_train & ~bad)
    if table.layout.eval_dir is None:
        keep, held_out = [], []
        shard_rel = table.layout.shards
        for c in range(len(table.classes)):
            members = sorted(
                train[labels[train] == c],
                key=lambda i: split_rank(f"{shard_rel[s.shard[i]]}#{s.keys[i].decode()}"),
            )
            k = held_out_count(len(members), val_fraction)
            held_out += members[:k]
            keep += members[k:]
        train, held = (
            np.array(sorted(keep), dtype=np.int64),
            np.array(sorted(held_out), dtype=np.int64),
        )
    root = table.layout.root
    empty = [c for i, c in enumerate(table.classes) if not (labels[train] == i).any()]
    if empty:
        raise DataError(
            f"no usable training sample of class(es) {', '.join(empty)} in {root}/train/ "
            f"({len(skipped)} skipped: see the log). Each class needs a training sample."
        )
    if not len(held):
        where = (
            f"{root}/{table.layout.eval_dir}/ has no usable sample"
            if table.layout.eval_dir
            else (f"--val-fraction {val_fraction:g} holds out no sample")
        )
        raise DataError(
            f"the evaluation split is empty: {where}. Put shards in {root}/val/, or pass a "
            "--val-fraction such as 0.1 to hold out part of each class's training samples."
        )
    return train, held, skipped


def info(table: Table, val_fraction: float, skipped: list[dict[str, str]]) -> dict[str, Any]:
    return {
        "eval_split": table.layout.eval_dir or f"{val_fraction:g} of train/ by shard and key hash",
        "format": table.formats,
        "shards": len(table.layout.shards),
        "skipped": len(skipped),
        "skipped_files": skipped[:LISTED_SKIPS],
    }


def parallel(fn: Callable, calls: list[tuple]) -> list:
    """``[fn(*c) for c in calls]``, in Ray tasks (one CPU each, a bounded window) when this
    process is connected to Ray and there is more than one call."""
    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized() or len(calls) < 2:
        return [fn(*c) for c in calls]
    task = ray.remote(num_cpus=1)(fn)
    window = max(2, 2 * int(ray.cluster_resources().get("CPU", 1)))
    out: list[Any] = [None] * len(calls)
    pending: dict[Any, int] = {}
    queue = list(range(len(calls)))
    while queue or pending:
        while queue and len(pending) < window:
            i = queue.pop(0)
            pending[task.remote(*calls[i])] = i
        done, _ = ray.wait(list(pending), num_returns=1)
        for ref in done:
            out[pending.pop(ref)] = ray.get(ref)
    return out
