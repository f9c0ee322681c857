"""Local paths and URIs (s3://, gs://, file://, ...) behind one small API, via pyarrow.fs."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from cifar.env import cache_root
from cifar.io import faults
from cifar.io.faults import retrying, storage_error, store_failure

log = logging.getLogger(__name__)
T = TypeVar("T")

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
    """(pyarrow filesystem, path inside it) for a URI; one filesystem per scheme and bucket.

    Credentials, region and endpoint come from the standard environment and config files
    (``AWS_PROFILE``, ``AWS_ENDPOINT_URL``, instance profiles, ...): nothing of ours."""
    import pyarrow.fs

    scheme, rest = uri.split("://", 1)
    key = f"{scheme}://{rest.split('/', 1)[0]}"
    if key not in _FS_CACHE:
        try:  # an S3 bucket's region is looked up here
            fs = pyarrow.fs.FileSystem.from_uri(uri)[0]
        except OSError as e:
            failed = store_failure(e)
            if failed is None:
                raise
            raise storage_error(f"opening {key}", uri, e, failed[0]) from None
        if isinstance(fs, pyarrow.fs.S3FileSystem):
            # the same options (endpoint, region, ... as resolved from the environment), plus
            # retries and timeouts; credentials stay with the SDK's chain, not in the object
            options = fs.__reduce__()[1][0]
            options.update(
                retry_strategy=pyarrow.fs.AwsStandardS3RetryStrategy(
                    max_attempts=faults.SDK_ATTEMPTS
                ),
                connect_timeout=faults.CONNECT_TIMEOUT_S,
                request_timeout=faults.REQUEST_TIMEOUT_S,
            )
            fs = pyarrow.fs.S3FileSystem(**options)
        _FS_CACHE[key] = fs
    return _FS_CACHE[key], rest.split("?", 1)[0]


def reset_filesystems() -> None:
    """Forget the cached filesystems (after the endpoint or credentials changed)."""
    _FS_CACHE.clear()


def fs_path(path: str) -> tuple[Any, str]:
    """(pyarrow filesystem, path in it) for a local path (made absolute) or a URI."""
    if is_uri(path):
        return filesystem(path)
    import pyarrow.fs

    return pyarrow.fs.LocalFileSystem(), str(Path(path).expanduser().resolve())


def _info(path: str):
    fs, p = fs_path(path)
    return retrying(f"looking up {path}", path, lambda: fs.get_file_info(p))


def listing(path: str) -> list:
    """pyarrow FileInfos of what is directly inside the folder ``path`` (files and folders)."""
    return _listing(path, recursive=False)


def _listing(path: str, recursive: bool) -> list:
    import pyarrow.fs

    fs, p = fs_path(path)
    selector = pyarrow.fs.FileSelector(p, recursive=recursive, allow_not_found=True)
    return retrying(f"listing {path}", path, lambda: fs.get_file_info(selector))


def is_dir(path: str) -> bool:
    if not is_uri(path):
        return Path(path).expanduser().is_dir()
    import pyarrow.fs

    kind = _info(path).type
    if kind == pyarrow.fs.FileType.Directory:
        return True
    if kind == pyarrow.fs.FileType.File:
        return False
    # a bucket or prefix that exists only through the keys below it
    return bool(_listing(path, recursive=False)) if not path.endswith("://") else False


def is_file(path: str) -> bool:
    if not is_uri(path):
        return Path(path).expanduser().is_file()
    import pyarrow.fs

    return _info(path).type == pyarrow.fs.FileType.File


def list_dirs(path: str) -> list[str]:
    """Names of the folders directly inside ``path`` (sorted; hidden ones left out)."""
    import pyarrow.fs

    return sorted(
        i.base_name
        for i in _listing(path, recursive=False)
        if i.type == pyarrow.fs.FileType.Directory and not i.base_name.startswith(".")
    )


def list_files(path: str, hidden: bool = False) -> list[FileEntry]:
    """Every file below the folder ``path``, recursively, sorted by relative path. Hidden files
    and folders (a leading ``.``, like ``.DS_Store`` or caches) are left out unless ``hidden``."""
    import pyarrow.fs

    _, p = fs_path(path)
    base = p.rstrip("/") + "/"
    out = []
    for i in _listing(path, recursive=True):
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
    return bool(_listing(path, recursive=False))


def clear_dir(path: str, keep: tuple[str, ...] = ()) -> None:
    """Make ``path`` an empty folder but for the entries named in ``keep``: create it, or
    delete what it holds."""
    import pyarrow.fs

    fs, p = fs_path(path)
    retrying(f"creating {path}", path, lambda: fs.create_dir(p, recursive=True))
    if not keep:
        retrying(f"emptying {path}", path, lambda: fs.delete_dir_contents(p, missing_dir_ok=True))
        return
    for info in listing(path):
        if info.base_name in keep:
            continue
        if info.type == pyarrow.fs.FileType.Directory:
            retrying(f"deleting {info.path}", path, lambda i=info: fs.delete_dir(i.path))
        else:
            retrying(f"deleting {info.path}", path, lambda i=info: fs.delete_file(i.path))


def join(path: str, rel: str) -> str:
    """``path``/``rel`` for a local path (made absolute) or a URI."""
    if is_uri(path):
        return f"{path.rstrip('/')}/{rel}"
    return str(Path(path).expanduser().resolve() / rel)


def absolute(path: str) -> str:
    """A local path made absolute; a URI as it is."""
    return path if is_uri(path) else str(Path(path).expanduser().resolve())


def parent(path: str) -> str:
    """The folder holding ``path`` (a local path or a URI)."""
    if is_uri(path):
        scheme, rest = path.split("://", 1)
        return f"{scheme}://{rest.rstrip('/').rsplit('/', 1)[0]}" if "/" in rest else path
    return str(Path(path).expanduser().parent)


def name(path: str) -> str:
    return path.rstrip("/").rsplit("/", 1)[-1] if is_uri(path) else Path(path).name


def check_bucket(uri: str) -> None:
    """For a URI where nothing was found: a StorageError if its bucket does not exist (object
    stores answer "not found" for the keys of a missing bucket)."""
    if not is_uri(uri) or uri.startswith("file://"):
        return
    import pyarrow.fs

    scheme, rest = uri.split("://", 1)
    bucket = f"{scheme}://{rest.split('/', 1)[0]}"
    if _info(bucket).type == pyarrow.fs.FileType.NotFound:
        raise storage_error(f"reading {uri}", uri, None, "no_bucket")


def exists(path: str) -> bool:
    if not is_uri(path):
        return Path(path).expanduser().exists()
    import pyarrow.fs

    return _info(path).type != pyarrow.fs.FileType.NotFound or is_dir(path)


def read_bytes(path: str) -> bytes:
    if not is_uri(path):
        with open(Path(path).expanduser(), "rb") as f:
            return f.read()
    fs, p = filesystem(path)

    def read() -> bytes:
        with fs.open_input_stream(p) as f:
            return f.read()

    return retrying(f"reading {path}", path, read)


def read_text(path: str) -> str:
    return read_bytes(path).decode()


def write_text(path: str, text: str) -> None:
    """Write ``text`` to ``path``, creating its parent folders."""
    write_bytes(path, text.encode())


def copy_files(src_dir: str, names: list[str], dest_dir: str) -> None:
    """Copy ``names`` from the local folder ``src_dir`` into ``dest_dir`` (path or URI)."""
    for n in names:
        write_bytes(f"{dest_dir}/{n}", (Path(src_dir) / n).read_bytes())


def write_bytes(path: str, data: bytes) -> None:
    """Write ``data`` to ``path``, creating its parent folders. On object storage the object
    appears whole or not at all (a single PUT, or a multipart upload completed at the end)."""
    if not is_uri(path):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_bytes(data)
        return
    fs, p = filesystem(path)

    def write() -> None:
        fs.create_dir(p.rsplit("/", 1)[0], recursive=True)
        with fs.open_output_stream(p) as f:
            f.write(data)

    retrying(f"writing {path}", path, write)


# --------------------------------------------------------------------------- node-local copies


def local_copy(path: str) -> Path:
    """A local file with the content of ``path``: the path itself when local; for a URI a copy
    in this node's cache, downloaded once under a lock (concurrent processes wait for the
    first), checked against the object's size, and downloaded again when the object changed."""
    if not is_uri(path):
        return Path(path).expanduser()
    from filelock import FileLock

    info = _info(path)
    import pyarrow.fs

    if info.type != pyarrow.fs.FileType.File:
        raise FileNotFoundError(f"{path} does not exist (or is not a file)")
    stamp = {"uri": path, "size": int(info.size or 0), "mtime_ns": int(info.mtime_ns or 0)}
    d = cache_root() / "objects" / hashlib.sha1(path.encode()).hexdigest()[:20]
    d.mkdir(parents=True, exist_ok=True)
    target, stamp_file = d / name(path), d / "source.json"
    with FileLock(str(d / ".lock")):
        if target.is_file() and stamp_file.is_file():  # noqa: SIM102
            if _read_stamp(stamp_file) == stamp:
                return target
        tmp = d / f".{name(path)}.part"
        data = read_bytes(path)
        if len(data) != stamp["size"]:
            raise OSError(
                f"downloading {path}: got {len(data)} bytes, the object has {stamp['size']}"
            )
        tmp.write_bytes(data)
        os.replace(tmp, target)
        tmp.write_text(json.dumps(stamp))
        os.replace(tmp, stamp_file)
    return target


def _read_stamp(p: Path) -> dict | None:
    try:
        return json.loads(p.read_text())
    except (OSError, ValueError):  # unreadable: stale, download again
        return None


def local_tree(path: str) -> Path:
    """A local folder named like ``path`` with the files below it (each as :func:`local_copy`
    makes it, the layout kept): the folder itself when local."""
    if not is_uri(path):
        return Path(path).expanduser()
    d = cache_root() / "trees" / hashlib.sha1(path.encode()).hexdigest()[:20] / name(path)
    for e in list_files(path, hidden=True):
        dest = d / e.rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        src = local_copy(join(path, e.rel))
        if not (dest.exists() and dest.samefile(src)):
            tmp = dest.with_name(f".{dest.name}.{os.getpid()}")
            tmp.unlink(missing_ok=True)
            os.link(src, tmp)
            os.replace(tmp, dest)
    return d
