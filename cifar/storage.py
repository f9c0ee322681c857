"""Local paths and URIs (s3://, gs://, file://, ...) behind one small API, via pyarrow.fs."""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_FS_CACHE: dict[str, Any] = {}


@dataclass(frozen=True)
class FileEntry:
    """A file found by :func:`list_files`: its path relative to the folder listed, size, mtime."""

    rel: str  # posix, relative to the listed folder
    size: int
    mtime_ns: int  # 0 where the store does not say


def is_uri(path: str) -> bool:
    return "://" in path


def filesystem(uri: str) -> tuple[Any, str]:
    """(pyarrow filesystem, path inside it) for a URI; one filesystem per scheme and bucket."""
    import pyarrow.fs

    scheme, rest = uri.split("://", 1)
    key = f"{scheme}://{rest.split('/', 1)[0]}"
    if key not in _FS_CACHE:
        _FS_CACHE[key] = pyarrow.fs.FileSystem.from_uri(uri)[0]
    return _FS_CACHE[key], rest


def fs_path(path: str) -> tuple[Any, str]:
    """(pyarrow filesystem, path in it) for a local path (made absolute) or a URI."""
    if is_uri(path):
        return filesystem(path)
    import pyarrow.fs

    return pyarrow.fs.LocalFileSystem(), str(Path(path).expanduser().resolve())


def is_dir(path: str) -> bool:
    if not is_uri(path):
        return Path(path).expanduser().is_dir()
    import pyarrow.fs

    fs, p = filesystem(path)
    return fs.get_file_info(p).type == pyarrow.fs.FileType.Directory


def list_dirs(path: str) -> list[str]:
    """Names of the folders directly inside ``path`` (sorted; hidden ones left out)."""
    import pyarrow.fs

    fs, p = fs_path(path)
    infos = fs.get_file_info(pyarrow.fs.FileSelector(p, recursive=False))
    return sorted(
        i.base_name
        for i in infos
        if i.type == pyarrow.fs.FileType.Directory and not i.base_name.startswith(".")
    )


def list_files(path: str, hidden: bool = False) -> list[FileEntry]:
    """Every file below the folder ``path``, recursively, sorted by relative path. Hidden files
    and folders (a leading ``.``, like ``.DS_Store`` or caches) are left out unless ``hidden``."""
    import pyarrow.fs

    fs, p = fs_path(path)
    base = p.rstrip("/") + "/"
    out = []
    for i in fs.get_file_info(pyarrow.fs.FileSelector(p, recursive=True)):
        if i.type != pyarrow.fs.FileType.File:
            continue
        rel = i.path[len(base) :] if i.path.startswith(base) else i.base_name
        if not hidden and any(part.startswith(".") for part in rel.split("/")):
            continue
        out.append(FileEntry(rel, int(i.size or 0), int(i.mtime_ns or 0)))
    out.sort(key=lambda e: e.rel)
    return out


def has_entries(path: str) -> bool:
    """True if the folder ``path`` holds anything (a file or folder, hidden or not)."""
    import pyarrow.fs

    fs, p = fs_path(path)
    return bool(fs.get_file_info(pyarrow.fs.FileSelector(p, recursive=False)))


def clear_dir(path: str) -> None:
    """Make ``path`` an empty folder: create it, or delete what it holds."""
    fs, p = fs_path(path)
    fs.create_dir(p, recursive=True)
    fs.delete_dir_contents(p)


def join(path: str, rel: str) -> str:
    """``path``/``rel`` for a local path (made absolute) or a URI."""
    if is_uri(path):
        return f"{path.rstrip('/')}/{rel}"
    return str(Path(path).expanduser().resolve() / rel)


def cache_root() -> Path:
    """This node's cache folder: ``$CIFAR_RAY_CACHE``, else ``<tmp>/cifar-ray``."""
    return Path(os.environ.get("CIFAR_RAY_CACHE") or tempfile.gettempdir()) / "cifar-ray"


def exists(path: str) -> bool:
    if not is_uri(path):
        return Path(path).exists()
    import pyarrow.fs

    fs, p = filesystem(path)
    return fs.get_file_info(p).type != pyarrow.fs.FileType.NotFound


def read_bytes(path: str) -> bytes:
    if not is_uri(path):
        with open(path, "rb") as f:
            return f.read()
    fs, p = filesystem(path)
    with fs.open_input_stream(p) as f:
        return f.read()


def read_text(path: str) -> str:
    return read_bytes(path).decode()


def write_text(path: str, text: str) -> None:
    """Write ``text`` to ``path``, creating its parent folders."""
    write_bytes(path, text.encode())


def copy_files(src_dir: str, names: list[str], dest_dir: str) -> None:
    """Copy ``names`` from the local folder ``src_dir`` into ``dest_dir`` (path or URI)."""
    for name in names:
        write_bytes(f"{dest_dir}/{name}", (Path(src_dir) / name).read_bytes())


def write_bytes(path: str, data: bytes) -> None:
    """Write ``data`` to ``path``, creating its parent folders."""
    if not is_uri(path):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_bytes(data)
        return
    fs, p = filesystem(path)
    fs.create_dir(p.rsplit("/", 1)[0], recursive=True)
    with fs.open_output_stream(p) as f:
        f.write(data)
