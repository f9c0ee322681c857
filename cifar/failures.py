"""Failures outside the program, each as one line (what failed, where, and what to do), and the
exit status every job ends with: the one place that decides both (the table is in ``--help``
and docs/design.md). The jobs add what is safe and how to continue."""

from __future__ import annotations

import errno
import re
from collections.abc import Iterator
from dataclasses import dataclass

from cifar.cluster.resources import RayConnectError
from cifar.cluster.watchdog import EXIT_STALLED, StallError
from cifar.io.faults import StorageError
from cifar.io.lock import OutputBusy

USAGE, STALLED, STORAGE, DISK, RAY, BUSY, INTERRUPTED = 2, EXIT_STALLED, 4, 5, 6, 7, 130
EXIT_CODES = {
    0: "done",
    1: "an unexpected error: a bug, shown with its traceback",
    USAGE: "bad flags, config, data, model or output: the message names what and the fix",
    STALLED: "no progress for --stall-timeout seconds; the message says what the job waited for",
    STORAGE: "object storage cannot be reached or refuses the job (endpoint, DNS, credentials, "
    "bucket)",
    DISK: "a disk is full, read-only or over its quota",
    RAY: "the Ray cluster cannot be reached or refuses the job (address, token, version)",
    BUSY: "another job is writing the same output folder",
    INTERRUPTED: "interrupted: Ctrl-C, or SIGTERM (as `ray job stop` and Kubernetes stop a job)",
}
_DISK_ERRNOS = {errno.ENOSPC: "full", errno.EDQUOT: "over its quota", errno.EROFS: "read-only"}
_DISK_TEXT = re.compile(r"No space left on device|Disk quota exceeded|Read-only file system")


class Interrupted(KeyboardInterrupt):
    """SIGTERM (``ray job stop``, Kubernetes) or SIGINT, as an exception in the main thread."""


@dataclass(frozen=True)
class Failure:
    code: int
    message: str


def causes(e: BaseException) -> Iterator[BaseException]:
    """``e``, then what caused it: chained exceptions, and the exception inside a Ray task's."""
    seen: set[int] = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        yield e
        inner = getattr(e, "cause", None)  # ray.exceptions.RayTaskError
        e = inner if isinstance(inner, BaseException) else (e.__cause__ or e.__context__)


def explain(e: BaseException) -> Failure | None:
    """The failure outside the program that ``e`` is (or was caused by), as its exit status and
    one line; None for anything else (a bug: the caller shows the traceback)."""
    for c in causes(e):
        if type(c).__module__.startswith("ray."):
            continue  # Ray's wrappers: what they wrap says what failed
        if isinstance(c, KeyboardInterrupt):
            return Failure(INTERRUPTED, str(c) or "interrupted (Ctrl-C)")
        if isinstance(c, StallError):
            return Failure(STALLED, str(c))
        if isinstance(c, StorageError):
            return Failure(STORAGE, str(c))
        if isinstance(c, RayConnectError):
            return Failure(RAY, str(c))
        if isinstance(c, OutputBusy):
            return Failure(BUSY, str(c))
        disk = _disk(c)
        if disk is not None:
            return Failure(DISK, disk)
        if "Version mismatch" in str(c):
            return Failure(RAY, _ray_version(str(c)))
    return None


def _disk(e: BaseException) -> str | None:
    """A full, read-only or over-quota disk (an OSError's errno, or what pyarrow says), with
    the path where the error names one."""
    if not isinstance(e, OSError):
        return None
    what = _DISK_ERRNOS.get(e.errno or 0)
    if what is None:
        found = _DISK_TEXT.search(str(e))
        if found is None:
            return None
        what = {"No": "full", "Di": "over its quota", "Re": "read-only"}[found[0][:2]]
    path = str(e.filename or "")
    where = f" writing {path}" if path.startswith("/") or "://" in path[:8] else ""
    fix = "make it writable" if what == "read-only" else "free some space"
    return f"the disk is {what}{where}. To fix: {fix}, or write to another place"


def _ray_version(text: str) -> str:
    first = text.split("Version mismatch:", 1)[1].strip().splitlines()[0]
    return (
        f"this process and the Ray cluster run different versions ({first}). To fix: install "
        "the cluster's Ray and Python versions here, or use a cluster of this version"
    )
