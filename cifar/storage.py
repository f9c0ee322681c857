"""Local paths and URIs (s3://, gs://, file://, ...) behind one small API, via pyarrow.fs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

_FS_CACHE: dict[str, Any] = {}


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
