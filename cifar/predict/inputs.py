"""What a prediction job's ``--input`` names: every item once, sorted, with the input root it
was found under (labels are read below that root).

One table, :data:`INPUT_KINDS`, says what an ``--input`` is: a URI (a prefix, an object or a
glob), a local file, a local folder (recursive) or a local glob. Each kind lists its items as
(keys, root): a key is a path the decode stage reads (a shard's samples, next, are keys of their
own). A new kind of input is a function that lists it and a row of the table."""

from __future__ import annotations

import fnmatch
import glob
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cifar.config import ConfigError
from cifar.io import storage
from cifar.io.images import IMAGE_EXTENSIONS

log = logging.getLogger(__name__)


def _magic_at(s: str) -> int:
    """Index of the first glob character in ``s``, or -1."""
    found = [s.find(c) for c in "*?[" if c in s]
    return min(found) if found else -1


def _list_uri(uri: str) -> tuple[list[str], str]:
    """(files, root) for a URI: a file, a prefix (recursive) or a glob."""
    scheme, path = uri.split("://", 1)
    pattern = None
    if _magic_at(path) >= 0:
        pattern = path
        path = path[: _magic_at(path)].rsplit("/", 1)[0]
    base = f"{scheme}://{path}"
    if storage.is_dir(base):
        found = [f"{path.rstrip('/')}/{e.rel}" for e in storage.list_files(base, hidden=True)]
        root = path
    elif storage.exists(base):
        found = [path]
        root = path.rsplit("/", 2)[0] if path.count("/") >= 2 else ""
    else:
        found, root = [], path
    if pattern is not None:
        found = [p for p in found if fnmatch.fnmatchcase(p, pattern)]
    return [f"{scheme}://{p}" for p in sorted(found)], f"{scheme}://{root}"


def _walk(root: str, entries_of, chunk: int):
    """Depth-first from the folder ``root``, each folder's entries sorted (a folder as
    ``name/``, so ``a/b`` follows ``a.txt``, as in ``sorted()`` over full paths); yields pyarrow
    string arrays of ``chunk`` file paths. ``entries_of(folder)`` -> [(name, is_folder)].
    Held meanwhile: one chunk and a stack of the entries still to visit, never the listing."""
    import pyarrow as pa

    buf: list[str] = []
    stack: list[tuple[str, bool]] = [(root, True)]
    while stack:
        path, is_dir = stack.pop()
        if not is_dir:
            buf.append(path)
        else:
            entries = sorted(((f"{n}/", True) if d else (n, False)) for n, d in entries_of(path))
            stack.extend((f"{path.rstrip('/')}/{n.rstrip('/')}", d) for n, d in reversed(entries))
        if len(buf) >= chunk:
            yield pa.array(buf, type=pa.string())
            buf = []
    if buf:
        yield pa.array(buf, type=pa.string())


def _local_entries(folder: str) -> list[tuple[str, bool]]:
    out = []
    with os.scandir(folder) as it:
        for e in it:
            if e.is_dir(follow_symlinks=False):  # linked folders are not followed: no cycles
                out.append((e.name, True))
            elif e.is_file():
                out.append((e.name, False))
    return out


def walk_sorted(root: str, chunk: int = 10_000):
    """Every file below the local folder ``root``, in sorted order, in pyarrow chunks (see
    :func:`_walk`). Linked files are listed where they are. A million files list in about a
    second and tens of MB (benchmarks.listing, docs/results.md): no Path object per file."""
    return _walk(root.rstrip("/") or "/", _local_entries, chunk)


def _list_local_file(spec: str):
    import pyarrow as pa

    p = Path(spec).expanduser().resolve()
    return pa.array([str(p)], pa.string()), str(p.parent.parent)


def _list_local_folder(spec: str):
    root = str(Path(spec).expanduser().resolve())
    return _concat(list(walk_sorted(root))), root


def _list_local_glob(spec: str):
    import pyarrow as pa

    head = spec[: _magic_at(spec)]
    root = Path(head).expanduser() if head.endswith("/") else Path(head).expanduser().parent
    # a set: one glob can name a file twice ('**/**', links)
    found = sorted(
        {str(Path(f).resolve()) for f in glob.glob(str(Path(spec).expanduser()), recursive=True)}
    )
    return pa.array([f for f in found if Path(f).is_file()], pa.string()), str(root.resolve())


def _list_uri_items(spec: str):
    import pyarrow as pa

    found, root = _list_uri(spec)
    return pa.array(found, pa.string()), root


# (what it is, does the --input name one, how its items are listed: -> (keys, root)); the first
# row that matches is used. Nothing matches a local path that does not exist: no items.
INPUT_KINDS: list[tuple[str, Callable[[str], bool], Callable[[str], tuple[Any, str]]]] = [
    ("a URI: object, prefix or glob", storage.is_uri, _list_uri_items),
    ("a local file", lambda s: Path(s).expanduser().is_file(), _list_local_file),
    ("a local folder", lambda s: Path(s).expanduser().is_dir(), _list_local_folder),
    ("a local glob", lambda s: _magic_at(s) >= 0, _list_local_glob),
]


def list_input(spec: str):
    """(keys as a pyarrow string array, root) of one ``--input``, by its row of INPUT_KINDS."""
    import pyarrow as pa

    for _, matches, lister in INPUT_KINDS:
        if matches(spec):
            return lister(spec)
    return pa.array([], pa.string()), ""


def _concat(chunks):
    import pyarrow as pa

    return pa.concat_arrays(chunks) if chunks else pa.array([], pa.string())


def label_from_dirs(path: str, root: str, classes: Sequence[str]) -> str | None:
    """The class a file's folders name, read as training reads a tree: the first folder below
    the input ``root`` whose name is a class (case-insensitive), so ``val/cat/x.png``,
    ``val/cat/closeups/x.png`` and, with ``root`` above ``val/``, ``data/val/cat/x.png`` all
    say ``cat``. None when no folder names a class."""
    rel = path[len(root) :] if root and path.startswith(root) else path
    lookup = {c.lower(): c for c in classes}
    for folder in rel.strip("/").split("/")[:-1]:
        if folder.lower() in lookup:
            return lookup[folder.lower()]
    return None


def wanted_extensions(extensions: str) -> tuple[str, ...]:
    return tuple("." + e.strip().lower().lstrip(".") for e in extensions.split(",") if e.strip())


def extension_mask(paths, extensions: str):
    """Which of ``paths`` (a pyarrow string array) end in one of ``extensions``, any case."""
    import pyarrow.compute as pc

    lower = pc.utf8_lower(paths)
    wanted = wanted_extensions(extensions)
    mask = pc.ends_with(lower, wanted[0])
    for w in wanted[1:]:
        mask = pc.or_(mask, pc.ends_with(lower, w))
    return mask


def _uri_entries(folder: str) -> list[tuple[str, bool]]:
    import pyarrow.fs

    kinds = {pyarrow.fs.FileType.Directory: True, pyarrow.fs.FileType.File: False}
    return [(i.base_name, kinds[i.type]) for i in storage.listing(folder) if i.type in kinds]


def walk_uri(uri: str, chunk: int = 1024):
    """Every object below the prefix ``uri``, as :func:`walk_sorted` walks a local folder: one
    listing per folder (a delimited LIST on object storage, which S3 returns in sorted order),
    files yielded in pyarrow chunks as each folder is listed, so the first paths come after the
    first LIST, not after the whole prefix is listed."""
    return _walk(uri.rstrip("/"), _uri_entries, chunk)


def streamed_input(inputs: list[str]) -> str | None:
    """The one object-storage prefix to list while classifying, or None (local folders list in
    about a second per million files: they are listed first; globs, files and several inputs
    too)."""
    if len(inputs) != 1 or not storage.is_uri(inputs[0]) or _magic_at(inputs[0]) >= 0:
        return None
    return inputs[0].rstrip("/") if storage.is_dir(inputs[0]) else None


@dataclass
class Inputs:
    files: Any  # pyarrow string array: every file, once, sorted
    roots: list[str]  # the root each --input was found under
    root_of: Any  # pyarrow int32 array: for each file, the index of its root in ``roots``
    skipped: int  # left out by --extensions

    def root_list(self) -> list[str]:
        return [self.roots[i] for i in self.root_of.to_pylist()]

    def relpaths(self):
        """Each file's path below the input root it was found under (a pyarrow array)."""
        return relative(self.files, self.roots, self.root_of)


def relative(files, roots: Sequence[str], root_of=None):
    """``files`` (pyarrow strings) cut below their root: ``roots[root_of[i]]`` (one root: all
    below it), in Arrow, without a Python string per file."""
    import pyarrow.compute as pc

    out = files
    for i, root in enumerate(roots):
        cut = len(root.rstrip("/")) + 1 if root.strip("/") else len(root)
        below = pc.utf8_slice_codeunits(files, cut)
        out = (
            below
            if root_of is None or len(roots) == 1
            else pc.if_else(pc.equal(root_of, i), below, out)
        )
    return out


def list_inputs(inputs: list[str], extensions: str | None) -> Inputs:
    """Every file under the inputs, once each, sorted, with the input root it came from. The
    paths stay in Arrow arrays: a million of them cost tens of MB, not a Python object each."""
    import pyarrow as pa

    parts, roots, missing = [], [], []
    for spec in inputs:
        found, root = list_input(spec)
        if len(found) == 0:
            missing.append(spec)
        parts.append(pa.table({"path": found, "root": pa.repeat(len(roots), len(found))}))
        roots.append(root)
    if missing and len(missing) == len(inputs):
        for spec in missing:
            storage.check_bucket(spec)
        raise ConfigError(
            f"no files found in {', '.join(map(repr, missing))}. Pass a folder (searched "
            "recursively), an image file, a quoted glob like 'photos/**/*.jpg', or a URI."
        )
    if missing:
        log.warning("no files found for %s", ", ".join(missing))
    table = pa.concat_tables(parts).cast(pa.schema([("path", pa.string()), ("root", pa.int32())]))
    if len(inputs) > 1:  # overlapping inputs: each file once, under the first input naming it
        g = table.group_by("path", use_threads=False).aggregate([("root", "min")])
        table = pa.table({"path": g["path"], "root": g["root_min"]}).sort_by("path")
    files = table.column("path").combine_chunks()
    kept = table
    if extensions:
        kept = table.filter(extension_mask(files, extensions))
        if kept.num_rows == 0:
            raise ConfigError(
                f"none of the {len(files)} files found has an extension in "
                f"{wanted_extensions(extensions)}. Known image extensions: "
                f"{', '.join(IMAGE_EXTENSIONS)}."
            )
    return Inputs(
        kept.column("path").combine_chunks(),
        roots,
        kept.column("root").combine_chunks(),
        table.num_rows - kept.num_rows,
    )
