"""What every job does at the edge of the process: logging set up, signals handled, and the one
error boundary that turns a known failure into a line and an exit status."""

from __future__ import annotations

import logging
import signal
import sys
from collections.abc import Callable

from cifar import env


def configure_logging(verbose: bool = False) -> None:
    """How a job logs: its own progress lines (logger ``cifar.progress``) as they are, other
    messages with level and source; INFO from libraries only with ``verbose``."""
    root = logging.getLogger()
    if not root.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        root.addHandler(handler)
    root.setLevel(logging.INFO if verbose else logging.WARNING)
    progress = logging.getLogger("cifar.progress")
    if not progress.handlers:
        plain = logging.StreamHandler(sys.stdout)
        plain.setFormatter(logging.Formatter("%(message)s"))
        progress.addHandler(plain)
    progress.setLevel(logging.INFO)
    progress.propagate = False


def handle_signals() -> None:
    """SIGINT raises KeyboardInterrupt in the main thread, even where the process was started
    with it ignored or blocked (Ray blocks it in the drivers of submitted jobs): the watchdog of
    a stalled job ends it with one."""
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


def run_main(main: Callable[[], int | None], handled: tuple[type[BaseException], ...]) -> None:
    """Run a job's main; a known bad-input error becomes one clear paragraph and exit status 2
    (set CIFAR_RAY_DEBUG=1 for the traceback)."""
    handle_signals()
    try:
        code = main()
    except handled as e:
        if env.get("CIFAR_RAY_DEBUG"):
            raise
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(code or 0)
