"""A folder held by one job at a time, on a local disk or in object storage: ``_lock.json`` in
the folder names its holder (host, pid, when it started, the command) and is refreshed while the
job runs. A second job is refused with who holds the folder; a lock whose holder is gone (its
process ended on this host, or not refreshed for :data:`STALE_S` from another) is taken over.

Local folders take the lock with an exclusive create. Object storage has no such primitive
through pyarrow: the lock is written, then read back after a pause, and the job that finds
another's token there has lost the race and is refused."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

from cifar.io import storage

LOCK_FILE = "_lock.json"
REFRESH_S = 30.0  # how often a holder says it is alive
STALE_S = 4 * REFRESH_S  # a holder on another host silent this long is gone
RACE_PAUSE_S = 1.0  # object storage: how long a writer waits before reading its lock back


class OutputBusy(RuntimeError):
    """Another live job holds the folder; the message names it."""


@dataclass(frozen=True)
class Holder:
    host: str
    pid: int
    started: float  # epoch seconds
    refreshed: float
    command: str
    token: str

    def describe(self) -> str:
        since = datetime.fromtimestamp(self.started, timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        return f"pid {self.pid} on {self.host}, since {since} ({self.command})"

    def alive(self, now: float | None = None) -> bool:
        """On this host: its process runs (and is not a newer one with the same pid); elsewhere:
        it refreshed the lock within STALE_S."""
        if self.host == socket.gethostname():
            import psutil

            try:
                return psutil.Process(self.pid).create_time() <= self.started + 1
            except psutil.Error:
                return False
        return (now or time.time()) - self.refreshed < STALE_S


class FolderLock:
    """``with FolderLock(folder, command) as lock:`` holds ``folder`` for this job; ``lock.note``
    says whose stale lock was taken over, if any."""

    def __init__(self, folder: str, command: str) -> None:
        self.path = storage.join(folder, LOCK_FILE)
        self.local = not storage.is_uri(folder) or folder.startswith("file://")
        now = time.time()
        self.me = Holder(socket.gethostname(), os.getpid(), now, now, command, uuid.uuid4().hex)
        self.note: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> FolderLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def acquire(self) -> None:
        held = read_holder(self.path)
        if held is not None and held.token != self.me.token:
            if held.alive():
                raise busy(self.path, held)
            self.note = f"took over the lock of a job that is gone: {held.describe()}"
            self._take_over()
        self._write(exclusive=True)
        if not self.local:  # last writer wins: read back after a pause
            time.sleep(RACE_PAUSE_S)
            now = read_holder(self.path)
            if now is None or now.token != self.me.token:
                raise busy(self.path, now or held)
        self._thread = threading.Thread(target=self._refresh, name="cifar-lock", daemon=True)
        self._thread.start()

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        with contextlib.suppress(OSError):
            held = read_holder(self.path)
            if held is not None and held.token == self.me.token:
                self._delete()

    def _refresh(self) -> None:
        while not self._stop.wait(REFRESH_S):
            with contextlib.suppress(OSError):  # a missed refresh is no failure of the job
                self.me = Holder(**{**asdict(self.me), "refreshed": time.time()})
                self._write(exclusive=False)

    def _write(self, exclusive: bool) -> None:
        data = json.dumps(asdict(self.me), indent=1).encode()
        if not self.local:
            storage.write_bytes(self.path, data)
            return
        path = Path(storage.absolute(self.path).removeprefix("file://"))
        path.parent.mkdir(parents=True, exist_ok=True)
        if not exclusive:
            tmp = path.with_name(f".{LOCK_FILE}.{self.me.token}")
            tmp.write_bytes(data)
            os.replace(tmp, path)
            return
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:  # another job took it between our look and now
            raise busy(self.path, read_holder(self.path)) from None
        with os.fdopen(fd, "wb") as f:
            f.write(data)

    def _take_over(self) -> None:
        """Remove a gone holder's lock. Locally by a rename only one of two racing jobs can
        make (the other then finds the winner's fresh lock); in object storage by deleting it
        (the read-back decides the race)."""
        if not self.local:
            with contextlib.suppress(FileNotFoundError):
                self._delete()
            return
        path = Path(storage.absolute(self.path).removeprefix("file://"))
        aside = path.with_name(f".{LOCK_FILE}.gone.{self.me.token}")
        try:
            os.rename(path, aside)
        except FileNotFoundError:
            raise busy(self.path, read_holder(self.path)) from None
        aside.unlink()

    def _delete(self) -> None:
        if self.local:
            Path(storage.absolute(self.path).removeprefix("file://")).unlink()
        else:
            fs, p = storage.fs_path(self.path)
            fs.delete_file(p)


def read_holder(path: str) -> Holder | None:
    """Who holds the lock at ``path`` (None: nobody, or an unreadable lock)."""
    try:
        return Holder(**json.loads(storage.read_bytes(path)))
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError, ValueError, TypeError):
        return None


def holder_of(folder: str) -> Holder | None:
    """The live job holding ``folder``, if any."""
    held = read_holder(storage.join(folder, LOCK_FILE))
    return held if held is not None and held.alive() else None


def busy(path: str, held: Holder | None) -> OutputBusy:
    who = held.describe() if held else "another job"
    folder = storage.parent(path)
    return OutputBusy(
        f"{folder} is being written by another job: {who}. Wait for it to end, stop it, or "
        "choose another --output (a lock left by a job that is gone is taken over by itself)."
    )
