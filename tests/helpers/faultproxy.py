"""A small fault-injecting HTTP reverse proxy on loopback, for the S3 tests (stdlib only).

Put it in front of the S3 server and point clients at :attr:`FaultProxy.endpoint`; every request
is forwarded as it came (method, path, query, headers with the original ``Host``, body), except
those a :class:`Rule` picks to fail::

    rules = [Rule(r"^GET /bucket/images/a\\.png", fail_first=2, mode="503"),
             Rule(r"^GET /bucket/images/b\\.png", always=True, mode="drop")]
    with FaultProxy(server.endpoint, rules) as proxy:
        ...  # AWS_ENDPOINT_URL=proxy.endpoint
    assert rules[0].injected == 2 and rules[0].passed >= 1

A rule matches (``re.search``) the request line ``"METHOD /path?query"``. ``fail_first=N``
fails the first N requests for each distinct ``"METHOD /path"`` it matches (so one rule can make
several keys fail twice each); ``always=True`` fails every one. Modes:

* ``"503"``: status 503 with S3's ``SlowDown`` XML error (throttling)
* ``"500"``: status 500 with S3's ``InternalError`` XML error
* ``"403"``: status 403 with S3's ``AccessDenied`` XML error (credentials or policy refused)
* ``"drop"``: the connection is closed without a response (EOF)
* ``"reset"``: the connection is reset (TCP RST) without a response
* ``"stall"``: no response for ``stall_s`` seconds, then the connection is closed
* ``"truncate"``: the upstream response, its body cut in half, then the connection closed

The first rule that matches a request decides; the counts (``matched``, ``injected``,
``passed`` per rule, and :attr:`FaultProxy.log` of every request) are thread-safe.
"""

from __future__ import annotations

import contextlib
import http.client
import re
import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import NamedTuple
from urllib.parse import urlsplit

MODES = ("503", "500", "403", "drop", "reset", "stall", "truncate")
_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "expect"}
_XML = (
    '<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code><Message>{message}'
    "</Message><Resource>{resource}</Resource><RequestId>FAULTPROXY{n}</RequestId></Error>"
)
_ERRORS = {
    "503": (503, "Slow Down", "SlowDown", "Please reduce your request rate."),
    "500": (500, "Internal Server Error", "InternalError", "We encountered an internal error."),
    "403": (403, "Forbidden", "AccessDenied", "Access Denied"),
}


@dataclass
class Rule:
    match: str  # regex, searched in "METHOD /path?query"
    fail_first: int = 1  # per distinct "METHOD /path"
    mode: str = "503"
    always: bool = False
    stall_s: float = 30.0
    matched: int = 0
    injected: int = 0
    passed: int = 0
    _seen: dict[str, int] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode {self.mode!r}: one of {MODES}")
        self._re = re.compile(self.match)

    def decide(self, line: str, target: str) -> bool:
        """True: fail this request. Call under the proxy's lock."""
        self.matched += 1
        n = self._seen.get(target, 0)
        self._seen[target] = n + 1
        fail = self.always or n < self.fail_first
        if fail:
            self.injected += 1
        else:
            self.passed += 1
        return fail

    def targets(self) -> dict[str, int]:
        """Requests seen per distinct "METHOD /path"."""
        return dict(self._seen)


class Entry(NamedTuple):
    line: str  # "METHOD /path?query"
    outcome: str  # "passed 200", "503", "drop", "truncate 206", ...
    t: float  # time.monotonic() when it was answered


class FaultProxy:
    def __init__(
        self,
        upstream: str,
        rules: list[Rule] | None = None,
        timeout: float = 60.0,
        delay_s: float = 0.0,
    ):
        u = urlsplit(upstream)
        self.upstream_host, self.upstream_port = u.hostname or "127.0.0.1", u.port or 80
        self.rules = list(rules or [])
        self.timeout = timeout
        self.delay_s = delay_s  # every request forwarded this much later: a slower store
        self.lock = threading.Lock()
        self.log: list[Entry] = []
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._open: set[socket.socket] = set()  # client connections being served

    @property
    def endpoint(self) -> str:
        assert self._server is not None, "not started"
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    @property
    def injected(self) -> int:
        with self.lock:
            return sum(r.injected for r in self.rules)

    def requests(self, pattern: str = "") -> list[Entry]:
        """The logged requests whose line matches ``pattern``."""
        with self.lock:
            return [e for e in self.log if re.search(pattern, e.line)]

    def start(self, port: int = 0) -> FaultProxy:
        """Listen on ``port`` (0: a free one; the same port again: the store is back)."""
        proxy = self

        class Handler(_Handler):
            owner = proxy

        self._server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """The store goes away: no new connection is accepted, and the open ones (kept alive
        by clients' connection pools) are cut, as a host that goes down cuts them."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        with self.lock:
            open_now, self._open = self._open, set()
        for conn in open_now:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _choose(self, line: str, target: str) -> Rule | None:
        with self.lock:
            for r in self.rules:
                if r._re.search(line):
                    return r if r.decide(line, target) else None
            return None

    def _record(self, line: str, outcome: str) -> None:
        with self.lock:
            self.log.append(Entry(line, outcome, time.monotonic()))


class _Handler(BaseHTTPRequestHandler):
    owner: FaultProxy
    protocol_version = "HTTP/1.1"  # keep-alive, as S3 does

    def log_message(self, format, *args) -> None:
        pass

    def setup(self) -> None:
        super().setup()
        with self.owner.lock:
            self.owner._open.add(self.connection)

    def finish(self) -> None:
        with self.owner.lock:
            self.owner._open.discard(self.connection)
        with contextlib.suppress(OSError):  # a connection cut by stop()
            super().finish()

    def _body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            out = bytearray()
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers: none that S3 needs here
                    return bytes(out)
                out += self.rfile.read(size)
                self.rfile.readline()
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def _handle(self) -> None:
        body = self._body()
        line = f"{self.command} {self.path}"
        target = f"{self.command} {self.path.split('?', 1)[0]}"
        rule = self.owner._choose(line, target)
        if rule is not None and rule.mode != "truncate":
            self.owner._record(line, rule.mode)
            self._fail(rule)
            return
        if self.owner.delay_s:
            time.sleep(self.owner.delay_s)
        headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP}
        headers["Content-Length"] = str(len(body))
        if self.command in ("GET", "HEAD", "DELETE") and not body:
            headers.pop("Content-Length")
        conn = http.client.HTTPConnection(
            self.owner.upstream_host, self.owner.upstream_port, timeout=self.owner.timeout
        )
        try:
            conn.request(self.command, self.path, body=body or None, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
            status, reason, out_headers = resp.status, resp.reason, resp.getheaders()
        except OSError as e:
            self.owner._record(line, f"upstream error {e}")
            self.send_error(502, f"upstream: {e}")
            return
        finally:
            conn.close()
        self.owner._record(line, f"{'truncate' if rule else 'passed'} {status}")
        self.send_response(status, reason)
        for k, v in out_headers:
            if k.lower() not in _HOP and k.lower() not in ("content-length", "server", "date"):
                self.send_header(k, v)
        if self.command == "HEAD":
            length = resp.getheader("Content-Length")
            if length is not None:
                self.send_header("Content-Length", length)
        else:
            self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            if rule is not None:  # truncate: half the body, then the connection goes
                self.wfile.write(data[: len(data) // 2])
                self.wfile.flush()
                self.close_connection = True
                return
            self.wfile.write(data)

    def _fail(self, rule: Rule) -> None:
        if rule.mode in _ERRORS:
            status, reason, code, message = _ERRORS[rule.mode]
            resource = self.path.split("?", 1)[0]
            xml = _XML.format(code=code, message=message, resource=resource, n=rule.injected)
            data = xml.encode()
            self.send_response(status, reason)
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)
            return
        if rule.mode == "stall":
            end = time.monotonic() + rule.stall_s
            while time.monotonic() < end and self.owner._server is not None:
                time.sleep(0.05)
        self.close_connection = True
        if rule.mode == "reset":  # SO_LINGER 0: close sends RST instead of FIN
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()
            return
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)

    do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = _handle
