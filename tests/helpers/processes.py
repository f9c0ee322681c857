"""Waiting on a job a test started, and killing it as a crash would."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


def wait_until(
    found: Callable[[], T],
    seconds: float,
    what: str,
    job: subprocess.Popen | None = None,
    log: Path | None = None,
) -> T:
    """``found()``'s first truthy value, asked every 0.1 s. An AssertionError naming ``what``
    when ``seconds`` pass first or ``job`` ends first, with the end of the job's output (its
    ``log`` file, or its pipes once it has ended)."""
    deadline = time.monotonic() + seconds
    while not (value := found()):
        if job is not None and job.poll() is not None:
            raise AssertionError(
                f"the job ended (exit {job.returncode}) before {what}\n" + _tail(job, log)
            )
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} in {seconds:.0f} s\n" + _tail(job, log))
        time.sleep(0.1)
    return value


def kill_group(job: subprocess.Popen) -> None:
    """SIGKILL a job started with ``start_new_session=True`` and its whole process group (the
    driver and the Ray it started die at once, as in a crash or an OOM kill); reaped."""
    os.killpg(job.pid, signal.SIGKILL)
    job.wait(30)


def _tail(job: subprocess.Popen | None, log: Path | None) -> str:
    if log is not None:
        return Path(log).read_text(errors="replace")[-3000:]
    if job is not None and job.poll() is not None and job.stdout is not None:
        out, err = job.communicate()
        return ((out or "") + (err or ""))[-3000:]
    return ""
