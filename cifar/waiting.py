"""Jobs that share a cluster: what is free, what holds the rest, and a watchdog that says why a
job waits and ends one that makes no progress for ``--stall-timeout`` seconds.

A job that cannot get its resources waits in line (Ray queues its placement groups and actors);
the watchdog makes the wait visible ("waiting for 2 workers x 2 CPUs; 1 of 4 CPUs free; held
by: ...") and bounded (a :class:`StallError` naming the same, instead of silence forever).
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

log = logging.getLogger(__name__)
progress = logging.getLogger("cifar.progress")

STALL_TIMEOUT = 600.0  # seconds without progress before a job gives up (--stall-timeout)


def report_interval() -> float:
    """Seconds between "waiting for ..." lines: 30, or $CIFAR_RAY_WAIT_REPORT_S."""
    return float(os.environ.get("CIFAR_RAY_WAIT_REPORT_S", "30"))


class StallError(RuntimeError):
    """A job made no progress for its stall timeout; the message names what it waited for."""


def _resources(r: dict[str, Any]) -> str:
    parts = [f"{r[k]:g} {k}s" for k in ("CPU", "GPU") if r.get(k)]
    return " + ".join(parts) or "no CPU or GPU"


def holds(actor) -> bool:
    """An actor holds its resources once placed: alive, or placed and still constructing
    (PENDING_CREATION with a process; one that waits for resources has none yet)."""
    return actor.state in ("ALIVE", "RESTARTING") or (
        actor.state == "PENDING_CREATION" and bool(actor.pid)
    )


def held_by_jobs(exclude_job: str | None = None) -> list[tuple[str, dict[str, float]]]:
    """(job, CPUs/GPUs it holds) for every job holding any, largest first: its placement
    groups, its placed actors outside them and its running tasks. Needs Ray's state API (the
    dashboard); [] without it."""
    try:
        from ray.util import state

        pgs = state.list_placement_groups(
            detail=True, filters=[("state", "=", "CREATED")], limit=10000, timeout=10
        )
        actors = state.list_actors(
            detail=True, filters=[("state", "!=", "DEAD")], limit=10000, timeout=10
        )
        tasks = state.list_tasks(filters=[("state", "=", "RUNNING")], limit=10000, timeout=10)
        jobs = {j.job_id: j for j in state.list_jobs(timeout=10) if j.job_id}
    except Exception as e:  # no dashboard, or an older state API: say less, never fail
        log.debug("state API unavailable: %s", e)
        return []
    held: dict[str, dict[str, float]] = {}

    def add(job: str | None, resources: dict | None) -> None:
        if not job or job == exclude_job:
            return
        for k in ("CPU", "GPU"):
            held.setdefault(job, {}).setdefault(k, 0.0)
            held[job][k] += float((resources or {}).get(k, 0.0))

    for pg in pgs:
        for bundle in pg.bundles:
            add(pg.creator_job_id, bundle.get("unit_resources", bundle))
    for a in actors:
        if holds(a) and not a.placement_group_id:
            add(a.job_id, a.required_resources)
    for t in tasks:
        if not getattr(t, "placement_group_id", None):
            add(t.job_id, getattr(t, "required_resources", None))

    def name(job_id: str) -> str:
        j = jobs.get(job_id)
        entry = (j.entrypoint or "").strip() if j else ""
        if len(entry) > 70:
            entry = entry[:67] + "..."
        label = (j.submission_id if j and j.submission_id else None) or f"job {job_id}"
        return f"{label} ({entry})" if entry else label

    out = [(name(j), r) for j, r in held.items() if r["CPU"] or r["GPU"]]
    return sorted(out, key=lambda x: (-x[1]["GPU"], -x[1]["CPU"]))


def this_job() -> str:
    import ray

    return ray.get_runtime_context().get_job_id()


def job_actors(class_contains: str) -> list:
    """This job's actors (not dead) whose class name contains ``class_contains``."""
    from ray.util import state

    found = state.list_actors(
        detail=True,
        filters=[("job_id", "=", this_job()), ("state", "!=", "DEAD")],
        limit=10000,
        timeout=10,
    )
    return [a for a in found if class_contains in a.class_name]


def actors_waiting(class_contains: str) -> bool:
    """This job has such an actor that Ray has not placed yet: it waits for resources."""
    return any(a.state == "PENDING_CREATION" and not a.pid for a in job_actors(class_contains))


def actors_placed(class_contains: str) -> int:
    """How many such actors of this job hold their resources."""
    return sum(holds(a) for a in job_actors(class_contains))


def placement_waiting() -> bool:
    """This job has a placement group (Ray Train's worker group) that Ray cannot place yet."""
    from ray.util import state

    pgs = state.list_placement_groups(
        detail=True, filters=[("state", "=", "PENDING")], limit=10000, timeout=10
    )
    return any(pg.creator_job_id == this_job() for pg in pgs)


def describe_cluster(exclude_job: str | None = None) -> str:
    """'1 of 4 CPUs free; held by: raysubmit_x (cifar-predict ...): 3 CPUs'."""
    import ray

    free, total = ray.available_resources(), ray.cluster_resources()
    text = f"{free.get('CPU', 0):g} of {total.get('CPU', 0):g} CPUs free"
    if total.get("GPU"):
        text += f", {free.get('GPU', 0):g} of {total.get('GPU', 0):g} GPUs free"
    held = held_by_jobs(exclude_job)
    if held:
        text += "; held by: " + "; ".join(f"{j}: {_resources(r)}" for j, r in held)
    return text


class Watchdog:
    """Watches ``progress()`` (any value that changes when the job gets work done) from a
    thread. While ``waiting()`` says the job waits for resources and nothing moved for a few
    seconds, it prints, every ``interval`` seconds, what the job waits for and what the cluster
    has; after ``stall_timeout`` seconds without a change it interrupts the main thread, which
    turns that into a :class:`StallError` (its own SIGINT handler while it watches, or
    :meth:`check` after another handler), and ends the process itself if the main thread has
    not ended the job ``GRACE`` seconds later (Ray Train's handler, set inside ``fit()``, waits
    for its controller)."""

    FIRST_REPORT = 5.0  # seconds of waiting before the first "waiting for" line
    GRACE = 20.0  # seconds the interrupted main thread has to end the job before the process ends

    def __init__(
        self,
        what: str,
        need: str,
        progress: Callable[[], Any],
        waiting: Callable[[], bool],
        stall_timeout: float = STALL_TIMEOUT,
        interval: float | None = None,
    ) -> None:
        self.what, self.need, self.progress, self.waiting = what, need, progress, waiting
        self.stall_timeout = stall_timeout
        self.interval = interval if interval is not None else report_interval()
        self.poll = 1.0  # seconds between progress() checks
        self.stalled: str | None = None
        self._t0, self._first_change, self._saw_waiting = time.monotonic(), None, False
        self._previous: Any = None  # the SIGINT handler before this watchdog's
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
            self._previous = signal.signal(signal.SIGINT, self._on_sigint)
        if self.stall_timeout > 0 or self.interval > 0:
            self._thread.start()
        return self

    def __exit__(self, exc_type: type | None, *exc: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=15)
        if self._previous is not None:  # also undoes a handler Ray Train set meanwhile
            signal.signal(signal.SIGINT, self._previous)
        if exc_type is not None:
            self.check()  # the interrupt of a stall leaves the block as the StallError

    def _on_sigint(self, signum: int, frame: Any) -> None:
        """A stall interrupts the main thread like a Ctrl-C (libraries such as Ray Data let a
        KeyboardInterrupt through without logging it as their own failure) and leaves the
        ``with`` block as a StallError; a real Ctrl-C does what it did before."""
        if self.stalled is not None:
            raise KeyboardInterrupt
        if callable(self._previous):
            self._previous(signum, frame)
        elif self._previous != signal.SIG_IGN:
            raise KeyboardInterrupt

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
        the job commands end on a handled error (message, exit 2); Ray then removes this job's
        actors and placement groups with its driver."""
        print(f"error: {self.stalled}", file=sys.stderr, flush=True)
        logging.shutdown()
        os._exit(2)

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
