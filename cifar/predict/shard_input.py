"""Shards (WebDataset tars, Parquet files) as prediction input: one item, and one result row, per
sample, named ``<shard>#<key>`` (a tar) or ``<file>#<row>`` (Parquet).

Where it plugs in. A shard is a kind of *file*, not a kind of ``--input``: one shard, a folder
or prefix of them, a glob, or a folder mixing shards and images all list shard files. So shards
are one step after :func:`~cifar.predict.inputs.list_inputs` (:func:`expand_shards`), not a row
of ``INPUT_KINDS``: a row would repeat the four listings and still miss the shards in a folder
of images. In a mixed folder, images stay files and shards become their samples; a
``classes.txt`` beside shards is their class names, not an input; ``--extensions`` filters the
files listed (a shard by its ``.tar``/``.parquet`` name).

Keys before Ray. Exactly-once bookkeeping (``--resume`` keeps the committed ``path``\\ s), the
dry run's count and the progress total need every sample's key before Ray starts, so the driver
indexes every shard (:func:`cifar.io.shards.index_shard`, in threads): a local tar's headers
only, a Parquet file's label column and footer, a tar in a bucket streamed through once. The
index also says where each image lies, so the decode stage reads no shard to find a sample.

Read once, decoded as files are. A decode task reads its batch's samples of one shard in one
ranged read (a tar: the span from its first to its last image, or image by image when that span
would be mostly other bytes; Parquet: the image column of each row group once) and decodes the
bytes with :func:`~cifar.io.images.decode_image`, the decode of every file. Rows stay in shard
order, so the batches of a shard read consecutive spans: each shard is read about once. Ray
Data's ``read_webdataset``/``read_parquet`` were not used: their rows have no key to count
exactly once by, a truncated tar fails their read task, and they cannot mix with listed files.

Labels. With ``--labels-from-dirs`` a sample's label is the one its shard stores (``.cls``
through ``classes.txt`` beside the shard or its folder, ``.txt``/``.json`` names, Parquet's
``ClassLabel`` names or strings; integers without names are their digits, as training names
them), matched to the model's classes as folder names are; a sample without one falls back to
its shard's folders. The flag is needed because the command, not the data, decides the result
columns and what a ``--resume`` must match: the same command evaluates a folder tree and its
shards alike, and a job without the flag never fails on labels it was not asked to read.

Bad data. A sample that cannot be decoded, or a tar key with no image, is an error row. A shard
that breaks off (truncated tar, corrupt Parquet) keeps the rows of the samples before the break
and gets one error row of its own, path ``<shard>#``, saying why and after how many samples; a
shard that cannot be read at all (a Parquet file without an image column) likewise. A row, not
just a log line: the results are where every other failure is recorded, ``_summary.json``
counts and names it with them, and ``--resume`` keeps it as committed instead of reading the
shard again. A shard that fails while decoding gives its samples' rows that reason.
"""

from __future__ import annotations

import dataclasses
import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from cifar.config import ConfigError
from cifar.io import shards as fmt
from cifar.io import storage
from cifar.io.faults import CONNECTION_KINDS, StorageError
from cifar.io.images import decode_batch, decode_into
from cifar.predict.inputs import Inputs, extension_mask, walk_uri

log = logging.getLogger(__name__)

# the columns that travel beside ``path`` to the decode stage ("" and 0 for a file)
READ_COLUMNS = ("shard", "shard_at", "shard_size", "shard_column", "shard_problem")
SHARD_EXTENSIONS = ",".join(s.lstrip(".") for s in fmt.SUFFIXES)
INDEX_THREADS = 8  # shards indexed at once on the driver (object storage: mostly waiting)


# --------------------------------------------------------------------------- listing


def expand_shards(
    found: Inputs, image_column: str | None = None, label_column: str = fmt.LABEL_COLUMN
) -> tuple[Inputs, Any]:
    """``found`` with every shard file replaced by its samples, in shard order where the shard
    was, and a pyarrow Table beside the items: :data:`READ_COLUMNS` and ``shard_label`` (the
    class name the shard stores). ``(found, None)`` when no shard was listed. The columns name
    a Parquet file's image and label columns (``--image-column``, ``--label-column``)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    is_shard = extension_mask(found.files, SHARD_EXTENSIONS)
    if not pc.any(is_shard).as_py():
        return found, None
    where = np.flatnonzero(is_shard.to_numpy(zero_copy_only=False))
    paths = found.files.filter(is_shard).to_pylist()
    names, used = _class_lists(paths)
    with ThreadPoolExecutor(min(INDEX_THREADS, len(paths))) as pool:
        indexed = list(pool.map(lambda p: index(p, image_column, label_column), paths))
    tables = [
        _sample_table(ix, listed, int(at))
        for ix, listed, at in zip(indexed, names, where, strict=True)
    ]
    n = len(found.files)
    files = pa.table(
        {
            "path": found.files,
            **_file_columns(n),
            "pos": pa.array(np.arange(n, dtype=np.int64)),
            "sub": pa.array(np.zeros(n, dtype=np.int64)),
        }
    )
    files = files.filter(
        pc.and_(pc.invert(is_shard), pc.invert(pc.is_in(found.files, pa.array(used, pa.string()))))
    )
    table = pa.concat_tables([files, *tables]).sort_by([("pos", "ascending"), ("sub", "ascending")])
    root_of = found.root_of.take(table.column("pos").combine_chunks())
    items = table.column("path").combine_chunks()
    expanded = dataclasses.replace(found, files=items, root_of=root_of)
    return expanded, table.drop_columns(["path", "pos", "sub"]).combine_chunks()


def _file_columns(n: int) -> dict[str, Any]:
    import pyarrow as pa

    empty, zero = pa.array([""] * n, pa.string()), pa.array(np.zeros(n, dtype=np.int64))
    return {
        "shard": empty,
        "shard_at": zero,
        "shard_size": zero,
        "shard_column": empty,
        "shard_problem": empty,
        "shard_label": pa.nulls(n, pa.string()),
    }


def _class_lists(shards: list[str]) -> tuple[list[tuple[str, ...] | None], list[str]]:
    """For each shard, the names in a ``classes.txt`` beside it or beside its folder (training's
    layout: DIR/classes.txt, DIR/val/*.tar), or None; and the classes.txt files read."""
    found: dict[str, tuple[str, ...] | None] = {}
    out, used = [], set()
    for shard in shards:
        folder = storage.parent(shard)
        names = None
        for where in (folder, storage.parent(folder)):
            listed = storage.join(where, fmt.CLASSES_FILE)
            if listed not in found:
                text = storage.read_text(listed) if storage.is_file(listed) else None
                found[listed] = (
                    tuple(n.strip() for n in text.splitlines() if n.strip()) if text else None
                )
            if found[listed]:
                names = found[listed]
                used.add(listed)
                break
        out.append(names)
    return out, sorted(used)


def index(
    path: str, image_column: str | None = None, label_column: str | None = fmt.LABEL_COLUMN
) -> fmt.ShardIndex:
    """Every sample of the shard ``path`` and where its image lies (no image read); a shard
    that breaks off or is no shard of images says why in ``error``. A Parquet file without the
    default label column is indexed without labels (prediction needs none); a column named by
    ``--image-column`` / ``--label-column`` that the file lacks is the command's mistake, not
    the shard's: a ConfigError naming the file's columns and the flag."""
    try:
        return fmt.index_shard(path, image_column, label_column)
    except fmt.ColumnError as e:
        if e.which == "label" and label_column == fmt.LABEL_COLUMN:
            return index(path, image_column, None)
        if e.which == "label" or image_column:
            raise ConfigError(str(e)) from None
        return fmt.ShardIndex(path, error=str(e))
    except fmt.ShardError as e:
        return fmt.ShardIndex(path, error=e.reason)


def label_name(label: int | str | None, names: tuple[str, ...] | None) -> str | None:
    """A label as stored -> the class name it means (None: none)."""
    if isinstance(label, int):
        if names is None:
            return str(label)
        return names[label] if 0 <= label < len(names) else None
    return label


def _sample_table(ix: fmt.ShardIndex, listed: tuple[str, ...] | None, pos: int):
    """One shard's rows: each sample (and, if it broke off, the shard itself) at ``pos``."""
    import pyarrow as pa

    names = listed or ix.names
    tar = not ix.path.lower().endswith(fmt.PARQUET)
    rows = [
        (
            f"{ix.path}#{s.key}",
            s.at,
            s.size,
            s.problem
            if tar and s.at == 0
            else "",  # a key without an image (a label problem: no label)
            label_name(s.label, names),
        )
        for s in ix.samples
    ]
    if ix.error:
        log.warning("%s: read %d sample(s), then: %s", ix.path, len(ix.samples), ix.error)
        said = f"the shard broke off after {len(ix.samples)} sample(s): {ix.error}"
        rows.append(
            (
                f"{ix.path}#",
                0,
                0,
                said if ix.samples else f"cannot read the shard: {ix.error}",
                None,
            )
        )
    cols = list(zip(*rows, strict=True)) if rows else [()] * 5
    n = len(rows)
    return pa.table(
        {
            "path": pa.array(cols[0], pa.string()),
            "shard": pa.array([ix.path] * n, pa.string()),
            "shard_at": pa.array(cols[1], pa.int64()),
            "shard_size": pa.array(cols[2], pa.int64()),
            "shard_column": pa.array([ix.column or ""] * n, pa.string()),
            "shard_problem": pa.array(cols[3], pa.string()),
            "shard_label": pa.array(cols[4], pa.string()),
            "pos": pa.array([pos] * n, pa.int64()),
            "sub": pa.array(np.arange(n, dtype=np.int64)),
        }
    )


def holds_shards(prefix: str) -> bool:
    """Whether the first objects listed below ``prefix`` (one chunk of the walk a streamed
    listing starts with) include a shard: such a prefix is listed before Ray, its shards
    indexed, instead of streamed as loose files."""
    first = next(iter(walk_uri(prefix)), None)
    return first is not None and extension_mask(first, SHARD_EXTENSIONS).true_count > 0


def read_columns(samples) -> dict[str, Any] | None:
    """What the decode stage needs beside ``path``: pyarrow arrays by name (None: no shard)."""
    return (
        None if samples is None else {n: samples.column(n).combine_chunks() for n in READ_COLUMNS}
    )


def describe(shards: dict[str, Any] | None) -> str:
    """The dry run's words for the shard samples among the items ("" when none)."""
    if shards is None:
        return ""
    import pyarrow.compute as pc

    shard = shards["shard"]
    inside = pc.not_equal(shard, "")
    n = pc.sum(inside).as_py() or 0
    return f"; {n} of them samples of {len(pc.unique(shard.filter(inside)))} shard(s)"


# --------------------------------------------------------------------------- labels


def shard_labels(labels, samples, classes: list[str]):
    """``labels`` (from the folders, beside the items) with each shard sample's own label where
    it has one that names a class of the model (any case). No shard sample with such a label
    while shard samples are all there is: a ConfigError that says what the shards name."""
    if samples is None:
        return labels
    import pyarrow as pa
    import pyarrow.compute as pc

    lookup = {c.lower(): c for c in classes}
    stored = samples.column("shard_label").to_pylist()
    mapped = pa.array([lookup.get(s.lower()) if s else None for s in stored], pa.string())
    named = sorted({s for s, m in zip(stored, mapped.to_pylist(), strict=True) if s and m is None})
    in_shards = pc.not_equal(samples.column("shard"), "")
    if named:
        log.warning(
            "--labels-from-dirs: shard labels that name no class of the model: %s (those samples "
            "have no label and count in no accuracy)",
            ", ".join(named[:12]) + (", ..." if len(named) > 12 else ""),
        )
    if mapped.null_count == len(mapped) and pc.all(in_shards).as_py():
        raise ConfigError(
            f"--labels-from-dirs: no shard sample has a label naming one of the model's classes "
            f"({', '.join(classes[:20])}{', ...' if len(classes) > 20 else ''}); the shards "
            f"name: {', '.join(named[:12]) or 'nothing'}. Write the class names, one a line, "
            f"to {fmt.CLASSES_FILE} beside the shards, or drop --labels-from-dirs."
        )
    return pc.if_else(pc.is_valid(mapped), mapped, labels)


# --------------------------------------------------------------------------- decoding


def read_samples(shard: str, at, size, column: str) -> list[bytes | None]:
    """The image bytes of some samples of one shard, in the order asked; a tar in one ranged
    read of their span unless that span is mostly other bytes. Raises ShardError."""
    at, size = [int(a) for a in at], [int(s) for s in size]
    if column:
        return fmt.read_images(shard, at, size, column)
    lo, hi = min(at), max(a + s for a, s in zip(at, size, strict=True))
    if hi - lo > 2 * sum(size):
        return fmt.read_images(shard, at, size)
    span = fmt.read_images(shard, [lo], [hi - lo])[0]
    assert span is not None
    return [span[a - lo : a - lo + s] for a, s in zip(at, size, strict=True)]


def decode_samples(batch: dict[str, np.ndarray], size: int) -> dict[str, np.ndarray]:
    """Ray Data CPU stage for a listing with shard samples: :func:`~cifar.io.images.decode_batch`
    for the files, and for each shard's samples one read of that shard, then the same decode.
    ``{"path", READ_COLUMNS...}`` -> ``{"path", "image", "error"}``: errors as rows."""
    n = len(batch["path"])
    shard = np.asarray(batch["shard"], dtype=object)
    images = np.zeros((n, 3, size, size), dtype=np.uint8)
    errors = np.full(n, "", dtype=object)
    files = np.flatnonzero(shard == "")
    if len(files):
        done = decode_batch({"path": np.asarray(batch["path"], dtype=object)[files]}, size)
        images[files], errors[files] = done["image"], done["error"]
    for s in dict.fromkeys(shard[shard != ""]):
        _decode_shard(str(s), np.flatnonzero(shard == s), batch, size, images, errors)
    out = {k: v for k, v in batch.items() if k not in READ_COLUMNS}
    out.update(path=np.asarray(batch["path"], dtype=object), image=images, error=errors)
    return out


def _decode_shard(shard: str, rows, batch, size: int, images, errors) -> None:
    problems = np.asarray(batch["shard_problem"], dtype=object)[rows]
    errors[rows] = problems
    todo = rows[problems == ""]
    if not len(todo):
        return
    column = str(batch["shard_column"][todo[0]])
    try:
        data = read_samples(shard, batch["shard_at"][todo], batch["shard_size"][todo], column)
    except fmt.ShardError as e:
        errors[todo] = f"cannot read the shard: {e.reason}"
        return
    except OSError as e:
        if isinstance(e, StorageError) and e.kind in CONNECTION_KINDS:
            raise  # the store is gone, not this shard: the job ends, --resume redoes it
        errors[todo] = f"cannot read the shard: {e.strerror or e}"
        return
    decode_into(images, errors, todo, data, size)


def preview_loader(files, shards: dict[str, Any] | None):
    """How the preview sheet gets its images: ``load(paths, size) -> uint8 [n, 3, size, size]``,
    files by path and shard samples from their shard (each shard read once, as the decode stage
    reads it). None when no shard was listed: the sheet opens files by path."""
    if shards is None:
        return None
    import pyarrow as pa
    import pyarrow.compute as pc

    def load(paths: list[str], size: int) -> np.ndarray:
        at = pc.index_in(pa.array(paths, pa.string()), value_set=files)
        batch = {c: shards[c].take(at).to_numpy(zero_copy_only=False) for c in READ_COLUMNS}
        return decode_samples({"path": np.asarray(paths, dtype=object), **batch}, size)["image"]

    return load
