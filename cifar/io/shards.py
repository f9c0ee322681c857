"""Labelled images in shards: WebDataset tars and Parquet files, read and written.

A tar holds one sample per key, WebDataset's way: members ``<key>.<ext>`` next to each other,
the key being the member's path up to the first dot of its file name; the image in any extension
Pillow reads, the label in ``.cls`` (an integer) or ``.txt`` / ``.json`` (a class name). A Parquet
file holds one sample per row: an image column (binary, or Hugging Face's ``struct{bytes, path}``)
and a label column (an integer, with the class names in Hugging Face's ``ClassLabel`` metadata,
or a name).

Reading is :mod:`cifar.io.tars` (the tar's headers parsed directly, ``tarfile`` for what that
leaves to it) and ``pyarrow.parquet``, not the ``webdataset`` package (a test dependency, used
to write the test shards): counting every sample exactly once and telling a bad sample from a
broken shard need the archive itself. A tar that ends without its end-of-archive block is
truncated (``tarfile`` alone would take it for a clean end): the samples before the break are
kept and the shard is named (:class:`ShardError`).

Three ways in, one sample model (:class:`Sample`):
- :func:`samples` yields every sample of a shard in order with its bytes (prediction reads
  shards this way);
- :func:`index_shard` yields the same samples without their image bytes but with where those
  lie (tar: byte offset and size; Parquet: row group and row), reading headers and labels only;
- :func:`read_images` reads the images of some indexed samples of one shard (a ranged read per
  tar member, one read per Parquet row group).
"""

from __future__ import annotations

import functools
import json
import re
import tarfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from cifar.io import storage, tars
from cifar.io.faults import CONNECTION_KINDS, StorageError, is_transient, retrying

TAR, PARQUET = ".tar", ".parquet"
SUFFIXES = (TAR, PARQUET)
LABEL_EXTS = ("cls", "txt", "json")  # an integer, a name, a name (or integer) in JSON
CLASSES_FILE = "classes.txt"  # beside the split folders: one class name a line, in label order
LABEL_COLUMN = "label"
STREAM_BUFFER = 8 * 2**20  # bytes read at once from a tar streamed out of object storage
_KEY = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")  # webdataset's base_plus_ext


class ShardError(Exception):
    """A shard that could not be read to its end: the samples before ``after`` were read."""

    def __init__(self, path: str, after: int, reason: str) -> None:
        super().__init__(f"{path}: unreadable after {after} sample(s): {reason}")
        self.path, self.after, self.reason = path, after, reason

    def __reduce__(self):  # crosses Ray task boundaries as itself
        return type(self), (self.path, self.after, self.reason)


class ColumnError(ValueError):
    """A Parquet file without the image or label column asked for; says which columns it has.
    ``which``: ``"image"`` or ``"label"``."""

    def __init__(self, message: str, which: str) -> None:
        super().__init__(message)
        self.which = which

    def __reduce__(self):  # crosses Ray task boundaries as itself
        return type(self), (str(self), self.which)


@dataclass
class Sample:
    """One sample of a shard: its key (tar) or row number (Parquet), label as stored (an
    integer, a name, or None), image bytes (None when only indexed), where the image lies, and
    why it cannot be used (``""`` when it can)."""

    key: str
    label: int | str | None
    data: bytes | None = None
    at: int = 0  # tar: byte offset of the image in the shard; Parquet: row group
    size: int = 0  # tar: bytes of the image; Parquet: row in its row group
    problem: str = ""


@dataclass
class ShardIndex:
    """Every sample of one shard, without pixels (:func:`index_shard`)."""

    path: str
    samples: list[Sample] = field(default_factory=list)
    names: tuple[str, ...] | None = None  # Parquet: the ClassLabel names in its metadata
    column: str | None = None  # Parquet: the image column
    error: str = ""  # the shard broke off here (the samples before it are listed)


def is_shard(path: str) -> bool:
    return path.lower().endswith(SUFFIXES)


@functools.cache
def image_extensions() -> frozenset[str]:
    """Every extension Pillow opens (jpg, jpeg, png, webp, ...), without the dot."""
    from PIL import Image

    Image.init()
    return frozenset(e.lstrip(".").lower() for e in Image.registered_extensions())


def samples(
    path: str, image_column: str | None = None, label_column: str | None = LABEL_COLUMN
) -> Iterator[Sample]:
    """Every sample of the shard ``path`` in order, with its image bytes; raises
    :class:`ShardError` where the shard breaks off, after the samples before the break."""
    return _samples(path, True, image_column, label_column)


def index_shard(
    path: str, image_column: str | None = None, label_column: str | None = LABEL_COLUMN
) -> ShardIndex:
    """Where every sample of ``path`` lies, and its label, reading no image bytes of a local tar
    or a Parquet file (a tar in object storage is read through once). ``label_column=None``: a
    Parquet file's rows without labels (read from its footer alone; a tar keeps the labels its
    members hold). A Parquet file without a column asked for raises :class:`ColumnError`.
    A shard that breaks off
    keeps the samples before the break and says why in ``error``. The store failing as a whole
    raises; a failure worth another try reads the shard again from the start."""

    def read() -> ShardIndex:
        out = ShardIndex(path)
        try:
            if path.lower().endswith(PARQUET):
                with _BreakGuard(path, 0), _open(path) as f:
                    out.column, out.names = _parquet_columns(path, f, image_column, label_column)
            out.samples.extend(_samples(path, False, image_column, label_column))
        except ShardError as e:
            out.error = e.reason
        return out

    return retrying(f"reading {path}", path, read)


def read_images(
    path: str, at: Sequence[int], size: Sequence[int], column: str | None = None
) -> list[bytes | None]:
    """The image bytes of indexed samples of one shard, in the order asked (None: a Parquet row
    without bytes). A tar: one ranged read per sample (all of the shard when more than half of
    it is asked for); Parquet: one read of ``column`` per row group. Raises :class:`ShardError`
    when the shard cannot be read (a failure worth another try is retried)."""

    def read() -> list[bytes | None]:
        with _BreakGuard(path, 0), _open(path) as f:
            if not path.lower().endswith(PARQUET):
                if sum(size) > f.size() // 2:
                    whole = f.read_at(f.size(), 0)
                    return [whole[a : a + s] for a, s in zip(at, size, strict=True)]
                return [f.read_at(s, a) for a, s in zip(at, size, strict=True)]
            import pyarrow.parquet as pq

            pf = pq.ParquetFile(f)
            groups = {
                g: _image_bytes(pf.read_row_group(g, columns=[column]).column(0)) for g in set(at)
            }
            return [groups[g][r] for g, r in zip(at, size, strict=True)]

    return retrying(f"reading {path}", path, read)


def _open(path: str, seekable: bool = True):
    """A pyarrow file for ``path`` (local or URI): random access, or a forward-only stream."""
    fs, p = storage.fs_path(path)
    if seekable:
        return retrying(f"opening {path}", path, lambda: fs.open_input_file(p))
    # buffered: an object store's stream would otherwise make a request per tarfile read
    return retrying(
        f"opening {path}", path, lambda: fs.open_input_stream(p, buffer_size=STREAM_BUFFER)
    )


def _samples(
    path: str, with_data: bool, image_column: str | None, label_column: str | None
) -> Iterator[Sample]:
    with _BreakGuard(path, 0) as read:
        if path.lower().endswith(PARQUET):
            reader = _parquet_samples(path, with_data, image_column, label_column)
        else:
            reader = _tar_samples(path, with_data)
        for s in reader:
            yield s
            read.after += 1


class _BreakGuard:
    """Turns what breaks a shard off into :class:`ShardError` (``after`` samples read); lets
    the store failing as a whole, and failures worth another try, through."""

    def __init__(self, path: str, after: int) -> None:
        self.path, self.after = path, after

    def __enter__(self) -> _BreakGuard:
        return self

    def __exit__(self, kind, e, tb) -> None:
        if e is None or not isinstance(e, tarfile.TarError | EOFError | OSError | _arrow_error()):
            return
        if isinstance(e, StorageError) and e.kind in CONNECTION_KINDS:
            return  # the store is gone, not this shard
        if isinstance(e, OSError) and not isinstance(e, StorageError) and is_transient(e):
            return  # read again (index_shard's retry), not a broken shard
        raise ShardError(self.path, self.after, _reason(e)) from None


def _arrow_error() -> type[Exception]:
    import pyarrow

    return pyarrow.ArrowException


def _reason(e: BaseException) -> str:
    said = str(e) or type(e).__name__
    if isinstance(e, tarfile.TarError | EOFError):
        return f"truncated or corrupt tar ({said})"
    return said


# --------------------------------------------------------------------------- tars


def _tar_samples(path: str, with_data: bool) -> Iterator[Sample]:
    """A local tar is read with seeks over the images it does not need; one in object storage
    as a stream (no request per member)."""
    seekable = not storage.is_uri(path)
    want = functools.partial(_wanted, with_data)
    return _grouped(tars.read(lambda: _open(path, seekable), seekable, want))


def _wanted(with_data: bool, name: str) -> bool:
    """Whether a member's bytes are read: a label's always, an image's with ``with_data``."""
    split = _KEY.match(name)
    ext = split[2].lower() if split else ""
    return ext in LABEL_EXTS or (with_data and ext in image_extensions())


def _grouped(found: Iterator[tuple[str, int, int, bytes | None]]) -> Iterator[Sample]:
    """Members ``(name, offset, size, bytes or None)`` in archive order, as samples: the members
    of one key next to each other make one sample (WebDataset's grouping)."""
    key, parts = None, {}
    for name, at, size, data in found:
        split = _KEY.match(name)
        if split is None or name.rsplit("/", 1)[-1].startswith("__"):
            continue
        k, ext = split[1], split[2].lower()
        if k != key:
            if key is not None:
                yield _tar_sample(key, parts)
            key, parts = k, {}
        parts[ext] = data if data is not None else (at, size)
    if key is not None:  # only once the archive ended cleanly: a break raises before
        yield _tar_sample(key, parts)


def _tar_sample(key: str, parts: dict[str, bytes | tuple[int, int]]) -> Sample:
    image = next((e for e in parts if e in image_extensions()), None)
    label, problem = _tar_label(parts)
    if image is None:
        problem = f"no image (members: {', '.join(sorted(parts))})"
    s = Sample(key, label, problem=problem)
    where = parts.get(image) if image else None
    if isinstance(where, bytes):
        s.data, s.size = where, len(where)
    elif where is not None:
        s.at, s.size = where
    return s


def _tar_label(parts: dict[str, bytes | tuple[int, int]]) -> tuple[int | str | None, str]:
    ext = next((e for e in LABEL_EXTS if e in parts), None)
    if ext is None:
        return None, ""
    raw = parts[ext]
    assert isinstance(raw, bytes)
    try:
        text = raw.decode().strip()
        if ext == "cls":
            return int(text), ""
        if ext == "txt":
            return text, ""
        value = json.loads(text)
        value = value.get("label") if isinstance(value, dict) else value
        if isinstance(value, int | str) and not isinstance(value, bool):
            return value, ""
        return None, f"the .json label is not a name or an integer: {text[:40]}"
    except ValueError as e:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        return None, f"unreadable .{ext} label: {str(e)[:80]}"


# --------------------------------------------------------------------------- Parquet


def _parquet_columns(
    path: str, f, image_column: str | None, label_column: str | None
) -> tuple[str, tuple[str, ...] | None]:
    """(the image column, the label column's ClassLabel names in Hugging Face's metadata or
    None); no label column asked for: no check, no names."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pq.read_schema(f)
    columns = ", ".join(f"{n} ({t})" for n, t in zip(schema.names, schema.types, strict=True))

    def is_image(t) -> bool:
        if pa.types.is_struct(t):
            return any(t.field(i).name == "bytes" for i in range(t.num_fields))
        return pa.types.is_binary(t) or pa.types.is_large_binary(t)

    column = image_column or next(
        (n for n, t in zip(schema.names, schema.types, strict=True) if is_image(t)), None
    )
    if column is None or column not in schema.names or not is_image(schema.field(column).type):
        what = f"no image column {column!r}" if image_column else "no image column"
        raise ColumnError(
            f"{path} has {what}: a binary column or a struct{{bytes, path}} (Hugging Face's "
            f"Image) is needed; its columns: {columns}. Name it with --image-column.",
            "image",
        )
    if label_column is None:
        return column, None
    if label_column not in schema.names:
        raise ColumnError(
            f"{path} has no label column {label_column!r}; its columns: {columns}. Name it with "
            "--label-column.",
            "label",
        )
    meta = (schema.metadata or {}).get(b"huggingface")
    feature = json.loads(meta).get("info", {}).get("features", {}).get(label_column) if meta else {}
    names = (feature or {}).get("names")
    return column, tuple(names) if names else None


def _parquet_samples(
    path: str, with_data: bool, image_column: str | None, label_column: str | None
) -> Iterator[Sample]:
    import pyarrow.parquet as pq

    with _open(path) as f:
        column, _ = _parquet_columns(path, f, image_column, label_column)
        pf = pq.ParquetFile(f)
        row = 0
        wanted = [c for c in (label_column, column if with_data else None) if c]
        for g in range(pf.num_row_groups):
            n = pf.metadata.row_group(g).num_rows  # no column wanted: the footer says it all
            t = pf.read_row_group(g, columns=wanted) if wanted else None
            labels = t.column(label_column).to_pylist() if label_column else [None] * n
            images = _image_bytes(t.column(column)) if with_data else [None] * n
            for r, (label, data) in enumerate(zip(labels, images, strict=True)):
                s = Sample(str(row), label, data, at=g, size=r)
                if with_data and data is None:
                    s.problem = "no image bytes in this row"
                yield s
                row += 1


def _image_bytes(col) -> list[bytes | None]:
    """A binary or struct{bytes, path} column's bytes."""
    import pyarrow as pa

    col = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    if pa.types.is_struct(col.type):
        col = col.field("bytes")
    return col.to_pylist()
