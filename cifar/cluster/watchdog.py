"""A watchdog that says why a job waits and ends one that makes no progress for
``--stall-timeout`` seconds.

A job that cannot get its resources waits in line (Ray queues its placement groups and actors);
the watchdog makes the wait visible ("waiting for 2 workers x 2 CPUs; 1 of 4 CPUs free; held
by: ...", from :mod:`cifar.cluster.state`) and bounded (a :class:`StallError` naming the same,
instead of silence forever).
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from cifar import env
from cifar.cluster.state import describe_cluster, this_job

log = logging.getLogger(__name__)
progress = logging.getLogger("cifar.progress")
EXIT_STALLED = 3  # the exit status of a job that made no progress (cifar.failures.EXIT_CODES)


class StallError(RuntimeError):
    """A job made no progress for its stall timeout; the message names what it waited for."""


class Watchdog:
    """Watches ``progress()`` (any value that changes when the job gets work done) from a
    thread. While ``waiting()`` says the job waits for resources and nothing moved for a few
    seconds, it prints, every ``interval`` seconds, what the job waits for and what the cluster
    has; after ``stall_timeout`` seconds without a change it interrupts the main thread with a
    SIGINT (a KeyboardInterrupt, or Ray Train's abort inside ``fit()``) that leaves the ``with``
    block as a :class:`StallError` (or :meth:`check` raises it after ``fit()`` returned), and ends
    the process itself if the main thread has not ended the job ``GRACE`` seconds later (a
    SIGINT blocked, as Ray blocks it in the drivers of submitted jobs). The SIGINT handler that
    was in effect before is in effect after: Ray Train leaves its own installed."""

    FIRST_REPORT = 5.0  # seconds of waiting before the first "waiting for" line
    GRACE = 20.0  # seconds the interrupted main thread has to end the job before the process ends

    def __init__(
        self,
        what: str,
        need: str,
        progress: Callable[[], Any],
        waiting: Callable[[], bool],
        stall_timeout: float,
        interval: float | None = None,
    ) -> None:
        self.what, self.need, self.progress, self.waiting = what, need, progress, waiting
        self.stall_timeout = stall_timeout
        if interval is None:
            interval = float(env.get("CIFAR_RAY_WAIT_REPORT_S"))
        self.interval = interval
        self.poll = 1.0  # seconds between progress() checks
        self.stalled: str | None = None
        self._t0, self._first_change, self._saw_waiting = time.monotonic(), None, False
        self._previous: Any = None  # the SIGINT handler when the watch began
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cifar-watchdog", daemon=True)

    @property
    def waited(self) -> float:
        """Seconds from the start until the job first moved, if it was seen waiting for
        resources meanwhile (0 if not)."""
        if not self._saw_waiting:
            return 0.0
        end = self._first_change if self._first_change is not None else time.monotonic()
        return end - self._t0

    def __enter__(self) -> Watchdog:
        self._t0, self._first_change, self._saw_waiting = time.monotonic(), None, False
        self._previous = None
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.getsignal(signal.SIGINT)
        if self.stall_timeout > 0 or self.interval > 0:
            self._thread.start()
        return self

    def __exit__(self, exc_type: type | None, *exc: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=15)
        if self._previous is not None and signal.getsignal(signal.SIGINT) != self._previous:
            signal.signal(signal.SIGINT, self._previous)  # undo the handler Ray Train left
        if exc_type is not None:
            self.check()  # the interrupt of a stall leaves the block as the StallError

    def _run(self) -> None:
        job = self._ask(this_job, None)
        last, changed = self._ask(self.progress, None), time.monotonic()
        next_report = changed + self.FIRST_REPORT
        while not self._stop.wait(self.poll):
            now, value = time.monotonic(), self._ask(self.progress, last)
            if value != last:
                last, changed, next_report = value, now, now + self.FIRST_REPORT
                if self._first_change is None:
                    self._first_change = now
                continue
            stalled = self.stall_timeout > 0 and now - changed >= self.stall_timeout
            if not stalled and (now < next_report or self.interval <= 0):
                continue
            waiting = self._ask(self.waiting, False)
            if not (stalled or waiting):  # moving slowly, not waiting: nothing to report
                next_report = now + self.FIRST_REPORT
                continue
            cluster = self._ask(lambda: describe_cluster(exclude_job=job), "cluster state unknown")
            if stalled:
                state = "waiting for" if waiting else "with no progress, holding"
                self.stalled = (
                    f"{self.what} made no progress for {self.stall_timeout:g}s ({state} "
                    f"{self.need}): {cluster}. Free those resources, "
                    "lower what this job asks for, or raise --stall-timeout."
                )
                # a real SIGINT to the main thread: it also wakes a sleep or a blocking call
                signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)
                if not self._stop.wait(self.GRACE):  # the main thread did not end the job
                    self._exit_now()
                return
            self._saw_waiting = self._saw_waiting or self._first_change is None
            waited = now - changed
            progress.info(
                "[cifar] %s has waited %.0fs for %s: %s", self.what, waited, self.need, cluster
            )
            next_report = now + self.interval

    def _exit_now(self) -> None:
        """The interrupt did not end the job: Ray Train's own SIGINT handler waits for its
        controller, which waits for a placement group that never comes. End this process as
        the job commands end a stalled job (message, exit 3); Ray then removes this job's
        actors and placement groups with its driver."""
        print(f"error: {self.stalled}", file=sys.stderr, flush=True)
        logging.shutdown()
        os._exit(EXIT_STALLED)

    def _ask(self, question: Callable[[], Any], default: Any) -> Any:
        try:
            return question()
        except Exception as e:  # a storage or state-API hiccup is no news, not a crash
            log.debug("watchdog check failed: %s", e)
            return default

    def check(self) -> None:
        """Raise the StallError if this watchdog is why the main thread was interrupted."""
        if self.stalled is not None:
            raise StallError(self.stalled)
