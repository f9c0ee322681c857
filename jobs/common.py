"""What every job does at the edge of its process: logging set up, signals turned into an
exception, and the one boundary that ends the job: a known failure as one line and its exit
status (``cifar.failures.EXIT_CODES``), never a traceback unless asked for."""

from __future__ import annotations

import logging
import shlex
import signal
import sys
from collections.abc import Callable, Sequence

from cifar import env
from cifar.failures import EXIT_CODES, INTERRUPTED, USAGE, Interrupted, explain

# Ray's lines that say nothing a user must act on: shown with --verbose
QUIET_LOGGERS = ("ray._private.authentication",)


def configure_logging(verbose: bool = False) -> None:
    """How a job logs: its own progress lines (logger ``cifar.progress``) as they are, other
    messages with level and source; INFO from libraries (and Ray's notices) only with
    ``verbose``."""
    root = logging.getLogger()
    if not root.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        root.addHandler(handler)
    root.setLevel(logging.INFO if verbose else logging.WARNING)
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.INFO if verbose else logging.ERROR)
    progress = logging.getLogger("cifar.progress")
    if not progress.handlers:
        plain = logging.StreamHandler(sys.stdout)
        plain.setFormatter(logging.Formatter("%(message)s"))
        progress.addHandler(plain)
    progress.setLevel(logging.INFO)
    progress.propagate = False


class QuietRayData(logging.Filter):
    """Ray Data's console lines in a quiet log: its progress and warnings. Its INFO chatter and
    its ERROR tracebacks are left to --verbose (and to the ray-data.log file Ray keeps): the job
    ends a failed pipeline with one line of its own."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.ERROR:
            return False
        return record.levelno > logging.INFO or "progress" in record.name


def quiet_ray_data(verbose: bool) -> None:
    """Ray Data sets up its own console handler when imported: filter it unless ``verbose``."""
    if verbose:
        return
    import ray.data  # noqa: F401 (its logging is configured on import)
    from ray.data._internal.logging import SessionFileHandler

    for handler in logging.getLogger("ray.data").handlers:
        if not isinstance(handler, SessionFileHandler):
            handler.addFilter(QuietRayData())


_received: list[str] = []  # the signals that interrupted this process, as they came


def _interrupted(signum: int, frame: object) -> None:
    name = signal.Signals(signum).name
    _received.append(name)
    raise Interrupted(f"interrupted ({name})")


def handle_signals() -> None:
    """SIGINT and SIGTERM raise in the main thread (SIGTERM is how `ray job stop` and Kubernetes
    stop a job), also where the process started with SIGINT ignored or blocked, as Ray starts
    the drivers of submitted jobs: the watchdog of a stalled job ends it with a SIGINT. Called
    again once Ray is up: ``ray.init`` installs a SIGTERM handler of its own that ends the
    process at once."""
    signal.signal(signal.SIGINT, _interrupted)
    signal.signal(signal.SIGTERM, _interrupted)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})


def quiet_exit() -> None:
    """The work is done: a signal while Ray shuts down no longer interrupts anything."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)


def command(
    program: str, argv: Sequence[str], add: Sequence[str] = (), drop: Sequence[str] = ()
) -> str:
    """``argv`` as a command to type again, with ``add`` appended and ``drop`` flags left out."""
    kept = [a for a in argv if a not in drop]
    return shlex.join([program, *kept, *(a for a in add if a not in kept)])


def exit_codes_text() -> str:
    """The exit statuses, for --help."""
    lines = ["exit status:"]
    lines += [f"  {code:>3}  {meaning}" for code, meaning in EXIT_CODES.items()]
    return "\n".join(lines)


class Boundary:
    """The end of a job's process. ``hint`` (set by the job once it has started work) says what
    is kept and how to continue, after a failure outside the program or an interrupt;
    ``verbose`` shows tracebacks too (as CIFAR_RAY_DEBUG=1 does)."""

    def __init__(self, handled: tuple[type[BaseException], ...]) -> None:
        self.handled = handled
        self.hint: Callable[[int], str] | None = None  # the exit status -> what is kept
        self.verbose = False

    def run(self, main: Callable[[Boundary], int | None]) -> None:
        handle_signals()
        try:
            code = main(self)
            quiet_exit()
        except BaseException as e:
            failure = None if isinstance(e, SystemExit) else explain(e)
            if failure is not None:
                self._end(failure.code, failure.message, e, hint=True)
            if isinstance(e, self.handled):
                self._end(USAGE, str(e), e)
            raise
        sys.exit(code or 0)

    def _end(self, code: int, message: str, e: BaseException, hint: bool = False) -> None:
        if self.verbose or env.get("CIFAR_RAY_DEBUG"):
            logging.getLogger("cifar").error("the failure, in full:", exc_info=e)
        then = ""
        if hint and self.hint is not None:
            try:
                then = f" {self.hint(code)}"
            except Exception as more:  # the hint reads the output: it may fail as the job did
                then = f" (what was kept could not be read: {more})"
        if code == INTERRUPTED:  # Ray re-raises an interrupt as a bare KeyboardInterrupt
            line = f"interrupted ({_received[0]})" if _received else message
        else:
            line = f"error: {message}"
        line = " ".join(f"{line.rstrip('.')}.{then}".split())  # one line, whatever it quotes
        print(line, file=sys.stderr, flush=True)
        sys.exit(code)
