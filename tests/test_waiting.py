"""The watchdog of jobs that share a cluster: it says what a waiting job waits for, and ends a
job that made no progress for its stall timeout with a message naming it. On the embedded
test Ray (no dashboard, so nothing is named as holding resources); the cluster tests run it
inside real jobs."""

from __future__ import annotations

import itertools
import logging
import signal
import threading
import time

import pytest

from cifar.cluster.watchdog import StallError, Watchdog

pytestmark = pytest.mark.ray


def _run_until_stalled(dog: Watchdog, seconds: float = 60) -> None:
    with dog:  # the watchdog's SIGINT handler raises StallError here, as in a job
        time.sleep(seconds)


@pytest.fixture(autouse=True)
def python_sigint_handler():
    """Python's own Ctrl-C handler while a test runs, whatever an earlier test in this process
    left installed (Ray Train's and Serve's wait instead of raising: the watchdog would then end
    the test process, pytest with it, as it ends a stalled job)."""
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, before)


@pytest.fixture()
def lines(caplog):
    caplog.set_level(logging.INFO, logger="cifar.progress")
    return lambda: [r.getMessage() for r in caplog.records if r.name == "cifar.progress"]


def test_a_waiting_job_says_so_and_ends_with_what_it_waited_for(ray_session, lines, monkeypatch):
    monkeypatch.setattr(Watchdog, "FIRST_REPORT", 0.5)
    dog = Watchdog("the test job", "3 GPUs", lambda: 0, lambda: True, stall_timeout=4, interval=1)
    t = time.monotonic()
    with pytest.raises(StallError) as e:
        _run_until_stalled(dog)
    assert 4 <= time.monotonic() - t < 30 and dog.waited >= 4  # waited all the time
    assert str(e.value).startswith(
        "the test job made no progress for 4s (waiting for 3 GPUs): 2 of 2 CPUs free. "
    )
    assert "raise --stall-timeout" in str(e.value)
    said = lines()
    assert 2 <= len(said) <= 5, said  # about one a second, from 0.5 s on
    assert all(s.startswith("[cifar] the test job has waited ") for s in said), said
    assert said[0].endswith("s for 3 GPUs: 2 of 2 CPUs free")


def test_a_job_that_moves_is_never_stopped_nor_reported(ray_session, lines, monkeypatch):
    monkeypatch.setattr(Watchdog, "FIRST_REPORT", 0.5)
    steps = itertools.count()
    dog = Watchdog("the test job", "1 CPU", lambda: next(steps), lambda: True, 2, interval=1)
    _run_until_stalled(dog, seconds=5)  # returns: no StallError, no interrupt
    assert dog.stalled is None and lines() == []


def test_a_job_holding_its_resources_without_progress_is_ended_without_waiting_lines(
    ray_session, lines, monkeypatch
):
    monkeypatch.setattr(Watchdog, "FIRST_REPORT", 0.5)
    dog = Watchdog("the test job", "1 CPU", lambda: "same", lambda: False, 3, interval=1)
    with pytest.raises(StallError, match=r"no progress for 3s \(with no progress, holding 1 CPU\)"):
        _run_until_stalled(dog)
    assert lines() == [] and dog.waited == 0  # it held its resources: no wait for them


def test_a_zero_stall_timeout_waits_for_ever(ray_session, lines, monkeypatch):
    monkeypatch.setattr(Watchdog, "FIRST_REPORT", 0.5)
    dog = Watchdog("the test job", "1 CPU", lambda: 0, lambda: True, 0, interval=1)
    _run_until_stalled(dog, seconds=4)
    assert dog.stalled is None and len(lines()) >= 2  # still says that it waits


def test_ctrl_c_still_interrupts_and_the_old_handler_comes_back(ray_session):
    before = signal.getsignal(signal.SIGINT)
    dog = Watchdog("the test job", "1 CPU", lambda: 0, lambda: False, 60, interval=1)
    t = time.monotonic()
    with pytest.raises(KeyboardInterrupt), dog:
        signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)
        time.sleep(30)
    assert time.monotonic() - t < 10 and dog.stalled is None
    assert signal.getsignal(signal.SIGINT) is before
