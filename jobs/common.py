"""What every job does at the edge of its process: logging set up, signals turned into an
exception, and the one boundary that ends the job: a known failure as one line and its exit
status (``cifar.failures.EXIT_CODES``), never a traceback unless asked for."""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import re
import shlex
import signal
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from cifar import env
from cifar.config import add_job_flags, build_parser, parse_explicit, read_config_file
from cifar.failures import EXIT_CODES, INTERRUPTED, USAGE, Interrupted, explain

# Ray's lines that say nothing a user must act on: shown with --verbose
QUIET_LOGGERS = ("ray._private.authentication",)
HARMLESS = re.compile(
    r"core_worker\.cc:\d+: Actor with class name: .* has constructor arguments in the object "
    r"store and max_restarts > 0"  # ray-project/ray#53727: every actor pool and Train run
    r"|generated new fontManager"  # matplotlib, the first time it draws on a machine
    r"|PYTHON worker processes have been started on node"  # a sweep's packed trials, by design
)


# The filter runs in a process of its own: what reaches the pipe before this process ends, even
# by os._exit (a stalled job's last resort), still gets through.
_FILTER = """
import os, re, sys
drop, out = re.compile(sys.argv[1]), int(sys.argv[2])
pending = b""
while chunk := os.read(0, 65536):
    *lines, pending = (pending + chunk).split(b"\\n")
    kept = [ln for ln in lines if not drop.search(ln.decode(errors="replace"))]
    if kept:
        os.write(out, b"\\n".join(kept) + b"\\n")
if pending:
    os.write(out, pending)
"""


class OutputFilter:
    """Lines of a file descriptor (stdout or stderr: also what Ray's C++ core and the workers'
    forwarded logs write there) without those matching ``drop``; the rest pass as they come."""

    def __init__(self, fd: int, drop: re.Pattern) -> None:
        self.fd = fd
        out = os.dup(fd)
        self.child = subprocess.Popen(
            [sys.executable, "-c", _FILTER, drop.pattern, str(out)],
            stdin=subprocess.PIPE,
            pass_fds=(out,),
            start_new_session=True,  # a Ctrl-C is for the job, not for its output
        )
        os.close(out)
        os.dup2(self.child.stdin.fileno(), fd)
        self.child.stdin.close()  # the descriptor ``fd`` now holds the pipe's writing end
        atexit.register(self.close)

    def close(self) -> None:
        """Let what is still in the pipe through before the process ends."""
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        with contextlib.suppress(OSError):
            os.close(self.fd)  # the pipe's last writer here: the filter sees its end
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.child.wait(timeout=5)


def quiet_output(verbose: bool) -> None:
    """A quiet log: Ray's known-harmless lines left out, and no colour codes where the output is
    not a terminal. Nothing changes with ``verbose``."""
    if not sys.stdout.isatty():
        os.environ.setdefault("RAY_COLOR_PREFIX", "0")
    if verbose:
        return
    for fd in (1, 2):
        OutputFilter(fd, HARMLESS)


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
    quiet_output(verbose)


class QuietRayData(logging.Filter):
    """Ray Data's console lines in a quiet log: its warnings. Its INFO lines (a ten-line
    progress block every 10 s where the log is not a terminal: the job prints one line instead)
    and its ERROR tracebacks are left to --verbose and to the ray-data.log file Ray keeps: the job
    ends a failed pipeline with one line of its own."""

    def filter(self, record: logging.LogRecord) -> bool:
        return logging.INFO < record.levelno < logging.ERROR


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


@dataclass(frozen=True)
class Request:
    """What the command line asks of a job: its config, and whether to only check or print."""

    cfg: Any
    dry_run: bool
    print_config: bool


def parse(
    cls: type,
    prog: str,
    description: str,
    doc: str,
    argv: Sequence[str],
    resolve: Callable[[dict[str, Any], dict[str, Any]], Any],
) -> Request:
    """The job's flags (with --config, --print-config, --dry-run, --version) -> its config:
    ``resolve(typed flags, config file)`` layers them."""
    plain = doc.replace("``", "")  # the docstring as the user reads it, without its markup
    epilog = f"{plain}\n{env.help_text()}\n\n{exit_codes_text()}"
    parser = build_parser(cls, prog, description, epilog)
    add_job_flags(parser)
    explicit = parse_explicit(parser, list(argv))
    dry_run = explicit.pop("dry_run", False)
    printing = explicit.pop("print_config", False)
    saved = read_config_file(explicit.pop("config", None), cls)
    return Request(resolve(explicit, saved), dry_run, printing)


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
