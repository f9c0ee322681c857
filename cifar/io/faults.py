"""Object storage that fails: which failures are worth another try, the bounded retry around
every read, write and listing, and the one error (:class:`StorageError`) for a store that
cannot be reached or refuses the job, naming what was done, on which URI, and what to do."""

from __future__ import annotations

import logging
import os
import random
import re
import time
from collections.abc import Callable
from typing import TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")

# Object stores throttle and drop connections now and then. Every request is retried by the AWS
# SDK (SDK_ATTEMPTS, its standard backoff); what still fails with a transient error is retried
# here as a whole (a read, a write, a listing), RETRY_ATTEMPTS times within RETRY_DEADLINE_S,
# then raised: a file that keeps failing becomes an error, never a hang.
SDK_ATTEMPTS = 3  # the AWS SDK's standard mode default
RETRY_ATTEMPTS = 4
RETRY_DEADLINE_S = 120.0
CONNECT_TIMEOUT_S = 10.0
REQUEST_TIMEOUT_S = 30.0  # no byte for this long: the request fails (and is retried)
_TRANSIENT = re.compile(
    r"slow.?down|throttl|service.?unavailable|internal.?(failure|error)|network.?connection|"
    r"request.?time.?out|curlCode|HTTP status 5\d\d|connection (reset|refused|aborted|closed)|"
    r"broken pipe|timed out|unexpected end|premature|incomplete|reset by peer",
    re.IGNORECASE,
)
# Failures of the store as a whole, not of one object: (kind, what the SDK says, retried?).
# A host that does not resolve will not resolve in a second; a refused or silent endpoint may
# come back, so it is retried like any transient fault before the job gives up.
_STORE_FAILURES = (
    ("unresolvable", re.compile(r"curlCode: 6\b|resolve host|could not resolve", re.I), False),
    ("unreachable", re.compile(r"curlCode: 7\b|connection refused|couldn.t connect", re.I), True),
    ("timeout", re.compile(r"curlCode: 28\b|timed? ?out", re.I), True),
    (
        "no_bucket",
        re.compile(r"NO_SUCH_BUCKET|NoSuchBucket|bucket does not exist|bucket '' not found", re.I),
        False,
    ),
    (
        "denied",
        re.compile(
            r"ACCESS_DENIED|AccessDenied|HTTP status 403|InvalidAccessKeyId|"
            r"SignatureDoesNotMatch|ExpiredToken|InvalidToken|credentials",
            re.I,
        ),
        False,
    ),
)
# what the job's message says to do about each kind
_FIXES = {
    "unresolvable": "check the bucket name and AWS_ENDPOINT_URL, and that this machine has a "
    "network and DNS",
    "unreachable": "check that the endpoint is up and that AWS_ENDPOINT_URL names it",
    "timeout": "check the network and the endpoint, then run the command again",
    "no_bucket": "create the bucket or correct its name",
    "denied": "check the credentials (AWS_PROFILE, AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or "
    "the node's instance profile) and the bucket's policy",
    "failing": "check the store's health and the network, then run the command again",
}
CONNECTION_KINDS = ("unresolvable", "unreachable", "timeout")  # the store, not one object


class StorageError(OSError):
    """Object storage that cannot be reached, or that refuses this job (``kind``: one of
    :data:`_FIXES`); the message names what was being done, on which URI, and what to do."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind

    def __reduce__(self):  # raised inside Ray tasks: it must cross processes as itself
        return type(self), (self.kind, str(self))


def store_failure(e: BaseException) -> tuple[str, bool] | None:
    """(kind, worth retrying) when ``e`` says the store itself failed, else None."""
    if not isinstance(e, OSError) or isinstance(e, FileNotFoundError):
        return None
    said = re.sub(r"'[^']*'", "''", str(e))  # what the store says, not the names it quotes
    for kind, pattern, retried in _STORE_FAILURES:
        if pattern.search(said):
            return kind, retried
    return None


def _endpoint(uri: str) -> str:
    scheme = uri.split("://", 1)[0]
    store = {"s3": "S3", "gs": "Google Cloud Storage"}.get(scheme, scheme)
    return os.environ.get("AWS_ENDPOINT_URL") or f"{store} (bucket {_bucket(uri)!r})"


def _bucket(uri: str) -> str:
    return uri.split("://", 1)[1].split("/", 1)[0]


def storage_error(
    what: str, uri: str, e: OSError | None, kind: str, tries: str = ""
) -> StorageError:
    """The StorageError a failed ``what`` (e.g. ``reading s3://b/k``) on ``uri`` becomes."""
    problem = {
        "unresolvable": f"cannot resolve the host of {_endpoint(uri)}",
        "unreachable": f"cannot connect to {_endpoint(uri)}",
        "timeout": f"no answer from {_endpoint(uri)} in time",
        "no_bucket": f"the bucket {_bucket(uri)!r} does not exist",
        "denied": f"access to {_bucket(uri)!r} was refused",
    }[kind]
    detail = ""
    if e is not None and kind != "no_bucket":  # the problem says it all
        said = str(e).split("; Details:")[0]
        curl = re.search(r"curlCode: \d+, (.*)", said)
        detail = f" ({curl[1] if curl else said.rsplit(': ', 1)[-1].strip()})"
    return StorageError(kind, f"{what}: {problem}{tries}{detail}. To fix: {_FIXES[kind]}.")


def is_transient(e: BaseException) -> bool:
    """A throttle, a 5xx or a dropped connection: worth trying again."""
    if isinstance(e, FileNotFoundError | PermissionError | IsADirectoryError | NotADirectoryError):
        return False
    failed = store_failure(e)
    if failed is not None:
        return failed[1]
    # what the store says, not the key or bucket names quoted in the message
    said = re.sub(r"'[^']*'", "''", str(e))
    return isinstance(e, OSError) and bool(_TRANSIENT.search(said))


def retrying(what: str, uri: str, fn: Callable[[], T]) -> T:
    """``fn()`` (``what`` on ``uri``: ``reading s3://b/k``), again after a transient error
    (backoff with jitter), at most RETRY_ATTEMPTS times within RETRY_DEADLINE_S; other errors at
    once. A store that cannot be reached or refuses the job ends as a :class:`StorageError`."""
    start = time.monotonic()
    for attempt in range(1, RETRY_ATTEMPTS + 1):
        try:
            return fn()
        except OSError as e:
            spent = time.monotonic() - start
            failed = store_failure(e)
            if not is_transient(e):
                if failed is not None:
                    raise storage_error(what, uri, e, failed[0]) from e
                raise
            if attempt == RETRY_ATTEMPTS or spent > RETRY_DEADLINE_S:
                if failed is not None:
                    tries = f", still failing after {attempt} attempts in {spent:.0f}s"
                    raise storage_error(what, uri, e, failed[0], tries) from e
                raise StorageError(
                    "failing",
                    f"{what}: still failing after {attempt} attempts in {spent:.0f}s "
                    f"(each retried {SDK_ATTEMPTS} times by the AWS SDK): {e}. To fix: "
                    f"{_FIXES['failing']}.",
                ) from e
            backoff = min(8.0, 0.5 * 2 ** (attempt - 1), RETRY_DEADLINE_S - spent)
            delay = max(0.0, backoff) * random.uniform(0.5, 1.0)
            log.info("%s: %s; attempt %d again in %.1fs", what, e, attempt + 1, delay)
            time.sleep(delay)
    raise AssertionError("unreachable")
