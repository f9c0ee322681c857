"""What a prediction job's ``--input`` names: every file once, sorted, with the input root it
was found under (labels are read below that root). Local files, folders (recursive), globs and
URIs (a prefix, a file or a glob)."""

from __future__ import annotations

import fnmatch
import glob
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cifar import storage
from cifar.config import ConfigError
from cifar.images import IMAGE_EXTENSIONS

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


def _list_local(spec: str) -> tuple[list[str], str]:
    """(files, root) for a local file, folder (recursive) or glob."""
    p = Path(spec).expanduser()
    if p.is_file():
        return [str(p.resolve())], str(p.resolve().parent.parent)
    if p.is_dir():
        return sorted(str(f.resolve()) for f in p.rglob("*") if f.is_file()), str(p.resolve())
    if _magic_at(spec) >= 0:
        head = spec[: _magic_at(spec)]
        root = Path(head).expanduser() if head.endswith("/") else Path(head).expanduser().parent
        found = sorted(str(Path(f).resolve()) for f in glob.glob(str(p), recursive=True))
        return [f for f in found if Path(f).is_file()], str(root.resolve())
    return [], ""


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


@dataclass
class Inputs:
    files: list[str]  # every file, once, sorted
    roots: list[str]  # for each file, the root of the --input it was found under
    skipped: int  # left out by --extensions


def list_inputs(inputs: list[str], extensions: str | None) -> Inputs:
    """Every file under the inputs, once each, sorted, with the input root it came from."""
    seen: dict[str, str] = {}
    missing = []
    for spec in inputs:
        found, root = _list_uri(spec) if storage.is_uri(spec) else _list_local(spec)
        if not found:
            missing.append(spec)
        for f in found:
            seen.setdefault(f, root)
    if missing and not seen:
        raise ConfigError(
            f"no files found in {', '.join(map(repr, missing))}. Pass a folder (searched "
            "recursively), an image file, a quoted glob like 'photos/**/*.jpg', or a URI."
        )
    if missing:
        log.warning("no files found for %s", ", ".join(missing))
    files = sorted(seen)
    kept = files
    if extensions:
        wanted = tuple(
            "." + e.strip().lower().lstrip(".") for e in extensions.split(",") if e.strip()
        )
        kept = [f for f in files if f.lower().endswith(wanted)]
        if not kept:
            raise ConfigError(
                f"none of the {len(files)} files found has an extension in {wanted}. Known "
                f"image extensions: {', '.join(IMAGE_EXTENSIONS)}."
            )
    return Inputs(kept, [seen[f] for f in kept], len(files) - len(kept))
